"""Test-only launcher: train.py, then this rank's final weights hashed into DUMP_DIR/rank<R>.json.

torchrun starts it in place of train.py so a test can prove every rank ends with bitwise the same
parameters, buffers and EMA (only rank 0 writes checkpoints), with no test hook in src/:

    torchrun ... tests/rank_weights_train.py DUMP_DIR <train.py arguments>
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

import train
from src.training import loop


def digest(tensors: list[torch.Tensor]) -> str:
    h = hashlib.sha256()
    for tensor in tensors:
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def main(argv: list[str]) -> int:
    out, runs = Path(argv[0]), []
    train_run = loop.train

    def train_and_keep(run: loop.Run) -> loop.TrainResult:
        runs.append(run)
        return train_run(run)

    loop.train = train_and_keep  # run_training looks it up when called
    code = train.main(argv[1:])
    if code == 0:
        [run] = runs
        ema, model = run.trainer.ema, run.trainer.model
        record = {"rank": run.info.rank, "params": digest(list(model.parameters())),
                  "buffers": digest(list(model.buffers())),
                  "ema": digest(list(ema.module.state_dict().values())) if ema is not None else None}
        out.mkdir(parents=True, exist_ok=True)
        (out / f"rank{run.info.rank}.json").write_text(json.dumps(record))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
