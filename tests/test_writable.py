"""Tests for src/common/writable.py: the up-front check that an output folder takes files."""

import errno
import os

import pytest

from src.common import writable
from src.common.writable import unwritable_output, why_not_writable


def test_creates_missing_folders_and_leaves_nothing_behind(tmp_path):
    folder = tmp_path / "a" / "b"
    assert why_not_writable(folder) is None
    assert folder.is_dir() and os.listdir(folder) == []


def test_a_file_in_the_way_is_named_as_the_reason(tmp_path):
    (tmp_path / "f").write_text("x")
    assert why_not_writable(tmp_path / "f") == "a file is in the way"
    assert why_not_writable(tmp_path / "f" / "sub") == "Not a directory"
    assert (tmp_path / "f").read_text() == "x"


def test_a_folder_without_write_permission_gives_the_os_reason(tmp_path):
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        try:
            (folder / "probe").touch()
        except PermissionError:
            pass
        else:  # root (or CAP_DAC_OVERRIDE) writes anywhere: no refusal to observe
            pytest.skip("this user can write into a folder without write permission")
        assert why_not_writable(folder) == os.strerror(errno.EACCES)  # "Permission denied"
        assert os.listdir(folder) == []
    finally:
        folder.chmod(0o755)


def test_the_kernels_reason_is_passed_on_as_it_is(tmp_path, monkeypatch):
    """Whatever the OS says (a read-only mount says "Read-only file system"), the user reads it."""
    def read_only_mount(dir):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), dir)

    monkeypatch.setattr(writable.tempfile, "TemporaryFile", read_only_mount)
    assert why_not_writable(tmp_path) == os.strerror(errno.EROFS)


@pytest.mark.skipif(not os.path.isdir("/sys/kernel"), reason="no sysfs (not Linux)")
def test_sysfs_refuses_new_files_even_to_root():
    # sysfs says "Permission denied" where it is mounted read-write, "Read-only file system" in
    # containers that mount it read-only; either way the folder is refused with the kernel's words
    assert why_not_writable("/sys") in {os.strerror(errno.EACCES), os.strerror(errno.EROFS)}


def test_unwritable_output_names_the_flag_and_the_reason(tmp_path):
    (tmp_path / "f").write_text("x")
    assert unwritable_output("--out", tmp_path / "new" / "m.json") is None and (tmp_path / "new").is_dir()
    assert unwritable_output("--out", tmp_path) == f"--out {tmp_path} is a folder; give a file name"
    assert unwritable_output("--out", tmp_path / "f" / "m.json") == (
        f"--out {tmp_path / 'f' / 'm.json'}: cannot write there (a file is in the way); choose a writable folder")
