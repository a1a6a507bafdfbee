"""Config loading, overrides, validation errors, explicit-key tracking and serialisation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from src.config import (
    CONFIG_KEYS,
    MODEL_NAMES,
    Config,
    ConfigError,
    load_config,
    markdown_table,
)
from src.data.transforms import resolve_augment
from src.training.finetune import apply_finetune_defaults
from src.training.progressive import progressive_stage

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
REPO_ROOT = CONFIG_DIR.parent


def write_yaml(tmp_path: Path, data: dict | str, name: str = "c.yaml") -> str:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    return str(path)


# --- the shipped YAML files --------------------------------------------------------------------

@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_yaml_loads(path: Path) -> None:
    cfg = load_config(["--config", str(path)])
    assert cfg.explicit == set(yaml.safe_load(path.read_text()))
    assert cfg.model in MODEL_NAMES
    # every key the file leaves out keeps the schema's default
    defaults = Config().to_dict()
    assert {k: v for k, v in cfg.to_dict().items() if k not in cfg.explicit} == \
        {k: v for k, v in defaults.items() if k not in cfg.explicit}


@pytest.mark.parametrize("name", ["efficientnet_b0_imagenet.yaml", "efficientnet_b3_imagenet.yaml"])
def test_values_tagged_b2_are_the_b2_recipes(name: str) -> None:
    """The B0/B3 files tag keys "[b2]": same value as the B2 GPU recipe. Each tag is checked."""
    path = CONFIG_DIR / name
    tagged = [line.split(":")[0] for line in path.read_text().splitlines() if "# [b2]" in line]
    assert len(tagged) >= 20
    cfg = load_config(["--config", str(path)])
    b2 = load_config(["--config", str(CONFIG_DIR / "efficientnet_b2_imagenet.yaml")])
    same = {"liner": "linear"}  # the ModelZoo spelling: one schedule (see test_lr_generator)
    assert {k: same.get(getattr(cfg, k), getattr(cfg, k)) for k in tagged} == \
        {k: same.get(getattr(b2, k), getattr(b2, k)) for k in tagged}


def test_shipped_configs_exist() -> None:
    names = {p.name for p in CONFIG_DIR.glob("*.yaml")}
    assert {"efficientnet_b0_imagenet.yaml", "efficientnet_b2_imagenet.yaml", "efficientnet_b3_imagenet.yaml",
            "finetune.yaml", "digits.yaml"} <= names


def test_b2_yaml_is_the_modelzoo_gpu_recipe() -> None:
    """The MindSpore ModelZoo EfficientNet-B2 recipe (GPU values of its src/config.py, its dataset.py),
    written out here independently of the YAML, which must match it."""
    cfg = load_config(["--config", str(CONFIG_DIR / "efficientnet_b2_imagenet.yaml")])
    expected = dict(model="efficientnet_b2", class_num=1000, batch_size=128, loss_scale=1024.0, momentum=0.9,
                    weight_decay=1e-5, epoch_size=350, save_checkpoint=True, save_checkpoint_epochs=1,
                    keep_checkpoint_max=5, save_checkpoint_path="./checkpoint", opt="rmsprop", opt_eps=0.001,
                    warmup_epochs=2.0, lr_decay_mode="liner", use_label_smooth=True, label_smooth_factor=0.1,
                    lr_init=7e-5, lr_max=0.092, lr_end=7e-6, image_size=260, eval_resize=280, eval_crop=260,
                    normalization="inception", auto_augment="imagenet", color_jitter=0.4, hflip=0.5)
    assert {key: getattr(cfg, key) for key in expected} == expected


def test_scaled_imagenet_yamls_resolution() -> None:
    b0 = load_config(["--config", str(CONFIG_DIR / "efficientnet_b0_imagenet.yaml")])
    b3 = load_config(["--config", str(CONFIG_DIR / "efficientnet_b3_imagenet.yaml")])
    assert (b0.model, b0.image_size, b0.eval_resize, b0.eval_crop) == ("efficientnet_b0", 224, 256, 224)
    assert (b3.model, b3.image_size, b3.eval_resize, b3.eval_crop) == ("efficientnet_b3", 300, 320, 300)


def test_digits_yaml_is_an_offline_cpu_recipe() -> None:
    cfg = load_config(["--config", str(CONFIG_DIR / "digits.yaml")])
    assert (cfg.model, cfg.image_size, cfg.class_num, cfg.device_target) == ("efficientnet_b0", 32, 10, "CPU")
    assert (cfg.eval_resize, cfg.eval_crop, cfg.interpolation, cfg.batch_size) == (32, 32, "bilinear", 64)
    assert cfg.pretrained is None and cfg.download is False


def test_digits_yaml_comments_match_its_values() -> None:
    """Every "N epochs" in digits.yaml's comments is its epoch_size; the image size is 32 px."""
    import re

    text = (CONFIG_DIR / "digits.yaml").read_text()
    comments = " ".join(line.split("#", 1)[1] for line in text.splitlines() if "#" in line)
    cfg = load_config(["--config", str(CONFIG_DIR / "digits.yaml")])
    epochs = re.findall(r"(\d+) epochs", comments)
    assert epochs and set(epochs) == {str(cfg.epoch_size)}, epochs
    assert set(re.findall(r"(\d+) px", comments)) == {str(cfg.image_size)}


