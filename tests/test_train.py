"""train.py and src/training/ (loop.py, trainer.py, step.py) end to end, plus the sampler, amp and progressive stages.

Mixup and CutMix are tested in test_mixup.py.

Runs are tiny (32 px, 2-3 classes, a few steps, one thread) so the file stays fast on a shared CPU.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

import train
from helpers_data import make_image_folder
from src.training import trainer
from src.runtime.amp import DynamicScaler, NoScaler, StaticScaler, autocast, build_scaler
from src.config import load_config
from src.models import build_model
from src.models.effnet import EfficientNet
from src.training.data import augment_settings
from src.training.progressive import StageSettings, set_dropout, stage_settings
from src.data.sampler import EpochSampler, SeededDataset, sample_seed

REPO = Path(__file__).resolve().parents[1]
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
RUN_TIMEOUT_S = 300
KILL_POLL_S = 0.01
torch.set_num_threads(1)  # two test workers share two cores: more threads only spin

BASE = ["--model", "efficientnet_b0", "--device_target", "CPU", "--image_size", "32", "--batch_size", "4",
        "--num_workers", "0", "--class_num", "0", "--log_interval", "1", "--augment", "light",
        "--opt", "adamw", "--opt_eps", "1e-8", "--lr_max", "0.002", "--lr_init", "0.0002", "--lr_end", "0.0001",
        "--warmup_epochs", "0.5", "--lr_decay_mode", "cosine", "--keep_checkpoint_max", "20"]


def run_main(args: list[str], capsys) -> tuple[int, str, str]:
    code = train.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def weights(path: Path | str, key: str = "model") -> dict[str, torch.Tensor]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return ckpt[key] if key == "model" else ckpt[key]["state_dict"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert different == [], f"{len(different)} tensors differ, e.g. {different[:3]}"


def assert_one_error_line(code: int, err: str, expected_code: int, *fragments: str) -> None:
    assert code == expected_code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def data2(tmp_path_factory) -> Path:
    """2 classes, 24 train + 5 val images each: 12 steps of batch 4 per epoch."""
    root = tmp_path_factory.mktemp("data2")
    make_image_folder(root, classes=2, per_class=24, size=(36, 36), split="train", seed=1)
    return make_image_folder(root, classes=2, per_class=5, size=(36, 36), split="val", seed=2)


# ----------------------------------------------------------------------------------------------
# src/data/sampler.py
# ----------------------------------------------------------------------------------------------
def test_epoch_sampler_shards_cover_the_epoch_once_and_depend_on_seed_and_epoch_only():
    shards = []
    for rank in range(3):
        sampler = EpochSampler(20, batch_size=2, num_batches=3, seed=5, rank=rank, world_size=3)
        sampler.set_epoch(4)
        shards.append(list(sampler))
    epochs = {e for shard in shards for e, _ in shard}
    indices = [i for shard in shards for _, i in shard]
    assert epochs == {4}
    assert len(indices) == 18 and len(set(indices)) == 18  # 3 ranks x 3 batches x 2, no repeats
    again = EpochSampler(20, 2, 3, seed=5, rank=1, world_size=3)
    again.set_epoch(4)
    assert list(again) == shards[1]
    again.set_epoch(5)
    assert list(again) != shards[1]


def test_epoch_sampler_resume_skips_indices_of_done_batches():
    sampler = EpochSampler(23, batch_size=4, num_batches=5, seed=0)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.set_epoch(2, start_batch=3)
    assert list(sampler) == full[12:] and len(sampler) == 8
    with pytest.raises(ValueError):
        EpochSampler(10, batch_size=4, num_batches=3, seed=0)  # 12 samples needed, 10 available


def test_epoch_sampler_splits_a_global_batch_the_same_way_on_any_process_count():
    """Step k takes positions [4k, 4k + 4) of the epoch's order; micro-batch j of the step is [4k + 2j, 4k + 2j + 2),
    whether 2 processes run one each or 1 process runs both (accumulate 2)."""
    def micro_batches(world, accumulate, start_batch=0):
        out = {}
        for rank in range(world):
            steps = 9 // (2 * world * accumulate)  # 2 steps of global batch 4
            sampler = EpochSampler(9, batch_size=2, num_batches=steps * accumulate, seed=0, shuffle=False, rank=rank,
                                   world_size=world, accumulate=accumulate)
            sampler.set_epoch(0, start_batch)
            indices = [i for _, i in sampler]
            for b, micro in enumerate(range(start_batch, sampler.num_batches)):
                out[sampler.block(micro)] = indices[2 * b:2 * b + 2]
        return out

    two_processes, one_process = micro_batches(2, 1), micro_batches(1, 2)
    assert two_processes == one_process == {0: [0, 1], 1: [2, 3], 2: [4, 5], 3: [6, 7]}  # image 8: next epoch
    assert micro_batches(1, 2, start_batch=2) == {2: [4, 5], 3: [6, 7]}  # resumed after step 1 on 1 process
    with pytest.raises(ValueError, match="not a whole number of steps"):
        EpochSampler(9, batch_size=2, num_batches=3, seed=0, accumulate=2)


class RandomItems(torch.utils.data.Dataset):
    """Each item draws from all three global generators, like an augmentation pipeline."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, index: int) -> tuple[float, float, float]:
        import random
        return torch.rand(1).item(), random.random(), float(np.random.rand())


