"""finetune_auto: the fine-tuning recipe chosen from the size of the training set.

Only keys the user did not set (``cfg.explicit``) are chosen; the lines returned say what was
chosen and what was kept, and train.py prints them with the resolved config.
"""
from __future__ import annotations

from src.config import Config

# Fine-tuning tiers by training-set size: (max images, lr_max, epoch_size, batch_size, dropout).
# They sit on LP-FT with frozen BatchNorm statistics (configs/finetune.yaml: linear_probe, freeze_bn):
# the head starts fitted, so a low LR and a few epochs keep the pretrained features instead of
# re-learning them; smaller sets get smaller batches (enough steps) and more dropout, not more
# epochs (``python benchmark.py finetune``'s sweep, docs/benchmarks.md: 3 epochs lost on digits, lr
# 5e-4 gained nowhere consistently). Above the last bound the 5k-20k tier is kept (not measured).
FINETUNE_TIERS: tuple[tuple[int, float, int, int, float], ...] = (
    (1_000, 2e-4, 6, 16, 0.3),
    (5_000, 2e-4, 4, 32, 0.2),
    (20_000, 3e-4, 3, 64, 0.15),
)
FINETUNE_KEYS = ("lr_max", "epoch_size", "batch_size", "dropout")


def _finetune_tier(num_train_images: int) -> tuple[str, tuple[float, ...]]:
    """(description of the size bucket, its (lr_max, epoch_size, batch_size, dropout))."""
    lower = 0
    for bound, *values in FINETUNE_TIERS:
        if num_train_images < bound:
            span = f"under {bound:,}" if lower == 0 else f"{lower:,} to {bound - 1:,}"
            return span, tuple(values)
        lower = bound
    return f"{lower:,} or more", FINETUNE_TIERS[-1][1:]


def recipe_for(num_train_images: int, num_classes: int) -> dict[str, object]:
    """The values finetune_auto chooses for a training set of this size, by key (FINETUNE_KEYS).

    The one rule: apply_finetune_defaults sets these on a Config, and ``benchmark.py finetune``
    asks it how many epochs a set gets (to scale them). ``num_classes`` is part of the question
    (0: not known); the current tiers answer from the image count alone.
    """
    if num_train_images < 0:
        raise ValueError(f"num_train_images must be >= 0, got {num_train_images}")
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0, got {num_classes}")
    return dict(zip(FINETUNE_KEYS, _finetune_tier(num_train_images)[1]))


def apply_finetune_defaults(cfg: Config, num_train_images: int, num_classes: int = 0) -> list[str]:
    """Set lr_max/epoch_size/batch_size/dropout from the dataset size unless the user set them.

    Changes ``cfg`` in place and returns lines for the log explaining each choice. The values are
    recipe_for's; ``num_classes`` 0 = not known.
    """
    recipe = recipe_for(num_train_images, num_classes)
    span = _finetune_tier(num_train_images)[0]
    chosen, kept = [], []
    for name, value in recipe.items():
        if name in cfg.explicit:
            kept.append(f"{name} {getattr(cfg, name)}")
        else:
            setattr(cfg, name, value)
            chosen.append(f"{name} {value:g}")
    lines = [f"finetune_auto: {num_train_images:,} training images ({span}) -> "
             + (", ".join(chosen) if chosen else "nothing to choose")]
    if kept:
        lines.append("finetune_auto: kept values you set: " + ", ".join(kept))
    return lines