# --- defaults and overrides --------------------------------------------------------------------

def test_defaults_without_arguments() -> None:
    cfg = load_config([])
    assert (cfg.model, cfg.batch_size, cfg.epoch_size, cfg.opt, cfg.opt_eps) == ("efficientnet_b0", 128, 30,
                                                                                  "rmsprop", 0.001)
    # A bare run: classes, device and workers from the data and the machine; a from-scratch LR for
    # your own folder, not the ImageNet recipe's 0.092 (configs/efficientnet_*_imagenet.yaml set that).
    assert (cfg.class_num, cfg.device_target, cfg.num_workers) == (None, None, None)
    assert (cfg.lr_max, cfg.lr_decay_mode) == (0.001, "cosine")
    assert cfg.explicit == set()


def test_cli_overrides_yaml_and_records_explicit(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, {"lr_max": 0.5, "batch_size": 32})
    cfg = load_config(["--config", path, "--lr_max", "0.25", "--epoch_size=7", "--amp", "bf16"])
    assert (cfg.lr_max, cfg.batch_size, cfg.epoch_size, cfg.amp) == (0.25, 32, 7, "bf16")
    assert cfg.explicit == {"lr_max", "batch_size", "epoch_size", "amp"}


@pytest.mark.parametrize("word,expected", [("true", True), ("False", False), ("1", True), ("0", False),
                                           ("yes", True), ("no", False)])
def test_bool_words(word: str, expected: bool) -> None:
    assert load_config(["--download", word]).download is expected
    assert load_config([f"--download={word}"]).download is expected


def test_bare_bool_flag_followed_by_another_flag() -> None:
    cfg = load_config(["--sync_bn", "--compile", "--batch_size", "4"])
    assert (cfg.sync_bn, cfg.compile, cfg.batch_size) == (True, True, 4)


def test_null_and_case_insensitive_choice() -> None:
    cfg = load_config(["--image_size", "null", "--device_target", "cpu", "--channels_last", "none",
                       "--interpolation", "BICUBIC"])
    assert (cfg.image_size, cfg.device_target, cfg.channels_last, cfg.interpolation) == (None, "CPU", None, "bicubic")


def test_float_without_dot_in_yaml(tmp_path: Path) -> None:
    # PyYAML reads 1e-5 (no dot) as a string; it must still mean the number.
    cfg = load_config(["--config", write_yaml(tmp_path, "weight_decay: 1e-5\nlr_end: 3\n")])
    assert cfg.weight_decay == 1e-5 and cfg.lr_end == 3.0 and isinstance(cfg.lr_end, float)


