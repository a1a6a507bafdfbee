"""configs/*.yaml: every shipped recipe loads, and the EfficientNetV2-S recipe holds the paper's values
(progressive learning in four stages, RMSProp with exponential decay, EMA) in the order the trainer uses them."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from src.config import load_config
from src.training.trainer import schedule_from_config
from src.training.progressive import stage_settings

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
V2_S = Path(__file__).resolve().parents[1] / "configs" / "efficientnet_v2_s_imagenet.yaml"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads_with_the_values_it_states(path):
    cfg = load_config(["--config", str(path)])
    written = yaml.safe_load(path.read_text())
    assert cfg.explicit == set(written)
    assert {key: getattr(cfg, key) for key in written if key != "progressive"} == \
        {key: value for key, value in written.items() if key != "progressive"}


def test_v2_s_recipe_has_the_papers_four_progressive_stages():
    cfg = load_config(["--config", str(V2_S)])
    stages = cfg.progressive
    assert len(stages) == 4 and sum(s["epochs"] for s in stages) == cfg.epoch_size == 350
    sizes = [s["image_size"] for s in stages]
    magnitudes = [s["randaug_magnitude"] for s in stages]
    dropouts = [s["dropout"] for s in stages]
    assert sizes == sorted(set(sizes)) and (sizes[0], sizes[-1]) == (128, 300) == (128, cfg.image_size)
    assert magnitudes == sorted(set(magnitudes)) and (magnitudes[0], magnitudes[-1]) == (5, 15)
    assert dropouts == sorted(set(dropouts)) and (dropouts[0], dropouts[-1]) == (0.1, 0.3)
    assert [s["mixup"] for s in stages] == [0.0] * 4 and cfg.mixup == cfg.cutmix == 0.0  # V2-S: mixup 0 -> 0
    assert (cfg.model, cfg.auto_augment, cfg.randaug_num_ops) == ("efficientnet_v2_s", "randaugment", 2)
    assert (cfg.eval_resize, cfg.eval_crop) == (384, 384)
    assert (cfg.opt, cfg.rmsprop_decay, cfg.momentum, cfg.weight_decay) == ("rmsprop", 0.9, 0.9, 1e-5)
    assert (cfg.ema_decay, cfg.drop_path_rate) == (0.9999, 0.2)


def test_v2_s_stage_lookup_starts_at_stage_1_and_ends_in_the_last():
    cfg = load_config(["--config", str(V2_S)])
    first = stage_settings(cfg, 0, cfg.image_size)
    assert (first.index, first.image_size, first.randaug_magnitude, first.dropout, first.mixup) == (0, 128, 5, 0.1, 0.0)
    assert stage_settings(cfg, 86, cfg.image_size).index == 0 and stage_settings(cfg, 87, cfg.image_size).index == 1
    last = stage_settings(cfg, cfg.epoch_size - 1, cfg.image_size)
    assert (last.index, last.image_size, last.randaug_magnitude, last.dropout, last.mixup) == (3, 300, 15, 0.3, 0.0)


def test_v2_s_learning_rate_warms_up_from_0_to_0256_at_4096_then_decays_097_every_24_epochs():
    cfg = load_config(["--config", str(V2_S)])
    steps_per_epoch = 10
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    paper = schedule_from_config(cfg, steps_per_epoch, world_size=4096 // cfg.batch_size)  # global batch 4096
    assert paper.lr_at(0) == 0.0 and paper.lr_at(warmup // 2) == pytest.approx(0.128, rel=1e-12)
    assert paper.lr_at(warmup) == pytest.approx(0.256, rel=1e-12)
    decay_steps = int(cfg.lr_decay_epochs * steps_per_epoch)
    assert paper.lr_at(warmup + decay_steps - 1) == pytest.approx(0.256, rel=1e-12)
    assert paper.lr_at(warmup + decay_steps) == pytest.approx(0.256 * 0.97, rel=1e-12)
    eight_gpus = schedule_from_config(cfg, steps_per_epoch, world_size=8)  # 8 x 128: a quarter of the batch
    assert eight_gpus.lr_at(warmup) == pytest.approx(0.064, rel=1e-12)
