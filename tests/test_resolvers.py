"""One rule per concern (issue 20): each test here failed before the restructure's fix.

--pretrained means the same weights in train.py, eval.py and export.py (a checkpoint's EMA, one
vocabulary for the published weights, no download in --check); export.py reads a YAML as eval.py
does; eval.py's default workers share the node's CPUs; every entry point prints an error as one
line and lets a bug keep its traceback; shards follow the folders' validation rule; constants
have one definition; the dead code is gone.
"""
from __future__ import annotations

import ast
import shutil
from pathlib import Path

import onnx
import pytest
import torch

import eval as eval_entry
import export as export_entry
import train as train_entry
from infer.metadata import parse_metadata
from src.common.errors import InputError
from src.common.preprocess import DatasetError
from src.config import CONFIG_KEYS, LR_DECAY_MODES, Config
from src.data import sources
from src.evaluation import settings as eval_settings
from src.export import source as export_source
from src.models import build_model, build_pretrained
from src.models.files import atomic_save
from src.models.loading import load_published, load_trained
from src.models.weights import default_preprocess
from src.training import lr_generator
from tests.helpers_data import make_image_folder

REPO = Path(__file__).resolve().parent.parent
NAME = "efficientnet_b0"
CLASSES = ["cat", "dog", "eel"]


@pytest.fixture(scope="module")
def ema_checkpoint(tmp_path_factory) -> tuple[Path, dict, dict]:
    """A train.py-style checkpoint whose raw and EMA weights differ everywhere: (path, raw, ema)."""
    torch.manual_seed(0)
    raw = build_model(NAME, num_classes=3).state_dict()
    ema = {k: (v + 0.5 if v.is_floating_point() else v) for k, v in raw.items()}
    cfg = Config(model=NAME, ema_decay=0.99).to_dict()
    path = tmp_path_factory.mktemp("ckpt") / f"{NAME}-1_4.pth"
    atomic_save({"model": raw, "ema": {"state_dict": ema, "updates": 4, "decay": 0.99}, "model_name": NAME,
                 "config": cfg, "classes": CLASSES, "epoch": 1, "step": 4}, path)
    return path, raw, ema


def _equal(model: torch.nn.Module, state: dict) -> bool:
    return all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_pretrained_checkpoint_is_its_ema_weights_in_every_entry_point(ema_checkpoint, capsys):
    """eval.py --pretrained CKPT scored the raw weights while --checkpoint_path and train.py used the EMA."""
    path, raw, ema = ema_checkpoint
    assert not _equal(_build(raw), ema)
    loaded = {
        "eval --checkpoint_path": load_trained(str(path)).model,
        "eval --pretrained": load_published(NAME, str(path)).model,
        "export --pretrained": export_source.load_source(pretrained=str(path), model_name=NAME).model,
        "train --pretrained": build_pretrained(NAME, str(path), num_classes=3)[0],
    }
    assert {where: _equal(model, ema) for where, model in loaded.items()} == dict.fromkeys(loaded, True)
    assert capsys.readouterr().out == ""  # the model library prints nothing; the caller says what it found


def _build(state: dict) -> torch.nn.Module:
    model = build_model(NAME, num_classes=3)
    model.load_state_dict(state)
    return model


def test_check_with_pretrained_true_downloads_nothing(tmp_path, monkeypatch, capsys):
    """`train.py --check --pretrained true` downloaded the weights: 'true' was not in --check's vocabulary."""
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: pytest.fail("downloaded"))
    make_image_folder(tmp_path / "data", classes=2, per_class=4, split="both")
    code = train_entry.main(["--check", "--model", NAME, "--pretrained", "true", "--dataset_path",
                             str(tmp_path / "data"), "--device_target", "CPU", "--image_size", "32",
                             "--save_checkpoint_path", str(tmp_path / "run")])
    assert code == 0, capsys.readouterr().err
    assert capsys.readouterr().out.startswith(f"ok: {NAME} on CPU")


def test_eval_pretrained_true_means_imagenet(monkeypatch, tmp_path):
    """`eval.py --pretrained true` failed with 'checkpoint not found: true'."""
    published = build_model(NAME).state_dict()
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda url, **kwargs: published)
    args = eval_entry.build_parser().parse_args(["--model", NAME, "--pretrained", "true", "--dataset_path",
                                                 str(tmp_path)])
    loaded = eval_settings.load_model(eval_settings.merge_settings(args))
    assert loaded.source == f"torchvision {NAME} IMAGENET1K_V1" and _equal(loaded.model, published)


def test_export_reads_a_yaml_as_eval_does(tmp_path, monkeypatch, capsys):
    """export.py exported the YAML's `pretrained` network, skipped validation and ignored image_size."""
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: pytest.fail("downloaded"))
    code = export_entry.main(["--config", str(REPO / "configs" / "finetune.yaml"), "--file_name",
                              str(tmp_path / "x")])
    assert code == 2 and "nothing to export" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("batch_size: -1\n")
    assert export_entry.main(["--config", str(bad), "--model", NAME, "--pretrained"]) == 2
    assert "config key 'batch_size'" in capsys.readouterr().err
    weights = tmp_path / "b0.pth"
    torch.save(build_model(NAME, num_classes=3).state_dict(), weights)
    config = tmp_path / "export.yaml"
    config.write_text(f"model: {NAME}\ncheckpoint_path: {weights}\nimage_size: 64\npretrained: imagenet\n")
    assert export_entry.main(["--config", str(config), "--file_name", str(tmp_path / "b0"), "--no_op_counts"]) == 0
    info = parse_metadata({p.key: p.value for p in onnx.load(str(tmp_path / "b0.onnx")).metadata_props})
    assert info.preprocess == default_preprocess(NAME).at_crop(64)  # 73 -> 64: the YAML's size, B0's ratio


