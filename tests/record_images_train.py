"""train.py that also records every training image it loads: ``python tests/record_images_train.py OUT
[train.py args]`` appends ``epoch index`` lines to OUT/images_<rank>_<pid>.txt (one file per process, so
a resumed or restarted run adds its own). Runs with --num_workers 0 (the main process loads)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import train
from src.data.sampler import SeededDataset


def main(argv: list[str]) -> int:
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    log = out / f"images_{os.environ.get('RANK', '0')}_{os.getpid()}.txt"
    load = SeededDataset.__getitem__

    def recorded(self, key):
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(f"{key[0]} {key[1]}\n")
        return load(self, key)

    SeededDataset.__getitem__ = recorded
    return train.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
