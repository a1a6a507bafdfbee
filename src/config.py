"""One validated configuration object for train.py, eval.py and export.py.

Every key is declared once below with its type, default, allowed values and a one-line help, so the
YAML loader, the ``--key value`` command line, the error messages and the README table
(``python -m src.config --markdown``) all come from the same schema and cannot drift apart.
Key names follow the MindSpore ModelZoo EfficientNet recipe (class_num, epoch_size, lr_max, ...)
so its YAML files read the same here.

Precedence: schema defaults < ``--config FILE`` (YAML) < ``--key value`` on the command line.
"""

from __future__ import annotations

import difflib
import math
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable

import yaml

from src.models.effnet import list_models
from src.models.layers import PADDINGS
from src.common.preprocess import MAX_IMAGE_SIZE
from src.common.errors import InputError, report_error

MODEL_NAMES: tuple[str, ...] = tuple(list_models())  # the zoo table's order: B0-B7, V2-S/M/L, Lite0-4
LR_DECAY_MODES = ("linear", "liner", "cosine", "steps", "poly", "exponential", "constant")
# RandAugment magnitudes are bin indices 0..30 (torchvision's num_magnitude_bins = 31).
RANDAUG_MAX_MAGNITUDE = 30
MAX_SEED = 2**32 - 1  # numpy's and the DataLoader workers' seeds are 32-bit
TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")
NULL_WORDS = ("none", "null", "~", "")


class ConfigError(InputError):
    """A config file or flag is wrong; the message names the key and what is allowed."""


@dataclass(frozen=True)
class KeySpec:
    """Declarative description of one key: drives parsing, validation and the README table."""

    kind: str  # "int" | "float" | "str" | "bool" | "list"
    help: str
    choices: tuple[str, ...] | None = None
    low: float | None = None  # inclusive lower bound
    high: float | None = None  # upper bound, inclusive unless high_open
    high_open: bool = False
    low_open: bool = False  # True: value must be > low
    nullable: bool = False

    def type_name(self) -> str:
        name = {"int": "int", "float": "float", "str": "str", "bool": "bool", "list": "list"}[self.kind]
        return f"{name} or null" if self.nullable else name

    def allowed(self) -> str:
        """Human-readable allowed values, used in error messages and the markdown table."""
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.kind == "bool":
            return "true / false"
        if self.kind == "list":
            return "list of stage mappings"
        low = None if self.low is None else f"{_fmt(self.low)} {'<' if self.low_open else '≤'} "
        high = None if self.high is None else f" {'<' if self.high_open else '≤'} {_fmt(self.high)}"
        if low and high:
            return f"{low}value{high}"
        if low:
            return f"{'>' if self.low_open else '≥'} {_fmt(self.low)}"
        if high:
            return f"value{high}"
        return "any"


