"""Tests for src/models/files.py: atomic writes, safe loading, rotation, RNG resume, weight extraction."""

import os
import random
import shlex
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from src.models.files import CheckpointError, CheckpointWriteError, atomic_save, read_file, weights_in
from src.training.checkpoints import CheckpointManager, restore_rng_state, rng_state


class ShellPayload:
    """A hostile object: unpickling it runs a shell command that creates a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(self.marker)}",))


class OpenPayload:
    """A hostile object that needs no shell: unpickling it calls open(marker, 'w')."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class FailsToPickle:
    """Stands in for a save that dies half way (disk full, killed process)."""

    def __reduce__(self):
        raise OSError("simulated failure during save")


RICH_STATE = {
    "model": {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "n": torch.tensor(7)},
    "epoch": 3, "step": 1875, "lr": 0.052, "name": "efficientnet_b2",
    "classes": ["cat", "dog"], "ema": None, "flag": True,
    "config": {"opt": "rmsprop", "nested": {"eps": 1e-3, "sizes": [260, 280]}},
}


def test_atomic_save_round_trip_with_weights_only(tmp_path):
    path = atomic_save(RICH_STATE, tmp_path / "a.pth")
    loaded = read_file(path)
    assert torch.equal(loaded["model"]["w"], RICH_STATE["model"]["w"])
    assert loaded["model"]["n"].item() == 7
    plain = {k: v for k, v in loaded.items() if k != "model"}
    assert plain == {k: v for k, v in RICH_STATE.items() if k != "model"}
    assert sorted(os.listdir(tmp_path)) == ["a.pth"]
    (tmp_path / "plain").touch()
    assert path.stat().st_mode == (tmp_path / "plain").stat().st_mode  # not mkstemp's 0600


def test_failed_save_keeps_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "ckpt.pth"
    atomic_save({"epoch": 1}, path)
    with pytest.raises(OSError, match="simulated failure"):
        atomic_save({"epoch": 2, "bad": FailsToPickle()}, path)
    assert read_file(path) == {"epoch": 1}
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pth"]


def test_failure_is_a_checkpoint_write_error_naming_the_file(tmp_path):
    path = tmp_path / "ckpt.pth"
    with pytest.raises(CheckpointWriteError, match=f"could not write checkpoint {path} .*simulated failure"):
        atomic_save({"bad": FailsToPickle()}, path)


def test_full_disk_keeps_old_checkpoint_and_names_the_cause(tmp_path):
    """A real write failure, in a child process: a file-size limit makes the kernel refuse the write
    (EFBIG) as a full disk would (ENOSPC); torch.save reports it as a RuntimeError of its own."""
    script = textwrap.dedent("""
        import resource, signal, sys, torch
        from src.models.files import CheckpointWriteError, atomic_save
        path = sys.argv[1]
        atomic_save({"epoch": 1}, path)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        try:
            atomic_save({"epoch": 2, "model": torch.zeros(1 << 20)}, path)  # 4 MB
        except CheckpointWriteError as exc:
            print(exc)
    """)
    path = tmp_path / "ckpt.pth"
    result = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=120,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert result.returncode == 0, result.stderr
    message = result.stdout.strip()
    assert message.startswith(f"could not write checkpoint {path} (File too large; "), message
    assert "GB free there" in message
    assert "--save_checkpoint_path" in message and len(message.splitlines()) == 1
    assert read_file(path) == {"epoch": 1}
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pth"]


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(CheckpointError, match=f"^checkpoint not found: {missing}$"):
        read_file(missing)
    with pytest.raises(CheckpointError, match=f"^{tmp_path} is a folder; give the checkpoint file inside it"):
        read_file(tmp_path)