def test_eval_default_workers_share_the_nodes_cpus(monkeypatch, tmp_path):
    """eval.py took min(8, CPUs) workers in every process: 8 processes on 8 CPUs started 64."""
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    args = eval_entry.build_parser().parse_args(["--checkpoint_path", "x.pth", "--dataset_path", str(tmp_path)])
    assert eval_settings.merge_settings(args).num_workers == 2


def test_errors_are_one_line_and_bugs_keep_their_traceback(monkeypatch, capsys, tmp_path):
    """eval.py and export.py printed multi-line messages raw; export.py turned every ValueError into 'bad input'."""
    def bad_input(*args, **kwargs):
        raise InputError("first line\n  second line")

    monkeypatch.setattr(export_entry, "load_source", bad_input)
    assert export_entry.main(["--model", NAME, "--pretrained"]) == 2
    assert capsys.readouterr().err == "error: first line second line\n"
    monkeypatch.setattr(eval_entry, "load_model", bad_input)
    assert eval_entry.main(["--checkpoint_path", "x.pth", "--dataset_path", str(make_image_folder(tmp_path))]) == 2
    assert capsys.readouterr().err == "error: first line second line\n"

    def bug(*args, **kwargs):
        raise ValueError("a bug, not bad input")

    monkeypatch.setattr(export_entry, "load_source", bug)
    with pytest.raises(ValueError, match="a bug"):
        export_entry.main(["--model", NAME, "--pretrained"])


def test_shards_follow_the_folders_validation_rule(tmp_path):
    """With --dataset wds any val_split stopped the run ('drop --val_split'), even with val shards there."""
    from src.data.shards import convert

    make_image_folder(tmp_path / "images", classes=2, per_class=3, split="both")
    convert(tmp_path / "images", tmp_path / "shards", shard_size_mb=0.05, log=lambda _: None)
    splits = sources.open_splits(str(tmp_path / "shards"), "wds", val_split=0.1)
    assert (len(splits.train), len(splits.val)) == (6, 6)
    assert splits.notes == [f"note: val_split 0.1 unused: the val shards of {tmp_path / 'shards'} are the "
                            "validation set"]
    (tmp_path / "train_only").mkdir()
    for shard in (tmp_path / "shards").glob("train-*.tar"):
        shutil.copy(shard, tmp_path / "train_only")
    assert sources.open_splits(str(tmp_path / "train_only"), "wds").val is None
    with pytest.raises(DatasetError, match=r"has no val shards to use instead; convert IMAGE_ROOT/val too .*or set "
                                           r"--val_split 0"):
        sources.open_splits(str(tmp_path / "train_only"), "wds", val_split=0.1)
    code = train_entry.main(["--check", "--config", str(REPO / "configs" / "finetune.yaml"), "--dataset", "wds",
                             "--dataset_path", str(tmp_path / "shards"), "--device_target", "CPU",
                             "--save_checkpoint_path", str(tmp_path / "run")])
    assert code == 0  # the README's shard command with the shipped fine-tune config runs as written


def _assignments(root: Path) -> dict[str, list[str]]:
    """Module-level NAME = ... assignments of upper-case names in src/, infer/ and the entry points."""
    found: dict[str, list[str]] = {}
    files = [*root.glob("src/**/*.py"), *root.glob("infer/*.py"), *root.glob("*.py")]
    for path in files:
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, ast.AnnAssign) else []
            for target in targets:
                if isinstance(target, ast.Name) and target.id.isupper():
                    found.setdefault(target.id, []).append(str(path.relative_to(root)))
    return found


def test_constants_have_one_definition():
    """Twins: CONFIG_FILE, MAX_DEFAULT_WORKERS, EXIT_INTERRUPTED and the exit codes, the dataset kinds, the
    LR decay modes were each defined in two or three modules."""
    defined = _assignments(REPO)
    for name in ("CONFIG_FILE", "MAX_DEFAULT_WORKERS", "EXIT_INTERRUPTED", "EXIT_BAD_INPUT", "EXIT_FAILED",
                 "DATASET_KINDS", "LR_DECAY_MODES"):
        assert len(defined.get(name, [])) == 1, (name, defined.get(name))
    assert "DECAY_MODES" not in defined and "EXIT_TRAINING_FAILED" not in defined
    assert Config.__dataclass_fields__["dataset"].metadata["spec"].choices == sources.DATASET_KINDS
    assert lr_generator.LR_DECAY_MODES is LR_DECAY_MODES
    assert "lr_decay_mode" in CONFIG_KEYS


def test_dead_code_is_gone():
    """Names that nothing called (or that could not be set) are not there to be copied."""
    from src.export import onnx_export, qat_onnx
    from src.models import pretrained
    from src.data import transforms
    from src.training import monitor

    assert not hasattr(qat_onnx, "verify_qat_onnx") and not hasattr(monitor, "BestTracker")
    assert not hasattr(pretrained, "read_state_dict") and "erasing_fill" not in transforms.AugmentConfig.__annotations__
    assert list(__import__("inspect").signature(onnx_export.random_batch).parameters) == ["batch", "size", "seed"]