def _fmt(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else repr(number)


def _key(default: Any, kind: str, help: str, **spec: Any) -> Any:
    """A dataclass field carrying its KeySpec; keeps the Config body one line per key."""
    return field(default=default, metadata={"spec": KeySpec(kind, help, **spec)})


def _nonneg_int(default: int, help: str, **spec: Any) -> Any:
    return _key(default, "int", help, low=0, **spec)


def _pos_int(default: int | None, help: str, **spec: Any) -> Any:
    return _key(default, "int", help, low=1, **spec)


def _fraction(default: float | None, help: str, **spec: Any) -> Any:
    """A probability-like float in [0, 1)."""
    return _key(default, "float", help, low=0, high=1, high_open=True, **spec)


@dataclass
class Config:
    """Every setting of a run. Construct with load_config(); direct construction is validated too."""

    # --- model and data ---
    model: str = _key("efficientnet_b0", "str", "network variant", choices=MODEL_NAMES)
    class_num: int | None = _nonneg_int(None, "number of classes; 0 or null = number of class folders", nullable=True)
    dataset: str = _key("folder", "str", "dataset type: image folders, torchvision CIFAR or WebDataset tar shards",
                        choices=("folder", "cifar10", "cifar100", "wds"))
    dataset_path: str | None = _key(None, "str", "dataset root (train/ and val/ class folders) or CIFAR download dir",
                                    nullable=True)
    val_split: float = _fraction(0.0, "with no DIR/val: fraction of the training images held out for validation "
                                      "(0 = none); DIR/val, when it exists, is used instead")
    download: bool = _key(False, "bool", "download CIFAR into dataset_path if missing")
    image_size: int | None = _pos_int(None, "training crop size; null = the variant's train size", nullable=True,
                                      high=MAX_IMAGE_SIZE)
    eval_resize: int | None = _pos_int(None, "eval: resize shorter side to this; null = derived", nullable=True)
    eval_crop: int | None = _pos_int(None, "eval: center crop size; null = derived", nullable=True)
    interpolation: str | None = _key(None, "str", "resize interpolation; null = the variant's",
                                     choices=("bilinear", "bicubic"), nullable=True)
    normalization: str = _key("variant", "str", "input normalisation; inception = [-1, 1] (mean = std = 0.5)",
                              choices=("variant", "imagenet", "inception"))
    batch_size: int = _pos_int(128, "training batch size per device (unset: smaller when the data has fewer images)")
    eval_batch_size: int | None = _pos_int(None, "evaluation batch size per device; null = batch_size", nullable=True)
    epoch_size: int = _pos_int(30, "number of training epochs (the ImageNet recipes in configs/ set 350)")
    num_workers: int | None = _nonneg_int(None, "data loader worker processes per device; null = min(8, CPUs per "
                                                "process)", nullable=True)
    seed: int = _nonneg_int(1, "random seed (per-rank offsets are added)", high=MAX_SEED)
    device_target: str | None = _key(None, "str", "device to run on; null = GPU when CUDA is available, else CPU",
                                     choices=("GPU", "CPU"), nullable=True)

    # --- optimiser ---
    opt: str = _key("rmsprop", "str", "optimizer; rmsprop is TensorFlow-style (eps inside sqrt)",
                    choices=("rmsprop", "sgd", "adamw"))
    opt_eps: float = _key(0.001, "float", "optimizer epsilon (TF RMSProp 1e-3; use 1e-8 for adamw)", low=0, low_open=True)
    momentum: float = _fraction(0.9, "momentum (rmsprop, sgd)")
    rmsprop_decay: float = _fraction(0.9, "RMSProp mean-square decay (alpha)")
    weight_decay: float = _key(1e-5, "float", "weight decay (L2; decoupled for adamw); never on BN parameters or biases",
                                low=0)
    nesterov: bool = _key(True, "bool", "Nesterov momentum (sgd only)")

    # --- learning rate ---
    # Defaults: a from-scratch run on your own folder (TF-RMSProp at batch 128, measured on the digits
    # demo); the ImageNet recipes in configs/ set their own (e.g. lr_max 0.092 at 8 x 128).
    lr_init: float = _key(1e-4, "float", "learning rate at the start of warmup", low=0)
    lr_max: float = _key(1e-3, "float", "peak learning rate after warmup", low=0, low_open=True)
    lr_end: float = _key(1e-5, "float", "final learning rate (floor of the decay)", low=0)
    warmup_epochs: float = _key(3.0, "float", "linear warmup length in epochs", low=0)
    lr_decay_mode: str = _key("cosine", "str", "per-step decay after warmup ('liner' = linear, ModelZoo spelling)",
                              choices=LR_DECAY_MODES)
    lr_decay_rate: float = _key(0.97, "float", "exponential: multiply the LR by this every lr_decay_epochs",
                                low=0, low_open=True, high=1)
    lr_decay_epochs: float = _key(2.4, "float", "exponential: epochs between decays", low=0, low_open=True)
    lr_power: float = _key(2.0, "float", "poly: power of the decay", low=0, low_open=True)
    lr_scheduler: str = _key("step", "str", "step = per-step lr_decay_mode; plateau / cosine_restarts are per epoch",
                             choices=("step", "plateau", "cosine_restarts"))
    plateau_factor: float = _key(0.1, "float", "plateau: LR multiplier when validation stalls",
                                 low=0, low_open=True, high=1, high_open=True)
    plateau_patience: int = _nonneg_int(3, "plateau: evaluations without improvement before reducing")
    restart_epochs: int = _pos_int(10, "cosine_restarts: length of the first cycle in epochs")
    restart_mult: int = _pos_int(1, "cosine_restarts: cycle length multiplier after each restart")
    scale_lr: bool = _key(False, "bool", "scale lr_init/lr_max/lr_end by global batch / lr_base_batch")
    lr_base_batch: int = _pos_int(256, "reference global batch for scale_lr")

    # --- loss and precision ---
    use_label_smooth: bool = _key(True, "bool", "label smoothing (on = 1 - eps, off = eps / (C - 1))")
    label_smooth_factor: float = _fraction(0.1, "label smoothing eps")
    loss_scale: float = _key(0.0, "float", "fp16 loss scale; 0 = dynamic (GradScaler), > 0 = static", low=0)
    amp: str = _key("none", "str", "mixed precision autocast dtype", choices=("none", "fp16", "bf16"))
    ema_decay: float = _fraction(0.0, "weight EMA decay (e.g. 0.9999); 0 = off")
    ema_warmup: bool = _key(True, "bool", "EMA decay warms up as (1 + n) / (10 + n)")

    # --- checkpoints ---
    save_checkpoint: bool = _key(True, "bool", "write checkpoints")
    save_checkpoint_epochs: int = _pos_int(1, "save every N epochs")
    save_checkpoint_steps: int = _nonneg_int(0, "also save every N steps; 0 = off")
    keep_checkpoint_max: int = _pos_int(5, "keep the newest N periodic checkpoints")
    save_checkpoint_path: str = _key("./runs", "str", "on the command line: the run folder itself; else (default, "
                                     "YAML) where a new <model>_<date>_<time> run folder is made")
    overwrite: bool = _key(False, "bool", "reuse a --save_checkpoint_path folder holding another run (its run "
                                          "files are deleted first)")
    resume: str | None = _key(None, "str", "checkpoint to resume from (weights, optimizer, LR, EMA, RNG)", nullable=True)
    checkpoint_path: str | None = _key(None, "str", "checkpoint to evaluate / export / start from (weights only)",
                                       nullable=True)
    pretrained: str | None = _key(None, "str", "initial weights: imagenet, a registry name (python -m src.models "
                                  "--weights), hf-hub:OWNER/REPO or a file path", nullable=True)
    freeze_backbone: bool = _key(False, "bool", "train only the classifier")
    linear_probe: bool = _key(False, "bool", "before fine-tuning, fit the classifier on frozen features of the training "
                              "images (logistic regression, L2 by cross-validation: LP-FT); needs --pretrained")
    freeze_bn: bool = _key(False, "bool", "BatchNorm keeps the pretrained running statistics while its scale and "
                           "shift train (eval-mode BN: for small batches and small data)")
    padding: str = _key("auto", "str", "conv padding: same = TensorFlow's (Google's checkpoints), symmetric = "
                        "PyTorch's; auto = what the pretrained weights need", choices=("auto", *PADDINGS))
    bn_eps: float | None = _key(None, "float", "BatchNorm epsilon; null = the pretrained weights' or the variant's",
                                low=0, low_open=True, nullable=True)

    # --- training loop ---
    accumulate_grad_batches: int = _pos_int(1, "batches per optimizer step")
    grad_clip: float = _key(0.0, "float", "max gradient norm; 0 = off", low=0)
    dropout: float | None = _fraction(None, "classifier dropout; null = the variant's", nullable=True)
    drop_path_rate: float = _fraction(0.2, "stochastic depth rate of the last block")

    # --- augmentation ---
    augment: str = _key("custom", "str", "named augmentation strength; custom = use the keys below as given",
                        choices=("none", "light", "moderate", "strong", "custom"))
    auto_augment: str = _key("none", "str", "automatic augmentation policy", choices=("none", "imagenet", "randaugment"))
    randaug_num_ops: int = _nonneg_int(2, "RandAugment: operations per image")
    randaug_magnitude: int = _nonneg_int(9, "RandAugment: magnitude", high=RANDAUG_MAX_MAGNITUDE)
    color_jitter: float = _key(0.0, "float", "brightness/contrast/saturation jitter strength; 0 = off", low=0)
    rotation: float = _key(0.0, "float", "random rotation range in degrees; 0 = off", low=0, high=180)
    random_erasing: float = _key(0.0, "float", "random erasing probability", low=0, high=1)
    hflip: float = _key(0.5, "float", "horizontal flip probability", low=0, high=1)
    crop_scale_min: float = _key(0.08, "float", "RandomResizedCrop minimum area fraction", low=0, low_open=True, high=1)
    mixup: float = _key(0.0, "float", "mixup alpha; 0 = off", low=0)
    cutmix: float = _key(0.0, "float", "cutmix alpha; 0 = off", low=0)

    # --- evaluation, logging, performance ---
    eval_interval: int = _pos_int(1, "validate every N epochs")
    early_stop_patience: int = _nonneg_int(0, "stop after N validations without improvement; 0 = off")
    log_interval: int = _pos_int(100, "log every N steps")
    channels_last: bool | None = _key(None, "bool", "channels_last (NHWC) memory format; null = on (GPU and CPU)",
                                      nullable=True)
    compile: bool = _key(False, "bool", "torch.compile the model")
    sync_bn: bool = _key(False, "bool", "synchronise BatchNorm statistics across devices")
    grad_checkpointing: bool = _key(False, "bool", "recompute block activations to save memory")
    progressive: list | None = _key(None, "list", "progressive resizing stages: list of {epochs, image_size, "
                                    "dropout, randaug_magnitude, mixup}; the last stage runs to the end",
                                    nullable=True)
    qat: bool = _key(False, "bool", "quantization-aware training: fake-quantized int8 fine-tuning of --pretrained "
                     "weights at a fixed image_size (src/models/qat.py); export.py then writes an int8 ONNX file")
    max_nonfinite_steps: int = _pos_int(20, "abort after N consecutive steps with a non-finite loss")
    finetune_auto: bool = _key(False, "bool", "pick lr_max/epoch_size/batch_size/dropout from the dataset size")
    dist_timeout: float = _key(30.0, "float", "minutes a collective waits for a process that stopped answering "
                               "before the run fails (naming it) and, under torchrun, restarts", low=0, low_open=True)
    dist_backend: str | None = _key(None, "str", "torch.distributed backend; null = nccl on GPU, gloo on CPU",
                                    choices=("nccl", "gloo"), nullable=True)

    explicit: set[str] = field(default_factory=set, init=False, repr=False, compare=False)
    command_line: set[str] = field(default_factory=set, init=False, repr=False, compare=False)  # keys given as flags
    run_dir: str | None = field(default=None, init=False, repr=False, compare=False)  # resolved by train.py

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Coerce every key to its declared type and check ranges and cross-key rules."""
        for name, spec in _SPECS.items():
            setattr(self, name, _coerce(name, spec, getattr(self, name)))
        if self.eval_resize is not None and self.eval_crop is not None and self.eval_crop > self.eval_resize:
            raise ConfigError(f"config key 'eval_crop': {self.eval_crop} is larger than eval_resize "
                              f"{self.eval_resize}; the crop must fit inside the resized image")
        if self.opt == "sgd" and self.nesterov and self.momentum == 0:
            raise ConfigError("config key 'nesterov': Nesterov SGD needs momentum > 0; "
                              "set --momentum or --nesterov false")

    def to_dict(self) -> dict[str, Any]:
        """Plain data (str/int/float/bool/None/list/dict) for JSON, YAML and checkpoints."""
        return {name: _plain(getattr(self, name)) for name in _SPECS}

    @classmethod
    def from_dict(cls, data: dict[str, Any], explicit: Iterable[str] = ()) -> "Config":
        """Rebuild (and validate) a Config, e.g. from a checkpoint; missing keys take defaults."""
        _reject_unknown(data, "config dict")
        cfg = cls(**data)
        cfg.explicit = set(explicit)
        return cfg

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)

    def save(self, path: str | Path) -> Path:
        """Write the resolved config so a run can be repeated with ``--config <run>/config.yaml``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_yaml(), encoding="utf-8")
        return path


