"""What to run on: a labelled folder, an unlabelled folder, or a text file listing images.

Labelled folders are listed by ``src.common.preprocess.list_class_folders`` (the same listing eval.py
uses, so both score the same images in the same order). Files without an image extension are
not fed to the model but are reported, so a stray README or .DS_Store is visible, never fatal.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from src.common.preprocess import DatasetError, images_under, is_image_file, list_class_folders, resolve_eval_folder

LIST_SUFFIX = ".txt"
COMMENT_PREFIX = "#"


@dataclass
class InputSet:
    """Files to score, their labels (folder indices) when labelled, and files left out."""

    files: list[str]
    labels: list[int] | None  # None: unlabelled
    classes: list[str] | None  # class folder names, sorted (labelled only)
    root: str
    not_images: list[str] = field(default_factory=list)

    @property
    def labelled(self) -> bool:
        return self.labels is not None


def _non_image_files(root: str | os.PathLike) -> list[str]:
    """Visible files under root whose extension is not an image's (hidden files are ignored)."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(os.path.join(dirpath, f) for f in sorted(filenames)
                     if not f.startswith(".") and not is_image_file(f))
    return found


def read_file_list(path: str | os.PathLike) -> InputSet:
    """One image path per line; relative paths are relative to the list file; '#' starts a comment."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read file list {path}: {exc}") from None
    files = []
    for line in lines:
        entry = line.strip()
        if not entry or entry.startswith(COMMENT_PREFIX):
            continue
        files.append(entry if os.path.isabs(entry) else os.path.join(path.parent, entry))
    if not files:
        raise DatasetError(f"file list {path} names no files")
    return InputSet(files=files, labels=None, classes=None, root=str(path.parent))


def _has_class_folders(folder: Path) -> bool:
    return any(e.is_dir() and not e.name.startswith(".") for e in os.scandir(folder))


def collect_inputs(dataset_path: str | os.PathLike) -> InputSet:
    """Decide what ``dataset_path`` is and list it.

    - ``*.txt``: a list of image files (unlabelled; every entry is tried, so broken ones are reported);
    - a folder with images directly inside: unlabelled, all images below it;
    - a dataset root with ``val/`` class folders, or a folder of class folders: labelled.
    """
    path = Path(dataset_path)
    if not path.exists():
        raise DatasetError(f"dataset path does not exist: {path}")
    if path.is_file():
        if path.suffix.lower() == LIST_SUFFIX:
            return read_file_list(path)
        raise DatasetError(f"{path} is a file but not a {LIST_SUFFIX} list of images; "
                           "pass a folder or a list file")
    loose = [f for f in os.listdir(path) if is_image_file(f) and (path / f).is_file()]
    folder = resolve_eval_folder(path)
    if loose or not _has_class_folders(folder):
        files = images_under(path)
        if not files:
            raise DatasetError(f"no images found in {path} (extensions: jpg, jpeg, png, webp, bmp, "
                               "gif, tif, tiff, ppm, pgm)")
        return InputSet(files=files, labels=None, classes=None, root=str(path),
                        not_images=_non_image_files(path))
    classes, samples = list_class_folders(folder)
    return InputSet(
        files=[p for p, _ in samples],
        labels=[label for _, label in samples],
        classes=classes,
        root=str(folder),
        not_images=_non_image_files(folder),
    )