def test_progressive_literal_on_cli() -> None:
    cfg = load_config(["--progressive", "[{epochs: 2, image_size: 128}, {epochs: 3, image_size: 160, mixup: 0.2}]"])
    assert cfg.progressive == [{"epochs": 2, "image_size": 128}, {"epochs": 3, "image_size": 160, "mixup": 0.2}]
    assert progressive_stage(cfg.progressive, 1)["image_size"] == 128
    assert progressive_stage(cfg.progressive, 2)["image_size"] == 160
    assert progressive_stage(cfg.progressive, 99)["image_size"] == 160  # last stage runs to the end
    assert progressive_stage(None, 0) is None


def test_defaults_file_used_only_without_config(tmp_path: Path) -> None:
    default = write_yaml(tmp_path, {"batch_size": 8}, "default.yaml")
    other = write_yaml(tmp_path, {"batch_size": 16}, "other.yaml")
    assert load_config([], defaults_file=default).batch_size == 8
    assert load_config(["--config", other], defaults_file=default).batch_size == 16


# --- errors ------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv,message", [
    (["--lr_mx", "1"], "unknown config key 'lr_mx' on the command line; did you mean 'lr_max'?"),
    (["--lr_decay_mode", "foo"], "config key 'lr_decay_mode': 'foo' is not one of linear, liner, cosine, steps, "
                                 "poly, exponential, constant"),
    (["--batch_size", "-4"], "config key 'batch_size': -4 is out of range; allowed ≥ 1"),
    (["--batch_size", "abc"], "config key 'batch_size': 'abc' is not an integer"),
    (["--batch_size", "2.5"], "config key 'batch_size': '2.5' is not an integer"),
    (["--val_split", "1.0"], "config key 'val_split': 1.0 is out of range; allowed 0 ≤ value < 1"),
    (["--lr_max", "0"], "config key 'lr_max': 0.0 is out of range; allowed > 0"),
    (["--seed", str(2**64)], f"config key 'seed': {2**64} is out of range; allowed 0 ≤ value ≤ 4294967295"),
    (["--image_size", "10000"], "config key 'image_size': 10000 is out of range; allowed 1 ≤ value ≤ 8192"),
    (["--lr_max", "nan"], "config key 'lr_max': 'nan' is not a finite number"),
    (["--download", "maybe"], "config key 'download': 'maybe' is not a boolean (true/false, 1/0, yes/no)"),
    (["--model", "resnet50"], "config key 'model': 'resnet50' is not one of " + ", ".join(MODEL_NAMES)),
    (["--batch_size", "null"], "config key 'batch_size': 'null' is not an integer"),
    (["--eval_resize", "200", "--eval_crop", "224"], "config key 'eval_crop': 224 is larger than eval_resize 200; "
                                                     "the crop must fit inside the resized image"),
    (["--batch_size"], "config key 'batch_size': --batch_size needs a value"),
    (["train"], "unexpected argument 'train'; options look like --key value"),
    (["--progressive", "[{epochs: 2, size: 64}]"], "config key 'progressive', stage 1: unknown key 'size'; allowed "
                                                   "epochs, image_size, dropout, randaug_magnitude, mixup"),
    (["--progressive", "[{image_size: 64}]"], "config key 'progressive', stage 1: missing 'epochs'"),
    (["--progressive", "[{epochs: 1}, {epochs: 0}]"], "config key 'progressive', stage 2: 'epochs': 0 is out of "
                                                      "range; allowed ≥ 1"),
    (["--progressive", "[1, 2]"], "config key 'progressive', stage 1: 1 is not a mapping"),
    (["--opt", "sgd", "--momentum", "0"], "config key 'nesterov': Nesterov SGD needs momentum > 0; "
                                          "set --momentum or --nesterov false"),
])
def test_cli_errors_name_the_key(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(argv)
    assert str(info.value) == message


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=f"config file '{missing}' does not exist"):
        load_config(["--config", str(missing)])
    with pytest.raises(ConfigError, match=f"config file '{tmp_path}' is a folder; give a .yaml file"):
        load_config(["--config", str(tmp_path)])