def test_seeded_dataset_items_depend_only_on_seed_epoch_index_and_keep_main_rng():
    data = SeededDataset(RandomItems(), seed=3)
    torch.manual_seed(0)
    expected_next = torch.rand(1).item()
    torch.manual_seed(0)
    first = data[(1, 7)]
    assert torch.rand(1).item() == expected_next  # the main process stream is untouched
    _ = data[(1, 2)]
    assert data[(1, 7)] == first
    assert data[(2, 7)] != first and data[(1, 6)] != first
    assert sample_seed(3, 1, 7) != sample_seed(3, 7, 1)


# ----------------------------------------------------------------------------------------------
# src/runtime/amp.py
# ----------------------------------------------------------------------------------------------
def _param_with_grad(grad: float) -> tuple[nn.Parameter, torch.optim.Optimizer]:
    param = nn.Parameter(torch.tensor([1.0]))
    param.grad = torch.tensor([grad])
    return param, torch.optim.SGD([param], lr=1.0)


def test_static_scaler_scales_loss_divides_grads_and_skips_overflow():
    scaler = StaticScaler(128.0)
    param = nn.Parameter(torch.tensor([2.0]))
    optimizer = torch.optim.SGD([param], lr=0.5)
    scaler.backward((param * 3.0).sum())
    assert param.grad.item() == 384.0  # 3 * 128: the backward saw the scaled loss
    assert scaler.step(optimizer).applied is True
    assert param.item() == 2.0 - 0.5 * 3.0
    param, optimizer = _param_with_grad(float("inf"))
    assert scaler.step(optimizer).applied is False and param.item() == 1.0
    assert scaler.state_dict() == {"kind": "static", "scale": 128.0}


def test_dynamic_scaler_halves_scale_and_skips_on_inf():
    scaler = DynamicScaler(torch.device("cpu"))
    before = scaler.scaler.get_scale()
    param = nn.Parameter(torch.tensor([1.0]))
    optimizer = torch.optim.SGD([param], lr=1.0)
    scaler.backward((param * 2.0).sum())
    assert param.grad.item() == 2.0 * before
    assert scaler.step(optimizer).applied is True and param.item() == -1.0  # unscaled gradient 2 applied
    scaler.backward((param * float("nan")).sum())
    assert scaler.step(optimizer).applied is False and param.item() == -1.0
    assert scaler.scaler.get_scale() == before / 2
    restored = DynamicScaler(torch.device("cpu"))
    restored.load_state_dict(scaler.state_dict())
    assert restored.scaler.get_scale() == before / 2


def test_build_scaler_and_autocast_choices():
    cpu = torch.device("cpu")
    assert type(build_scaler("none", 1024, cpu)) is NoScaler
    assert type(build_scaler("bf16", 0, cpu)) is NoScaler
    assert isinstance(build_scaler("fp16", 1024, cpu), StaticScaler)
    assert isinstance(build_scaler("fp16", 0, cpu), DynamicScaler)
    layer = nn.Linear(4, 2)
    with autocast(cpu, "bf16"):
        assert layer(torch.ones(1, 4)).dtype == torch.bfloat16
    with autocast(cpu, "none"):
        assert layer(torch.ones(1, 4)).dtype == torch.float32


