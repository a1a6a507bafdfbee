"""The plain fine-tuning loop ``benchmark.py finetune`` holds the recipe against (issue 21).

What a user writes in 30 lines with the same pretrained weights: AdamW at 5e-4 with a one-cycle
schedule, batch 16, 8 epochs, random crops of 50-100% of the image and flips, cross-entropy with
label smoothing 0.1; scored once, at the end, with the variant's eval preprocessing (resize,
centre crop, normalise) on the whole val/. No selection on val: the score is the final weights'.

    python -m bench.plain_finetune --run JSON   (internal: the harness runs it in a fresh interpreter)
"""
from __future__ import annotations

import json
import random
import sys
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .finetune_sets import labelled_samples

RESULT_PREFIX = "PLAIN_FINETUNE_RESULT "
LR = 5e-4
BATCH_SIZE = 16
EPOCHS = 8
CROP_SCALE = (0.5, 1.0)
LABEL_SMOOTHING = 0.1

Samples = Sequence[tuple[str, int]]  # (image path, class index)


class Photos(torch.utils.data.Dataset):
    """(path, label) pairs through a torchvision transform (files read as torchvision's ImageFolder does)."""

    def __init__(self, samples: Samples, transform) -> None:
        self.samples, self.transform = list(samples), transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from torchvision.datasets.folder import pil_loader

        path, label = self.samples[i]
        return self.transform(pil_loader(path)), label


def transforms(model_name: str, image_size: int | None):
    """(train, eval) torchvision v2 pipelines: random crops + flips; the variant's eval preprocessing."""
    from torchvision.transforms import v2

    from src.models import default_preprocess

    pre = default_preprocess(model_name)
    pre = pre.at_crop(image_size or pre.crop)
    to_input = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(pre.mean, pre.std)]
    train = v2.Compose([v2.RandomResizedCrop(pre.crop, scale=CROP_SCALE), v2.RandomHorizontalFlip(), *to_input])
    resample = v2.InterpolationMode(pre.interpolation)
    evaluate = v2.Compose([v2.Resize(pre.resize, interpolation=resample), v2.CenterCrop(pre.crop), *to_input])
    return train, evaluate


def plain_finetune(train: Samples, val: Samples, num_classes: int, model_name: str, image_size: int | None,
                   epochs: int = EPOCHS, seed: int = 0, num_workers: int = 0) -> tuple[nn.Module, float]:
    """Fine-tune the ImageNet weights on ``train``; (the final model, its val top-1)."""
    from torch.utils.data import DataLoader

    from src.models import build_pretrained

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    train_tf, eval_tf = transforms(model_name, image_size)
    model, _ = build_pretrained(model_name, "imagenet", num_classes=num_classes)
    # drop_last: a last batch of one image cannot pass BatchNorm at a 1x1 feature map (small crops)
    loader = DataLoader(Photos(train, train_tf), batch_size=min(BATCH_SIZE, len(train)), shuffle=True,
                        drop_last=True, num_workers=num_workers, generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=LR, total_steps=epochs * len(loader))
    criterion = nn.CrossEntropyLoss(label_smoothing=LABEL_SMOOTHING)
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            loss = criterion(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in DataLoader(Photos(val, eval_tf), batch_size=64, num_workers=num_workers):
            correct += int((model(x).argmax(1) == y).sum())
    return model, correct / len(val)


def main(params: dict) -> dict:
    """The child's job: a dataset root and the settings in, the score out."""
    classes, train, val = labelled_samples(params["root"])
    _, top1 = plain_finetune(train, val, len(classes), params["model"], params["image_size"], params["epochs"],
                             params["seed"], params["num_workers"])
    return {"top1": top1}


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--run":
        print(RESULT_PREFIX + json.dumps(main(json.loads(sys.argv[2]))), flush=True)
        sys.exit(0)
    sys.exit("usage: python benchmark.py finetune [options]  (bench.plain_finetune --run JSON is internal)")