@pytest.mark.parametrize("text,message", [
    ("batch_sise: 3\n", "unknown config key 'batch_sise' in '{path}'; did you mean 'batch_size'?"),
    ("- a\n- b\n", "config file '{path}' must be a mapping of key: value, not a list"),
    ("epoch_size: 350.0\n", "config key 'epoch_size': 350.0 is not an integer"),
    ("model: 5\n", "config key 'model': 5 is not a string"),
    ("lr_max: [1, 2]\n", "config key 'lr_max': [1, 2] is not a finite number"),
    ("batch_size: 4\n  bad: [\n", "config file '{path}' is not valid YAML at line 2"),
])
def test_yaml_errors(tmp_path: Path, text: str, message: str) -> None:
    path = write_yaml(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(["--config", path])
    assert str(info.value) == message.format(path=path)


def test_direct_construction_is_validated() -> None:
    with pytest.raises(ConfigError, match="config key 'num_workers': -1 is out of range"):
        Config(num_workers=-1)


# --- serialisation -----------------------------------------------------------------------------

def test_round_trip_to_dict_from_dict_yaml_json(tmp_path: Path) -> None:
    cfg = load_config(["--config", str(CONFIG_DIR / "efficientnet_b2_imagenet.yaml"), "--progressive",
                       "[{epochs: 100, image_size: 192, dropout: 0.1}]", "--channels_last", "false"])
    data = cfg.to_dict()
    assert list(data) == list(CONFIG_KEYS)
    assert json.loads(json.dumps(data)) == data
    assert Config.from_dict(data) == cfg
    assert Config.from_dict(yaml.safe_load(cfg.to_yaml())) == cfg
    saved = cfg.save(tmp_path / "run" / "config.yaml")
    reloaded = load_config(["--config", str(saved)])
    assert reloaded == cfg and reloaded.explicit == set(CONFIG_KEYS)
    assert Config.from_dict({"batch_size": 3}, explicit={"batch_size"}).explicit == {"batch_size"}
    with pytest.raises(ConfigError, match="unknown config key 'bogus' in config dict"):
        Config.from_dict({"bogus": 1})


def test_markdown_table_has_a_row_per_key() -> None:
    lines = markdown_table().splitlines()
    assert lines[0] == "| key | type | default | allowed | description |"
    rows = [line for line in lines[2:] if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == list(CONFIG_KEYS)
    assert "| `lr_decay_mode` | str | `cosine` | one of linear, liner, cosine, steps, poly, exponential, " \
           "constant |" in markdown_table()
    modelzoo_keys = {"class_num", "batch_size", "epoch_size", "lr_init", "lr_max", "lr_end", "warmup_epochs",
                     "lr_decay_mode", "opt", "opt_eps", "momentum", "weight_decay", "use_label_smooth",
                     "label_smooth_factor", "loss_scale", "save_checkpoint", "save_checkpoint_epochs",
                     "keep_checkpoint_max", "save_checkpoint_path"}
    assert modelzoo_keys <= set(CONFIG_KEYS)


CONFIG_DOC = "docs/config.md"
TABLE_START = "<!-- config-table:start"
TABLE_END = "<!-- config-table:end -->"


def test_docs_config_table_is_the_generated_one() -> None:
    """docs/config.md's key table is `python -m src.config --markdown`, character for character."""
    doc = (REPO_ROOT / CONFIG_DOC).read_text(encoding="utf-8")
    assert doc.count(TABLE_START) == 1 and doc.count(TABLE_END) == 1
    start = doc.index("\n", doc.index(TABLE_START)) + 1
    in_doc = doc[start:doc.index(TABLE_END)]
    generated = markdown_table() + "\n"  # what `python -m src.config --markdown` prints (next test)
    assert in_doc == generated, (
        f"{CONFIG_DOC}'s config table is out of date: replace the lines between the config-table markers "
        "with the output of `python -m src.config --markdown`")


def test_readme_links_the_config_table_and_holds_no_copy() -> None:
    """One table to keep in step: the README links docs/config.md instead of carrying a second copy."""
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert f"]({CONFIG_DOC})" in readme and TABLE_START not in readme


def test_module_entry_point_markdown_and_error_exit() -> None:
    ok = subprocess.run([sys.executable, "-m", "src.config", "--markdown"], cwd=REPO_ROOT, capture_output=True,
                        text=True, check=False)
    assert ok.returncode == 0 and ok.stdout.count("\n| `") == len(CONFIG_KEYS)
    assert ok.stdout == markdown_table() + "\n"
    bad = subprocess.run([sys.executable, "-m", "src.config", "--batch_size", "-1"], cwd=REPO_ROOT,
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 2
    assert bad.stderr == "error: config key 'batch_size': -1 is out of range; allowed ≥ 1\n"


# --- fine-tune defaults ------------------------------------------------------------------------

@pytest.mark.parametrize("images,expected", [
    (500, (2e-4, 6, 16, 0.3)),
    (999, (2e-4, 6, 16, 0.3)),
    (1000, (2e-4, 4, 32, 0.2)),
    (19_999, (3e-4, 3, 64, 0.15)),
    (50_000, (3e-4, 3, 64, 0.15)),
])
def test_finetune_tiers(images: int, expected: tuple) -> None:
    cfg = load_config([])
    apply_finetune_defaults(cfg, images)
    assert (cfg.lr_max, cfg.epoch_size, cfg.batch_size, cfg.dropout) == expected


def test_finetune_keeps_explicit_keys_and_explains(tmp_path: Path) -> None:
    cfg = load_config(["--config", write_yaml(tmp_path, {"lr_max": 0.01}), "--batch_size", "8"])
    lines = apply_finetune_defaults(cfg, 1500)
    assert (cfg.lr_max, cfg.epoch_size, cfg.batch_size, cfg.dropout) == (0.01, 4, 8, 0.2)
    assert lines == ["finetune_auto: 1,500 training images (1,000 to 4,999) -> epoch_size 4, dropout 0.2",
                     "finetune_auto: kept values you set: lr_max 0.01, batch_size 8"]


def test_finetune_yaml_leaves_the_auto_keys_to_the_picker() -> None:
    cfg = load_config(["--config", str(CONFIG_DIR / "finetune.yaml")])
    assert cfg.finetune_auto and cfg.pretrained == "imagenet"
    assert not {"lr_max", "epoch_size", "batch_size", "dropout"} & cfg.explicit
    assert cfg.linear_probe and cfg.freeze_bn  # LP-FT on frozen BatchNorm statistics: the recipe's core
    apply_finetune_defaults(cfg, 3000)
    assert (cfg.lr_max, cfg.epoch_size, cfg.batch_size, cfg.dropout) == (2e-4, 4, 32, 0.2)


def test_finetune_yaml_light_augment_is_mild_crops_without_randaugment() -> None:
    """finetune.yaml says "flips + mild crops (25-100% of the image) + colour jitter 0.1"."""
    cfg = load_config(["--config", str(CONFIG_DIR / "finetune.yaml")])
    aug = resolve_augment(cfg.to_dict(), cfg.explicit)
    assert (aug.augment, aug.crop_scale_min, aug.hflip, aug.color_jitter) == ("light", 0.25, 0.5, 0.1)
    assert (aug.auto_augment, aug.random_erasing) == ("none", 0.0)
    # a crop_scale_min you set wins over the preset's
    cfg = load_config(["--augment", "light", "--crop_scale_min", "0.08"])
    assert resolve_augment(cfg.to_dict(), cfg.explicit).crop_scale_min == 0.08


def test_help_lists_every_key_and_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        load_config(["--lr_max", "0.1", "--help"])
    assert info.value.code == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]]
    assert listed == [f"--{key}" for key in CONFIG_KEYS]