# ----------------------------------------------------------------------------------------------
# src/training/progressive.py
# ----------------------------------------------------------------------------------------------
def test_progressive_stage_lookup_and_settings():
    stages = "[{epochs: 2, image_size: 64, dropout: 0.1, randaug_magnitude: 5}, {epochs: 1, image_size: 96, mixup: 0.2}]"
    cfg = load_config(["--progressive", stages, "--randaug_magnitude", "9", "--dropout", "0.25"])
    got = [stage_settings(cfg, epoch, 128) for epoch in range(5)]
    assert [s.index for s in got] == [0, 0, 1, 1, 1]  # the last stage runs to the end
    assert [s.image_size for s in got] == [64, 64, 96, 96, 96]
    assert got[0] == StageSettings(0, 64, 0.1, 5, 0.0)
    assert got[2] == StageSettings(1, 96, 0.25, 9, 0.2)  # keys a stage leaves out keep the run's values
    assert stage_settings(load_config([]), 3, 128) == StageSettings(-1, 128, None, 9, 0.0)
    assert augment_settings(cfg, got[0]).randaug_magnitude == 5 and cfg.randaug_magnitude == 9
    # a stage's magnitude counts as set: the named preset's 9 cannot override it
    moderate = load_config(["--progressive", stages, "--augment", "moderate"])
    assert augment_settings(moderate, stage_settings(moderate, 0, 128)).randaug_magnitude == 5
    assert augment_settings(moderate, stage_settings(moderate, 2, 128)).randaug_magnitude == 9
    model = build_model("efficientnet_b0", num_classes=2)
    set_dropout(model, 0.35)
    assert model.classifier[0].p == 0.35


# ----------------------------------------------------------------------------------------------
# train.py: bad input
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("extra, fragment", [
    (["--dataset_path", "{tmp}/missing"], "does not exist"),
    (["--dataset_path", "{tmp}/empty"], "no class folders"),
    (["--dataset_path", "{data}", "--model", "efficientnet_b9"], "'model'"),
    (["--dataset_path", "{data}", "--batch_size", "-3"], "'batch_size'"),
    (["--dataset_path", "{data}", "--batch_size", "64"], "lower --batch_size"),
    (["--dataset_path", "{data}", "--class_num", "1"], "--class_num 2"),
    (["--dataset_path", "{data}", "--resume", "{tmp}/nothing.pth"], "checkpoint not found"),
    (["--dataset_path", "{data}", "--pretrained", "{tmp}/nothing.pth"], "not found"),
    (["--dataset_path", "{data}", "--no_such_key", "1"], "unknown config key"),
    (["--dataset_path", "{data}", "--save_checkpoint_path", "{tmp}/a_file/run"], "cannot hold the run's files"),
    (["--dataset_path", "{data}", "--batch_size", "1"], "use --batch_size 2 or more, or --image_size 33 or more"),
    (["--dataset_path", "{data}", "--pretrained", "{tmp}/zero.pth"], "zero.pth is corrupt or truncated"),
    (["--dataset_path", "{data}", "--pretrained", "{tmp}/a_file"], "a_file is not a readable checkpoint"),
])
def test_bad_input_is_one_error_line_and_exit_2(extra, fragment, data2, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "a_file").write_text("not weights")
    (tmp_path / "zero.pth").touch()
    args = BASE + ["--save_checkpoint_path", tmp_path / "run"]
    args += [a.format(tmp=tmp_path, data=data2) for a in extra]
    code, _, err = run_main(args, capsys)
    assert_one_error_line(code, err, 2, fragment)


def test_check_validates_as_rank_0_of_the_launch_and_trains_nothing(data2, tmp_path, monkeypatch, capsys):
    args = BASE + ["--check", "--dataset_path", data2, "--save_checkpoint_path", tmp_path / "run", "--batch_size", "6"]
    code, out, err = run_main(args, capsys)
    assert (code, err) == (0, "")
    assert out == ("ok: efficientnet_b0 on CPU, 48 training images, 10 validation images, 2 classes; "
                   "1 process(es), 8 steps per epoch\n")
    assert not (tmp_path / "run").exists()  # --check creates no folder
    monkeypatch.setenv("WORLD_SIZE", "10")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    code, _, err = run_main(args, capsys)  # 5 images per process: not one batch of 6
    assert_one_error_line(code, err, 2, "48 training images are less than one optimizer step of batch_size 6 x "
                                        "accumulate_grad_batches 1 x 10 process(es) = 60")


