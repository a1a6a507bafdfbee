"""What eval.py tells the user (rank 0): what is about to be scored, the result lines, and the
--output_json / --confusion_csv files. The metrics themselves come from src.evaluation.metrics."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence

from src.common.class_mapping import ClassMapping
from src.runtime.distributed import DistInfo
from src.evaluation.metrics import EvalResult, format_result_line, format_summary, write_confusion_csv
from src.models.loading import LoadedModel
from src.common.preprocess import Preprocess

SHOWN_BROKEN = 3  # unreadable images named in the closing warning


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
        payload = {**result.to_dict(classes), "checkpoint": loaded.source, "model": loaded.name,
                   "num_classes": loaded.num_classes, "use_ema": loaded.use_ema, "preprocess": pre.to_dict(),
                   "dataset": where, "world_size": info.world_size, "device": str(info.device)}
        path = Path(output_json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        print(f"metrics written to {path}")
    if confusion_csv:
        path = Path(confusion_csv)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_confusion_csv(result, classes, str(path))
        print(f"confusion matrix written to {path}")
