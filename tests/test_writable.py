"""Tests for src/writable.py: the up-front check that an output folder takes files."""

import os

from src.writable import why_not_writable


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
