"""train.py's automatic choices and run bookkeeping: defaults for a bare run, run folders that
never overwrite each other, extending a run, non-finite gradients, 1-based epochs, --check.

Runs are tiny (32 px images, 3 classes, one thread) so the file stays fast on a shared CPU.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml

import eval as eval_entry
import train
from helpers_data import make_image_folder
from src.training.step import StepExecutor, step_flags
from src.runtime.amp import DynamicScaler, NoScaler, StaticScaler
from src.models import build_model
from src.training.run_dir import RunDirError, check_reuse, delete_run_files

FAST = ["--image_size", "32", "--log_interval", "1"]
torch.set_num_threads(1)


def run_train(args: list, capsys) -> tuple[int, str, str]:
    code = train.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def records(run_dir: Path, kind: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == kind]


def run_folder(out: str) -> Path:
    return Path(next(line for line in out.splitlines() if line.startswith("run folder: ")).split(": ", 1)[1])


@pytest.fixture(scope="module")
def data3(tmp_path_factory) -> Path:
    """3 classes, 12 train + 4 val images each (36 training images)."""
    root = tmp_path_factory.mktemp("data3")
    make_image_folder(root, classes=3, per_class=12, size=(36, 36), split="train", seed=3)
    return make_image_folder(root, classes=3, per_class=4, size=(36, 36), split="val", seed=4)


# ------------------------------------------------------------------------------ non-finite gradients
def test_no_scaler_skips_a_step_whose_gradients_are_not_finite():
    layer = torch.nn.Linear(3, 2)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    layer(torch.ones(1, 3)).sum().backward()
    layer.weight.grad[0, 0] = float("inf")
    assert NoScaler().step(optimizer).applied is False
    assert all(torch.equal(before[k], v) for k, v in layer.state_dict().items())
    optimizer.zero_grad()
    layer(torch.ones(1, 3)).sum().backward()
    assert NoScaler().step(optimizer).applied is True
    assert not torch.equal(before["bias"], layer.bias)


def test_the_loss_check_and_stop_request_are_device_flags_not_host_reads():
    """No .item()/bool() per step: [loss not finite, stop requested] stays a tensor on the loss's device
    until the scaler reads it with the gradient check."""
    flags = [step_flags(torch.tensor(value), stop, distributed=False)
             for value, stop in ((1.5, False), (float("nan"), False), (float("inf"), True), (-0.0, True))]
    assert all(isinstance(f, torch.Tensor) and f.device.type == "cpu" for f in flags)
    assert [f.tolist() for f in flags] == [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]
    layer = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    layer(torch.ones(1, 3)).sum().backward()
    assert tuple(NoScaler().step(optimizer, flags[3])) == (True, True)  # the step is taken, then the run stops


@pytest.mark.parametrize("make_scaler", [NoScaler, lambda: StaticScaler(128.0),
                                         lambda: DynamicScaler(torch.device("cpu"))], ids=["none", "static", "dynamic"])
def test_every_scaler_skips_a_step_flagged_for_a_non_finite_loss_even_with_finite_gradients(make_scaler):
    """An inf loss can have finite gradients (label smoothing over a -inf logit): the flag alone skips the
    step; weights, optimizer state and the loss scale stay as they were, and the next step applies."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9)
    scaler = make_scaler()
    scale = scaler.state_dict()
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    scaler.backward(layer(torch.ones(1, 3)).sum())
    scaler.unscale_(optimizer)  # as --grad_clip does before the step
    assert scaler.step(optimizer, torch.ones(1)).applied is False
    assert all(torch.equal(before[k], v) for k, v in layer.state_dict().items()) and optimizer.state_dict()["state"] == {}
    assert scaler.state_dict() == scale
    optimizer.zero_grad()
    scaler.backward(layer(torch.ones(1, 3)).sum())
    assert scaler.step(optimizer, torch.zeros(1)).applied is True
    assert not torch.equal(before["bias"], layer.bias)


