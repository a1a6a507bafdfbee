"""Tests for src/writable.py: the up-front check that an output folder takes files."""

import os

from src.writable import unwritable_output, why_not_writable


def test_creates_missing_folders_and_leaves_nothing_behind(tmp_path):
    folder = tmp_path / "a" / "b"
    assert why_not_writable(folder) is None
    assert folder.is_dir() and os.listdir(folder) == []


def test_a_file_in_the_way_is_named_as_the_reason(tmp_path):
    (tmp_path / "f").write_text("x")
    assert why_not_writable(tmp_path / "f") == "a file is in the way"
    assert why_not_writable(tmp_path / "f" / "sub") == "Not a directory"
    assert (tmp_path / "f").read_text() == "x"


def test_a_folder_the_kernel_refuses_gives_its_reason():
    assert why_not_writable("/sys") == "Permission denied"  # sysfs refuses new files, even to root


def test_unwritable_output_names_the_flag_and_the_reason(tmp_path):
    (tmp_path / "f").write_text("x")
    assert unwritable_output("--out", tmp_path / "new" / "m.json") is None and (tmp_path / "new").is_dir()
    assert unwritable_output("--out", tmp_path) == f"--out {tmp_path} is a folder; give a file name"
    assert unwritable_output("--out", tmp_path / "f" / "m.json") == (
        f"--out {tmp_path / 'f' / 'm.json'}: cannot write there (a file is in the way); choose a writable folder")