def test_missing_validation_and_an_unused_checkpoint_path_are_noted_before_training(tmp_path, capsys):
    data = make_image_folder(tmp_path / "data", classes=2, per_class=4, size=(36, 36), split="train")
    args = BASE + ["--dataset_path", data, "--save_checkpoint_path", tmp_path / "run", "--epoch_size", "1",
                   "--checkpoint_path", "weights.pth"]
    code, out, err = run_main(args, capsys)
    assert code == 0, err
    start = out.index("epoch: [  1/  1]")
    assert out.index("note: no validation set (add DIR/val/<class>/* or set --val_split)") < start
    assert out.index("note: checkpoint_path (weights.pth) is for eval.py and export.py; train.py starts from "
                     "--pretrained PATH") < start
    assert "val: epoch" not in out


def test_gpu_without_cuda_suggests_cpu(data2, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # runs on GPU machines too
    code, _, err = run_main(BASE + ["--dataset_path", data2, "--device_target", "GPU"], capsys)
    assert_one_error_line(code, err, 2, "--device_target CPU")


class Hostile:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.slow
def test_hostile_resume_checkpoint_runs_no_code(data2, tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"model": {}, "payload": Hostile(marker)}, evil)
    proc = subprocess.run([sys.executable, "train.py", *map(str, BASE), "--dataset_path", str(data2),
                           "--resume", str(evil), "--save_checkpoint_path", str(tmp_path / "run")],
                          cwd=REPO, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert_one_error_line(proc.returncode, proc.stderr, 2, str(evil), "not a safe checkpoint")
    raw = tmp_path / "evil.pkl"  # a bare pickle, not torch's zip format
    raw.write_bytes(pickle.dumps(Hostile(marker)))
    code, _, err = run_main(BASE + ["--dataset_path", data2, "--resume", raw], capsys)
    assert_one_error_line(code, err, 2, str(raw))
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------
# Training runs
# ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_short_training_learns_and_fills_the_run_folder(tmp_path, capsys):
    # From scratch at 32 px the last stages see 1x1 maps, so eval-mode BN statistics lag the weights until the
    # LR settles: a plain SGD recipe decaying to 0 over 48 steps is the shortest run that scores reliably.
    data = make_image_folder(tmp_path / "shapes", classes=3, per_class=16, size=(36, 36), split="both", seed=4)
    run_dir = tmp_path / "run"
    args = BASE + ["--dataset_path", data, "--save_checkpoint_path", run_dir, "--epoch_size", "16", "--batch_size", "16",
                   "--augment", "none", "--opt", "sgd", "--lr_init", "0.005", "--lr_max", "0.005", "--lr_end", "0",
                   "--warmup_epochs", "0", "--drop_path_rate", "0", "--dropout", "0", "--use_label_smooth", "false",
                   "--eval_interval", "4", "--save_checkpoint_epochs", "8", "--log_interval", "3"]
    code, out, err = run_main(args, capsys)
    assert code == 0, err
    assert "resolved config" in out and "final accuracy: top-1" in out
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if r["type"] == "val"]
    assert [r["epoch"] for r in val] == [4, 8, 12, 16]
    assert val[-1]["top1"] >= 0.75  # 3 classes: chance is 0.33
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["epoch_size"] == 16 and saved["lr_max"] == 0.005 and saved["dataset_path"] == str(data)
    names = sorted(p.name for p in run_dir.glob("*.pth"))
    assert names == ["efficientnet_b0-16_3.pth", "efficientnet_b0-8_3.pth", "efficientnet_b0-best.pth"]
    ckpt = torch.load(run_dir / "efficientnet_b0-16_3.pth", weights_only=True)
    for key in ("model", "epoch", "step", "config", "model_name", "num_classes", "classes", "preprocess", "optimizer",
                "lr_state", "ema", "scaler", "rng", "best_metric", "early_stop", "step_in_epoch"):
        assert key in ckpt, key
    assert (ckpt["epoch"], ckpt["step"], ckpt["step_in_epoch"]) == (16, 48, 0)
    assert ckpt["classes"] == ["class_00", "class_01", "class_02"] and ckpt["num_classes"] == 3
    assert ckpt["preprocess"] == {"resize": 37, "crop": 32, "interpolation": "bicubic",
                                  "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    assert ckpt["best_metric"] == max(r["top1"] for r in val)
    assert (run_dir / "curves.png").stat().st_size > 0 and (run_dir / "train.log").read_text().count("epoch time:") == 16


def _reference_args(data: Path, run_dir: Path) -> list[str]:
    """Features whose state must survive a resume: EMA, accumulation, clipping, mixup/cutmix, mid-epoch saves."""
    return [*map(str, BASE), "--dataset_path", str(data), "--save_checkpoint_path", str(run_dir), "--epoch_size", "3",
            "--ema_decay", "0.9", "--accumulate_grad_batches", "2", "--grad_clip", "1.0", "--mixup", "0.2",
            "--cutmix", "1.0", "--save_checkpoint_steps", "4", "--drop_path_rate", "0.2", "--log_interval", "3"]


def reference_run(data: Path, run_dir: Path) -> Path:
    """An uninterrupted 3-epoch run in its own process (6 optimizer steps per epoch)."""
    proc = subprocess.run([sys.executable, "train.py", *_reference_args(data, run_dir)], cwd=REPO,
                          env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr
    return run_dir


def check_sigkill_resume(data: Path, reference: Path, tmp_path: Path) -> None:
    killed_dir = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "train.py", *_reference_args(data, killed_dir)], cwd=REPO,
                            env=SUBPROCESS_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = killed_dir / "efficientnet_b0-1_6.pth"
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(KILL_POLL_S)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL  # killed mid-run, not finished
    assert not (killed_dir / "efficientnet_b0-3_6.pth").exists()
    # Resume with only the checkpoint: config, data path and state all come from it; 2 loader workers
    # this time (augmentation is seeded per sample, so the worker count does not matter).
    resumed_dir = tmp_path / "resumed"
    proc = subprocess.run([sys.executable, "train.py", "--resume", str(first), "--save_checkpoint_path",
                           str(resumed_dir), "--num_workers", "2"], cwd=REPO, env=SUBPROCESS_ENV,
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr
    assert "resumed from" in proc.stdout and "1 epochs + 0 steps done, global step 6" in proc.stdout
    final = "efficientnet_b0-3_6.pth"
    assert_same_weights(weights(reference / final), weights(resumed_dir / final))
    assert_same_weights(weights(reference / final, "ema"), weights(resumed_dir / final, "ema"))
    ref = torch.load(reference / final, weights_only=True)
    got = torch.load(resumed_dir / final, weights_only=True)
    assert got["ema"]["updates"] == ref["ema"]["updates"] == 18
    for a, b in zip(ref["optimizer"]["state"].values(), got["optimizer"]["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in a)


def check_mid_epoch_resume(reference: Path, tmp_path: Path, capsys) -> None:
    mid = reference / "efficientnet_b0-2_2.pth"  # global step 8: epoch 2, 2 of 6 steps done
    ckpt = torch.load(mid, weights_only=True)
    assert (ckpt["epoch"], ckpt["step_in_epoch"], ckpt["step"]) == (1, 2, 8)
    code, out, err = run_main(["--resume", mid, "--save_checkpoint_path", tmp_path, "--log_interval", "1"], capsys)
    assert code == 0, err
    resumed_epoch = [line.split("step:[")[1][:5].strip() for line in out.splitlines() if line.startswith("epoch: [  2/")]
    assert resumed_epoch == ["3", "4", "5", "6"]  # the two done steps are not repeated
    assert_same_weights(weights(reference / "efficientnet_b0-3_6.pth"), weights(tmp_path / "efficientnet_b0-3_6.pth"))
    log = (reference / "train.log").read_text()
    assert log.count("val(ema): epoch:") == 3 and log.count("val: epoch:") == 3


@pytest.mark.slow
def test_resume_after_sigkill_or_mid_epoch_ends_with_identical_weights(data2, tmp_path, capsys):
    """Against one uninterrupted run: a run killed with SIGKILL after its first checkpoint and resumed (in
    another process, other worker count), and a resume from a mid-epoch checkpoint. One test so the
    reference run is made once per pytest-xdist worker."""
    reference = reference_run(data2, tmp_path / "reference")
    check_sigkill_resume(data2, reference, tmp_path)
    check_mid_epoch_resume(reference, tmp_path / "mid", capsys)


class NaNOnCalls(nn.Module):
    """The real loss, but NaN on the listed (0-based) calls, as a diverging run would give."""

    def __init__(self, inner: nn.Module, bad_calls: set[int] | None, from_call: int | None = None) -> None:
        super().__init__()
        self.inner, self.bad_calls, self.from_call, self.calls = inner, bad_calls or set(), from_call, 0

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = self.inner(logits, target)
        bad = self.calls in self.bad_calls or (self.from_call is not None and self.calls >= self.from_call)
        self.calls += 1
        return loss * float("nan") if bad else loss


@pytest.mark.slow
def test_nonfinite_steps_are_skipped_and_counted(data2, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(trainer, "loss_from_config", lambda cfg, n: NaNOnCalls(nn.CrossEntropyLoss(), {1, 2}))
    args = BASE + ["--dataset_path", data2, "--save_checkpoint_path", tmp_path, "--epoch_size", "1",
                   "--max_nonfinite_steps", "3", "--batch_size", "8"]
    code, out, err = run_main(args, capsys)
    assert code == 0, err
    assert out.count("warning: non-finite loss") == 2 and "skipped: 2 non-finite steps" in out
    assert all(torch.isfinite(t).all() for t in weights(tmp_path / "efficientnet_b0-1_6.pth").values())


@pytest.mark.slow
def test_persistent_nonfinite_loss_stops_and_keeps_last_good_checkpoint(data2, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(trainer, "loss_from_config", lambda cfg, n: NaNOnCalls(nn.CrossEntropyLoss(), None, from_call=7))
    args = BASE + ["--dataset_path", data2, "--save_checkpoint_path", tmp_path, "--epoch_size", "3",
                   "--max_nonfinite_steps", "3", "--batch_size", "8"]  # 6 steps per epoch; NaN from step 8 on
    code, _, err = run_main(args, capsys)
    assert_one_error_line(code, err, 1, "3 consecutive steps", "efficientnet_b0-1_6.pth")
    assert sorted(p.name for p in tmp_path.glob("efficientnet_b0-*_*.pth")) == ["efficientnet_b0-1_6.pth"]
    ckpt = torch.load(tmp_path / "efficientnet_b0-1_6.pth", weights_only=True)
    assert ckpt["epoch"] == 1 and all(torch.isfinite(t).all() for t in ckpt["model"].values())


@pytest.mark.slow
def test_cuda_oom_exits_3_naming_remedies_and_keeps_checkpoint(data2, tmp_path, monkeypatch, capsys):
    real_forward = EfficientNet.forward
    calls = {"train": 0}

    def forward(self, x):
        if self.training:
            calls["train"] += 1
            if calls["train"] > 6:  # the second epoch's first step
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_forward(self, x)

    monkeypatch.setattr(EfficientNet, "forward", forward)
    args = BASE + ["--dataset_path", data2, "--save_checkpoint_path", tmp_path, "--epoch_size", "2", "--batch_size", "8"]
    code, _, err = run_main(args, capsys)
    assert_one_error_line(code, err, 3, "--batch_size", "--accumulate_grad_batches", "--amp", "--grad_checkpointing",
                          "--image_size", "efficientnet_b0-1_6.pth")
    assert torch.load(tmp_path / "efficientnet_b0-1_6.pth", weights_only=True)["epoch"] == 1


@pytest.mark.slow
def test_full_disk_at_checkpoint_exits_1_with_one_line_and_no_partial_file(data2, tmp_path):
    """A child train.py under a 1 MB file-size limit: the kernel refuses the checkpoint write (EFBIG, as a
    full disk gives ENOSPC); the run must stop with one line naming the file, not a torch traceback."""
    launcher = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
                "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20)); import train; "
                "sys.exit(train.main(sys.argv[1:]))")
    args = BASE + ["--dataset_path", data2, "--save_checkpoint_path", tmp_path, "--epoch_size", "1", "--batch_size", "8"]
    result = subprocess.run([sys.executable, "-c", launcher, *map(str, args)], capture_output=True, text=True,
                            timeout=RUN_TIMEOUT_S, cwd=Path(train.__file__).parent)
    assert_one_error_line(result.returncode, result.stderr, 1, "could not write checkpoint",
                          str(tmp_path / "efficientnet_b0-1_6.pth"), "File too large", "--save_checkpoint_path")
    assert "val: epoch: [  1/  1]" in result.stdout  # the epoch itself ran
    assert list(tmp_path.glob("*.pth")) == [] and list(tmp_path.glob(".*.tmp")) == []


def test_full_disk_elsewhere_is_one_line_and_other_os_errors_still_raise(monkeypatch, capsys):
    def fail(cfg):
        raise OSError(errno_value, os.strerror(errno_value), "checkpoint/train.log")

    monkeypatch.setattr(train, "run_training", fail)
    errno_value = errno.ENOSPC
    code, _, err = run_main(["--epoch_size", "1"], capsys)
    assert_one_error_line(code, err, 1, "could not write checkpoint/train.log (No space left on device)", "--resume")
    errno_value = errno.EACCES
    with pytest.raises(PermissionError):
        run_main(["--epoch_size", "1"], capsys)


@pytest.mark.slow
def test_finetune_frozen_backbone_from_weight_file(data2, tmp_path, capsys):
    source = build_model("efficientnet_b0", num_classes=5)  # another head size: the classifier is re-initialised
    torch.save(source.state_dict(), tmp_path / "weights.pth")
    args = BASE + ["--dataset_path", data2, "--save_checkpoint_path", tmp_path / "run", "--pretrained",
                   tmp_path / "weights.pth", "--freeze_backbone", "--finetune_auto", "true", "--epoch_size", "1",
                   "--lr_max", "0.01", "--lr_end", "0.01", "--warmup_epochs", "0"]
    code, out, err = run_main(args, capsys)
    assert code == 0, err
    assert "finetune_auto: 48 training images (under 1,000) -> epoch_size" not in out  # epoch_size was given
    assert "finetune_auto: 48 training images (under 1,000) -> dropout 0.3" in out
    assert "kept values you set: lr_max 0.01, epoch_size 1, batch_size 4" in out
    assert ("warning: only 48 training images; expect overfitting - consider --linear_probe true or stronger "
            "--augment\n") in out
    trained = weights(tmp_path / "run" / "efficientnet_b0-1_12.pth")
    original = source.state_dict()
    assert_same_weights({k: v for k, v in trained.items() if k.startswith("features.")},
                        {k: v for k, v in original.items() if k.startswith("features.")})  # BN statistics too
    assert trained["classifier.1.weight"].shape == (2, 1280)
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["dropout"] == 0.3


@pytest.mark.slow
def test_progressive_stages_resize_inputs_and_set_dropout(data2, tmp_path, monkeypatch, capsys):
    real_forward = EfficientNet.forward
    seen: list[tuple[int, float]] = []

    def forward(self, x):
        if self.training:
            seen.append((x.shape[-1], self.classifier[0].p))
        return real_forward(self, x)

    monkeypatch.setattr(EfficientNet, "forward", forward)
    stages = "[{epochs: 1, image_size: 32, dropout: 0.1}, {epochs: 1, image_size: 48, dropout: 0.3, mixup: 0.2}]"
    args = BASE + ["--dataset_path", data2, "--save_checkpoint_path", tmp_path, "--epoch_size", "2",
                   "--batch_size", "12", "--progressive", stages]
    code, out, err = run_main(args, capsys)
    assert code == 0, err
    assert seen == [(32, 0.1)] * 4 + [(48, 0.3)] * 4
    assert "progressive stage 2/2 from epoch 2: image_size 48, dropout 0.3" in out


@pytest.mark.slow
def test_bf16_autocast_and_fp16_static_scale_train_on_cpu(data2, tmp_path, capsys):
    torch.manual_seed(0)
    initial = build_model("efficientnet_b0", num_classes=2)
    torch.save(initial.state_dict(), tmp_path / "initial.pth")
    learnable = [name for name, _ in initial.named_parameters()]
    for amp, extra in (("bf16", []), ("fp16", ["--loss_scale", "128"])):
        run_dir = tmp_path / amp
        args = BASE + ["--dataset_path", data2, "--save_checkpoint_path", run_dir, "--epoch_size", "1",
                       "--batch_size", "12", "--amp", amp, "--pretrained", tmp_path / "initial.pth", *extra]
        code, _, err = run_main(args, capsys)
        assert code == 0, err
        ckpt = torch.load(run_dir / "efficientnet_b0-1_4.pth", weights_only=True)
        assert ckpt["config"]["amp"] == amp
        assert all(t.dtype != torch.bfloat16 and torch.isfinite(t).all() for t in ckpt["model"].values())
        # the steps were applied, not skipped: every learnable tensor moved from the initial weights
        unchanged = [k for k in learnable if torch.equal(ckpt["model"][k], initial.state_dict()[k])]
        assert unchanged == [], f"{amp}: {len(unchanged)} of {len(learnable)} tensors unchanged, e.g. {unchanged[:3]}"
        records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert all(np.isfinite(r["loss"]) for r in records if r["type"] == "step")
    assert ckpt["scaler"] == {"kind": "static", "scale": 128.0}


@pytest.mark.slow
def test_unreadable_training_images_are_skipped_and_counted(tmp_path, capsys):
    from helpers_data import write_broken_file

    from src.common.errors import BrokenImageWarning
    data = make_image_folder(tmp_path / "data", classes=2, per_class=6, size=(36, 36), split="both")
    write_broken_file(data / "train" / "class_00" / "zz_garbage.jpg", "garbage")
    write_broken_file(data / "train" / "class_01" / "zz_truncated.jpg", "truncated")
    args = BASE + ["--dataset_path", data, "--save_checkpoint_path", tmp_path / "run", "--epoch_size", "1",
                   "--batch_size", "7", "--augment", "none"]  # 14 files: both broken ones are in the 2 batches
    with pytest.warns(BrokenImageWarning) as caught:
        code, out, err = run_main(args, capsys)
    assert sorted(Path(str(w.message).split()[3].rstrip(":")).name for w in caught) == ["zz_garbage.jpg", "zz_truncated.jpg"]
    assert code == 0, err
    assert "broken images: 2" in out and "skipped: 0 non-finite steps, 2 unreadable images" in out
    assert json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-2])["broken_images"] == 2


@pytest.mark.slow
def test_a_batch_left_with_one_readable_32px_image_is_skipped_not_fatal(tmp_path, capsys):
    """At 32 px the last feature map is 1x1: one image would give BatchNorm a single value per channel."""
    from helpers_data import write_broken_file

    data = make_image_folder(tmp_path / "data", classes=2, per_class=1, size=(36, 36), split="both")
    for i in range(3):
        write_broken_file(data / "train" / "class_00" / f"zz_bad{i}.jpg", "garbage")
    for i in range(4):
        write_broken_file(data / "train" / "class_01" / f"zz_bad{i}.jpg", "truncated")
    for good in (data / "train" / "class_01").glob("img_*"):
        good.unlink()  # 8 files, one readable: two batches of 4
    args = BASE + ["--dataset_path", data, "--save_checkpoint_path", tmp_path / "run", "--epoch_size", "1",
                   "--batch_size", "4", "--augment", "none"]
    with pytest.warns(UserWarning):
        code, out, err = run_main(args, capsys)
    assert code == 0, err
    assert "skipped: 0 non-finite steps, 7 unreadable images" in out


@pytest.mark.slow
def test_early_stopping_ends_the_run_after_patience(data2, tmp_path, capsys):
    # A frozen backbone (BN statistics fixed) and a vanishing LR: validation never improves after epoch 1.
    args = BASE + ["--dataset_path", data2, "--save_checkpoint_path", tmp_path, "--epoch_size", "5", "--batch_size", "12",
                   "--freeze_backbone", "--lr_max", "1e-12", "--lr_init", "0", "--lr_end", "0",
                   "--early_stop_patience", "2", "--save_checkpoint_epochs", "10"]
    code, out, err = run_main(args, capsys)
    assert code == 0, err
    assert out.count("val: epoch:") == 3 and "early stopping: no improvement for 2 validations" in out
    ckpt = torch.load(tmp_path / "efficientnet_b0-3_4.pth", weights_only=True)  # saved when stopping
    assert ckpt["epoch"] == 3 and ckpt["early_stop"]["bad_epochs"] == 2 and ckpt["best_epoch"] == 1