def test_bf16_run_skips_and_counts_steps_with_non_finite_gradients(data3, tmp_path, monkeypatch, capsys):
    original, calls = StepExecutor.forward_backward, []

    def poisoned(executor, batch, *args):
        loss = original(executor, batch, *args)
        calls.append(1)
        if len(calls) in (2, 3):  # optimizer steps 1 and 2: a finite loss whose gradients overflowed
            next(executor.model.parameters()).grad.fill_(float("nan"))
        return loss

    monkeypatch.setattr(StepExecutor, "forward_backward", poisoned)
    code, out, err = run_train(["--dataset_path", data3, "--device_target", "CPU", "--amp", "bf16", *FAST,
                                "--epoch_size", "1", "--num_workers", "0", "--save_checkpoint_path", tmp_path / "r"],
                               capsys)
    assert code == 0, err
    assert "skipped: 0 non-finite steps, 0 unreadable images; 2 steps not applied for non-finite gradients" in out
    ckpt = torch.load(tmp_path / "r" / "efficientnet_b0-1_4.pth", weights_only=True)
    assert ckpt["overflow_total"] == 2
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values() if t.is_floating_point())


# ------------------------------------------------------------------------------ a bare run
def test_bare_run_trains_a_head_per_class_folder_and_eval_py_agrees(data3, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_train(["--dataset_path", data3, "--device_target", "CPU", "--image_size", "32",
                                "--epoch_size", "2"], capsys)
    assert code == 0, err
    assert "warning" not in err.lower() and "suggested max" not in out + err  # workers within the CPU count
    cpus = len(os.sched_getaffinity(0))
    assert f"device: CPU (as set), {min(8, cpus)} data loader worker(s) per process" in out
    assert "batch_size 8 per process (the default 128 would give 0 steps per epoch on 36 training images)" in out
    run_dir = run_folder(out)
    assert run_dir.parent == Path("runs") and run_dir.name.startswith("efficientnet_b0_")
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert (saved["class_num"], saved["lr_max"], saved["device_target"], saved["batch_size"]) == (None, 0.001,
                                                                                               "CPU", 8)
    best = torch.load(run_dir / "efficientnet_b0-best.pth", weights_only=True)
    assert best["model"]["classifier.1.weight"].shape[0] == 3 and best["num_classes"] == 3
    logged = float(out.split("best top-1 ")[1].split()[0])
    code = eval_entry.main(["--checkpoint_path", str(run_dir / "efficientnet_b0-best.pth"), "--dataset_path",
                            str(data3), "--num_workers", "0", "--output_json", "e.json"])
    assert code == 0, capsys.readouterr().err
    assert json.loads(Path("e.json").read_text())["Top_1_Acc"] == pytest.approx(logged, abs=5e-6)  # the log prints 5 decimals


def test_unset_device_is_the_cpu_without_cuda_and_says_so(data3, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # runs on GPU machines too
    code, out, err = run_train(["--check", "--dataset_path", data3, "--save_checkpoint_path", tmp_path / "r"], capsys)
    assert code == 0, err
    assert out.startswith("ok: efficientnet_b0 on CPU")


# ------------------------------------------------------------------------------ run folders
def test_runs_never_overwrite_each_other(data3, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    base = ["--dataset_path", data3, "--device_target", "CPU", *FAST, "--epoch_size", "1", "--num_workers", "0"]
    folders = []
    for _ in range(2):
        code, out, err = run_train(base, capsys)
        assert code == 0, err
        folders.append(run_folder(out))
    assert folders[0] != folders[1] and all(f.parent == Path("runs") for f in folders)
    # --config <run>/config.yaml starts a new folder beside it, not inside or over it.
    code, out, err = run_train(["--config", folders[0] / "config.yaml", "--dataset_path", data3], capsys)
    assert code == 0, err
    third = run_folder(out)
    assert third.parent == Path("runs") and third not in folders
    # An explicit folder holding another run: one line, nothing touched; --overwrite true replaces it.
    explicit = folders[0]
    before = (explicit / "metrics.jsonl").read_text()
    code, out, err = run_train([*base, "--save_checkpoint_path", explicit], capsys)
    assert code == 2 and err.count("\n") == 1 and "--overwrite true" in err and "--resume" in err, err
    assert (explicit / "metrics.jsonl").read_text() == before
    code, out, err = run_train([*base, "--save_checkpoint_path", explicit, "--overwrite", "true"], capsys)
    assert code == 0, err
    assert len(records(explicit, "epoch")) == 1  # one run's metrics, not two
    assert (explicit / "summary.csv").read_text().count("\n") == 2  # header and this run's one epoch
    assert len(list(explicit.glob("events.out.tfevents*"))) == 1  # the earlier run's event file is gone


@pytest.mark.parametrize("leftover", ["summary.csv", "events.out.tfevents.1700000000.host.1.0"])
def test_a_folder_holding_only_a_summary_or_event_file_is_a_run(tmp_path, leftover):
    (tmp_path / leftover).write_text("x")
    (tmp_path / "notes.txt").write_text("not a run file")
    with pytest.raises(RunDirError, match=f"holds another run \\({leftover}\\)"):
        check_reuse(tmp_path, overwrite=False, resuming=False)
    assert check_reuse(tmp_path, overwrite=True, resuming=False) == [tmp_path / leftover]
    delete_run_files([tmp_path / leftover])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


# ------------------------------------------------------------------------------ extending a run
def test_resume_with_more_epochs_stretches_the_rest_of_the_schedule(data3, tmp_path, capsys):
    run_dir = tmp_path / "r"
    base = ["--dataset_path", data3, "--device_target", "CPU", *FAST, "--num_workers", "0", "--batch_size", "9",
            "--warmup_epochs", "0.5", "--lr_max", "0.002", "--lr_end", "0.0001", "--lr_init", "0.0005",
            "--progressive", "[{epochs: 1, image_size: 32}, {epochs: 1, image_size: 40}]"]
    code, out, err = run_train([*base, "--epoch_size", "2", "--save_checkpoint_path", run_dir], capsys)
    assert code == 0, err
    assert "progressive stage 1/2 from epoch 1: image_size 32" in out  # stage 1 is announced too
    assert "epoch: [  1/  2], step:[    1/    4]" in out  # epochs and steps are 1-based
    assert [r["epoch"] for r in records(run_dir, "epoch")] == [1, 2]
    first = [r["lr"] for r in records(run_dir, "step")]
    code, out, err = run_train([*base, "--epoch_size", "4", "--resume", run_dir / "efficientnet_b0-1_4.pth"], capsys)
    assert code == 0, err
    assert "note: epoch_size 2 -> 4: the rest of the LR schedule (from epoch 1, lr" in out
    assert "stretched to end at epoch 4" in out
    lrs = [r["lr"] for r in records(run_dir, "step")][len(first):]
    assert len(lrs) == 12
    assert lrs[0] == pytest.approx(first[4], rel=1e-9)  # the LR goes on where the checkpoint was
    assert all(b <= a for a, b in zip(lrs, lrs[1:])) and lrs[-1] < 0.15 * lrs[0]  # then decays over 4 epochs
    assert lrs[3] > first[7]  # slower than the 2-epoch schedule: it was stretched, not cut


# ------------------------------------------------------------------------------ --check
def test_check_loads_the_pretrained_file_and_creates_nothing(data3, tmp_path, capsys):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    good = tmp_path / "good.pth"
    torch.save(build_model("efficientnet_b0", num_classes=5).state_dict(), good)
    args = ["--check", "--dataset_path", data3, "--device_target", "CPU", *FAST,
            "--save_checkpoint_path", tmp_path / "never" / "run"]
    code, out, err = run_train([*args, "--pretrained", bad], capsys)
    assert code == 2 and err.count("\n") == 1 and str(bad) in err, err
    code, out, err = run_train([*args, "--pretrained", good], capsys)
    assert code == 0 and out.splitlines()[-1].startswith("ok: "), err
    assert not (tmp_path / "never").exists()