@pytest.mark.parametrize("payload_cls", [ShellPayload, OpenPayload])
def test_hostile_pickle_is_refused_and_never_runs(tmp_path, payload_cls):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "x": payload_cls(marker)}, path)
    with pytest.raises(CheckpointError) as info:
        read_file(path)
    assert str(info.value) == (f"{path} is not a safe checkpoint (it contains pickled Python "
                               "objects; refusing to load it)")
    assert not marker.exists()
    # Control: the payload is real — an unsafe load does run it.
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("content", ["truncated", "garbage", "empty", "text"])
def test_corrupt_files_raise_checkpoint_error(tmp_path, content):
    good = tmp_path / "good.pth"
    atomic_save(RICH_STATE, good)
    data = {"truncated": good.read_bytes()[:200], "garbage": bytes(range(256)) * 4,
            "empty": b"", "text": b"hello, this is not a checkpoint"}[content]
    bad = tmp_path / "bad.pth"
    bad.write_bytes(data)
    with pytest.raises(CheckpointError, match=str(bad)):
        read_file(bad)


def test_load_rejects_non_dict(tmp_path):
    path = atomic_save(torch.zeros(2), tmp_path / "t.pth")
    with pytest.raises(CheckpointError, match="holds a Tensor, expected a dict"):
        read_file(path)


def test_manager_names_rotates_and_finds_latest(tmp_path):
    manager = CheckpointManager(tmp_path, "efficientnet_b2", keep_max=2)
    assert manager.latest() is None
    (tmp_path / "efficientnet_b0-1_5.pth").write_bytes(b"other model")
    assert manager.save({"epoch": 350}, 350, 625).name == "efficientnet_b2-350_625.pth"
    # Numeric, not lexicographic, order: 9 < 10 < 350.
    for epoch in (9, 10):
        manager.save({"epoch": epoch}, epoch, epoch * 625)
    best = manager.save_best({"epoch": 10})
    assert best.name == "efficientnet_b2-best.pth"
    assert sorted(os.listdir(tmp_path)) == ["efficientnet_b0-1_5.pth", "efficientnet_b2-10_6250.pth",
                                            "efficientnet_b2-350_625.pth", "efficientnet_b2-best.pth"]
    assert manager.latest().name == "efficientnet_b2-350_625.pth"
    assert read_file(manager.latest()) == {"epoch": 350}


def test_manager_rejects_bad_keep_max(tmp_path):
    with pytest.raises(ValueError, match="keep_max must be >= 1"):
        CheckpointManager(tmp_path, "m", keep_max=0)


def _draw() -> tuple:
    return (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(),
            np.random.randn(), torch.rand(4).tolist(), torch.randint(0, 1000, (3,)).tolist())


def test_rng_round_trip_through_a_weights_only_file(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leave a cached gaussian in both python and numpy states
    np.random.randn()
    path = atomic_save({"rng": rng_state()}, tmp_path / "rng.pth")
    expected = _draw()
    _draw()  # move every generator on
    restore_rng_state(read_file(path)["rng"])
    assert _draw() == expected


def test_weights_in_finds_the_tensors_of_every_kind_of_file():
    weights = {"features.0.weight": torch.ones(2), "classifier.1.bias": torch.zeros(3)}
    ddp_compiled = {f"module._orig_mod.{k}": v for k, v in weights.items()}
    ema = {"features.0.weight": torch.full((2,), 5.0), "classifier.1.bias": torch.zeros(3)}
    train_ckpt = {"model": ddp_compiled, "epoch": 1, "ema": {"state_dict": ema, "updates": 4}}
    assert list(weights_in(weights)) == list(weights)
    assert list(weights_in(train_ckpt)) == list(weights)
    assert list(weights_in({"state_dict": {f"_orig_mod.{k}": v for k, v in weights.items()}})) \
        == list(weights)
    assert weights_in(train_ckpt, ema=True)["features.0.weight"].tolist() == [5.0, 5.0]


def test_weights_in_errors():
    with pytest.raises(CheckpointError, match="no EMA weights"):
        weights_in({"model": {"w": torch.ones(1)}, "ema": None}, ema=True)
    with pytest.raises(CheckpointError, match="no model weights found.*keys: epoch, lr"):
        weights_in({"epoch": 1, "lr": 0.1})