_SPECS: dict[str, KeySpec] = {f.name: f.metadata["spec"] for f in fields(Config) if "spec" in f.metadata}
CONFIG_KEYS: tuple[str, ...] = tuple(_SPECS)

# Keys a progressive-resizing stage may set; values are validated with the matching Config key's spec.
STAGE_KEYS: dict[str, KeySpec] = {
    "epochs": KeySpec("int", "epochs in this stage", low=1),
    "image_size": KeySpec("int", _SPECS["image_size"].help, low=1),
    "dropout": KeySpec("float", _SPECS["dropout"].help, low=0, high=1, high_open=True),
    "randaug_magnitude": _SPECS["randaug_magnitude"],
    "mixup": _SPECS["mixup"],
}


def _plain(value: Any) -> Any:
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _bad(name: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(f"config key '{name}': {value!r} is not {expected}")


def _coerce(name: str, spec: KeySpec, value: Any) -> Any:
    """Turn a YAML / CLI / Python value into the declared type, or raise ConfigError naming the key."""
    if isinstance(value, str) and spec.nullable and value.strip().lower() in NULL_WORDS:
        value = None
    if value is None:
        if spec.nullable:
            return None
        raise ConfigError(f"config key '{name}': null is not allowed; expected {spec.kind} ({spec.allowed()})")
    if spec.kind == "bool":
        return _coerce_bool(name, value)
    if spec.kind == "int":
        value = _coerce_int(name, value)
    elif spec.kind == "float":
        value = _coerce_float(name, value)
    elif spec.kind == "str":
        return _coerce_str(name, spec, value)
    elif spec.kind == "list":
        return _coerce_stages(name, value)
    _check_range(name, spec, value)
    return value


def _coerce_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
    raise _bad(name, value, "a boolean (true/false, 1/0, yes/no)")


def _coerce_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise _bad(name, value, "an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise _bad(name, value, "an integer")


def _coerce_float(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise _bad(name, value, "a number")
    number: float | None = None
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):  # YAML 1.1 reads "1e-5" (no dot) as a string
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    if number is None or not math.isfinite(number):
        raise _bad(name, value, "a finite number")
    return number


def _coerce_str(name: str, spec: KeySpec, value: Any) -> str:
    if not isinstance(value, str):
        raise _bad(name, value, "a string")
    if spec.choices is None:
        return value
    for choice in spec.choices:  # accept "gpu" for "GPU" and similar
        if value.strip().lower() == choice.lower():
            return choice
    raise ConfigError(f"config key '{name}': {value!r} is not one of {', '.join(spec.choices)}")


def _check_range(name: str, spec: KeySpec, value: float) -> None:
    too_low = spec.low is not None and (value <= spec.low if spec.low_open else value < spec.low)
    too_high = spec.high is not None and (value >= spec.high if spec.high_open else value > spec.high)
    if too_low or too_high:
        raise ConfigError(f"config key '{name}': {value!r} is out of range; allowed {spec.allowed()}")


def _coerce_stages(name: str, value: Any) -> list[dict[str, Any]]:
    """Validate progressive-resizing stages: a non-empty list of mappings with known keys and 'epochs'."""
    if not isinstance(value, list) or not value:
        raise _bad(name, value, "a non-empty list of stage mappings")
    stages = []
    for number, stage in enumerate(value, start=1):
        prefix = f"config key '{name}', stage {number}"
        if not isinstance(stage, dict):
            raise ConfigError(f"{prefix}: {stage!r} is not a mapping")
        unknown = sorted(str(key) for key in set(stage) - set(STAGE_KEYS))
        if unknown:
            raise ConfigError(f"{prefix}: unknown key {unknown[0]!r}; allowed {', '.join(STAGE_KEYS)}")
        if "epochs" not in stage:
            raise ConfigError(f"{prefix}: missing 'epochs'")
        try:
            stages.append({key: _coerce(key, STAGE_KEYS[key], stage[key]) for key in STAGE_KEYS if key in stage})
        except ConfigError as exc:
            raise ConfigError(f"{prefix}: {str(exc).removeprefix('config key ')}") from None
    return stages


def _suggest(name: str) -> str:
    close = difflib.get_close_matches(name, CONFIG_KEYS, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else "; run `python -m src.config --markdown` for every key"


def _reject_unknown(data: dict[str, Any], source: str) -> None:
    for name in data:
        if name not in _SPECS:
            raise ConfigError(f"unknown config key {name!r} in {source}{_suggest(str(name))}")


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a flat YAML mapping of config keys; unknown keys are errors (typos must not pass silently)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file '{path}' is a folder; give a .yaml file (see configs/)")
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file '{path}' is not valid YAML{where}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file '{path}' cannot be read: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must be a mapping of key: value, not a {type(data).__name__}")
    _reject_unknown(data, f"'{path}'")
    return data


def read_explicit(path: str | Path | None, keys: Iterable[str]) -> dict[str, Any]:
    """The validated values of ``keys`` that a YAML sets explicitly, for eval.py and export.py: schema
    defaults are not filled in, so a key the YAML leaves out never overrides what a checkpoint says.
    Every key of the file is validated (ConfigError names a bad one), used or not."""
    if path is None:
        return {}
    values = read_yaml(path)
    cfg = Config(**values)
    return {key: getattr(cfg, key) for key in keys if key in values}


def parse_cli(argv: list[str]) -> tuple[str | None, dict[str, Any]]:
    """Split ``--config FILE`` from ``--key value`` / ``--key=value`` / bare ``--flag`` overrides."""
    config_file: str | None = None
    overrides: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        token = argv[i]
        if token in ("-h", "--help"):
            print(usage())
            raise SystemExit(0)
        if not token.startswith("--") or token == "--":
            raise ConfigError(f"unexpected argument {token!r}; options look like --key value")
        name, has_value, text = token[2:].partition("=")
        name = name.replace("-", "_")
        if name != "config" and name not in _SPECS:
            raise ConfigError(f"unknown config key {name!r} on the command line{_suggest(name)}")
        spec = _SPECS.get(name)
        if not has_value:
            following = argv[i + 1] if i + 1 < len(argv) else None
            missing = following is None or (following.startswith("--") and len(following) > 2)
            if missing and spec is not None and spec.kind == "bool":
                text = "true"  # bare --flag
            elif missing:
                raise ConfigError(f"config key '{name}': --{name} needs a value")
            else:
                text = following
                i += 1
        i += 1
        if name == "config":
            if config_file is not None:
                raise ConfigError("--config given more than once; merge the files into one")
            config_file = text
        else:
            overrides[name] = _parse_text(name, spec, text)
    return config_file, overrides


def _parse_text(name: str, spec: KeySpec, text: str) -> Any:
    """Command-line text to a Python value; lists are YAML literals (``"[{epochs: 5, image_size: 128}]"``)."""
    if spec.kind != "list":
        return text
    if text.strip().lower() in NULL_WORDS:
        return None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise ConfigError(f"config key '{name}': {text!r} is not a valid YAML list") from None


def load_config(argv: list[str] | None = None, defaults_file: str | Path | None = None) -> Config:
    """Build the run's Config from ``--config FILE`` and ``--key value`` flags (``sys.argv[1:]`` if None).

    ``defaults_file`` is the YAML used when no ``--config`` is given (an entry point's default recipe).
    ``cfg.explicit`` records the keys set by the YAML file or the command line, so automatic choices
    (apply_finetune_defaults) never override something the user asked for.
    """
    config_file, overrides = parse_cli(list(sys.argv[1:] if argv is None else argv))
    if config_file is None and defaults_file is not None:
        config_file = str(defaults_file)
    values = read_yaml(config_file) if config_file is not None else {}
    values.update(overrides)
    cfg = Config(**values)
    cfg.explicit = set(values)
    cfg.command_line = set(overrides)
    return cfg


def markdown_table() -> str:
    """README table: one row per key with type, default, allowed values and help."""
    rows = ["| key | type | default | allowed | description |", "|---|---|---|---|---|"]
    defaults = Config().to_dict()
    for name, spec in _SPECS.items():
        default = "null" if defaults[name] is None else str(defaults[name]).lower() if spec.kind == "bool" \
            else str(defaults[name])
        rows.append(f"| `{name}` | {spec.type_name()} | `{default}` | {spec.allowed()} | {spec.help} |")
    return "\n".join(rows)


def usage() -> str:
    lines = ["options: --config FILE.yaml, then any key as --key value (or --key=value; bare --flag for booleans)"]
    for name, spec in _SPECS.items():
        lines.append(f"  --{name:<26} {spec.type_name():<13} {spec.help} [{spec.allowed()}]")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m src.config --markdown`` prints the key table; otherwise print the resolved YAML."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--markdown" in argv:
        print(markdown_table())
        return 0
    try:
        print(load_config(argv).to_yaml(), end="")
    except ConfigError as exc:
        return report_error(exc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
