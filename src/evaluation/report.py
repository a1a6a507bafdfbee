"""What eval.py tells the user (rank 0): what is about to be scored, the result lines, the
--output_json / --confusion_csv files and the --report folder (those files, the most confident
mistakes and the pictures). The metrics themselves come from src.evaluation.metrics."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence

from src.common.class_mapping import ClassMapping
from src.runtime.distributed import DistInfo
from src.evaluation.metrics import EvalResult, format_result_line, format_summary, write_confusion_csv
from src.evaluation.mistakes import MistakeRecorder, write_mistakes_csv
from src.evaluation.pictures import MATPLOTLIB_NOTE, save_pictures
from src.models.loading import LoadedModel
from src.common.preprocess import Preprocess

SHOWN_BROKEN = 3  # unreadable images named in the closing warning
REPORT_FILES = ("eval.json", "confusion.csv", "mistakes.csv")  # --report DIR's files besides the pictures


def start_lines(loaded: LoadedModel, mapping: ClassMapping, data: str, pre: Preprocess, batch_size: int,
                info: DistInfo) -> list[str]:
    """Which weights (and a foreign file's layout), how classes were matched when by order, then one
    line with the model, the data (``data``: its description), preprocessing, batch and device."""
    notes = [note for note in (loaded.weights_note, loaded.import_note, mapping.note) if note]
    ema = ", EMA weights" if loaded.use_ema else ""
    return notes + [
        f"evaluating {loaded.name} ({loaded.num_classes} classes{ema}) on {data}; resize {pre.resize} -> crop "
        f"{pre.crop} {pre.interpolation}, batch {batch_size} x {info.world_size} process(es), device {info.device}; "
        f"padding {loaded.padding}, mean {'/'.join(f'{v:g}' for v in pre.mean)}, "
        f"std {'/'.join(f'{v:g}' for v in pre.std)}"]


def print_report(result: EvalResult, classes: Sequence[str], source: str) -> None:
    """The ModelZoo result line, the summary, and a warning naming a few unreadable images."""
    print(format_result_line(result, source), flush=True)
    print(format_summary(result, classes), flush=True)
    if result.broken:
        shown = ", ".join(result.broken_paths[:SHOWN_BROKEN])
        print(f"warning: {result.broken} unreadable images were not scored (e.g. {shown})", file=sys.stderr)


def save_reports(result: EvalResult, classes: Sequence[str], loaded: LoadedModel, pre: Preprocess, where: str,
                 info: DistInfo, output_json: str | None = None, confusion_csv: str | None = None) -> None:
    """--output_json (every metric, per class too, and what was scored how) and --confusion_csv;
    each file written is named in one line. Missing folders are created."""
    if output_json:
        path = _write_json(result, classes, loaded, pre, where, info, Path(output_json))
        print(f"metrics written to {path}")
    if confusion_csv:
        path = Path(confusion_csv)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_confusion_csv(result, classes, str(path))
        print(f"confusion matrix written to {path}")


def save_report_dir(result: EvalResult, classes: Sequence[str], loaded: LoadedModel, pre: Preprocess, where: str,
                    info: DistInfo, folder: str, mistakes: MistakeRecorder) -> None:
    """--report DIR: eval.json and confusion.csv (as --output_json and --confusion_csv write them),
    mistakes.csv and the pictures (src.evaluation.pictures), named in one line; a note instead of the
    pictures without matplotlib, and instead of the mistakes for data without file paths (tar shards)."""
    out = Path(folder)
    _write_json(result, classes, loaded, pre, where, info, out / REPORT_FILES[0])
    write_confusion_csv(result, classes, str(out / REPORT_FILES[1]))
    written = list(REPORT_FILES)
    if mistakes.available:
        write_mistakes_csv(mistakes.mistakes, classes, str(out / REPORT_FILES[2]))
    else:
        written.remove(REPORT_FILES[2])
        print("note: no mistakes.csv or mistakes.png: tar shards do not name their images")
    pictures = save_pictures(result, classes, mistakes.mistakes if mistakes.available else None, out)
    if pictures is None:
        print(MATPLOTLIB_NOTE)
    print(f"report written to {out}: {', '.join(written + [p.name for p in pictures or []])}")


def _write_json(result: EvalResult, classes: Sequence[str], loaded: LoadedModel, pre: Preprocess, where: str,
                info: DistInfo, path: Path) -> Path:
    payload = {**result.to_dict(classes), "checkpoint": loaded.source, "model": loaded.name,
               "num_classes": loaded.num_classes, "use_ema": loaded.use_ema, "preprocess": pre.to_dict(),
               "dataset": where, "world_size": info.world_size, "device": str(info.device)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return path
