"""``benchmark.py data``: images/s per worker of our train and eval pipelines vs torchvision's chain.

One process decodes and transforms one image at a time, which is exactly a DataLoader worker's
job, so the numbers are *per worker* (multiply by ``num_workers`` for a loader's ceiling). Both
sides read the same generated JPEGs of two kinds: ImageNet-like (500x375) and phone-like
(4000x3000, where full-size decoding dominates).

torchvision's side is what its ImageFolder + the reference recipe run: ``pil_loader``
(``Image.open().convert('RGB')``), then RandomResizedCrop + RandomHorizontalFlip + ToTensor +
Normalize (train) or Resize + CenterCrop + ToTensor + Normalize (eval). Ours returns uint8 and
normalises on the device; to be fair, ours here also pays that normalisation, run on this CPU
per batch of ``BATCH`` (``to_device_normalized``), and both sides pay the collate stack.

Both sides draw crop boxes and flips with the same torch calls in the same order, so with the
same seed they crop the same boxes; the "mean |diff|" column compares the produced pixels
(0..255 levels): 0 for the eval pipeline (same Pillow resize and crop), a few hundredths for
the train crop (torch's resampling arithmetic, never more than one level off Pillow's), and a
few tenths where JPEG draft decoding replaces full-size decoding.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from src.models import default_preprocess
from src.common.preprocess import Preprocess
from src.data.transforms import build_eval_transform, build_train_transform, resolve_augment, to_device_normalized

from .common import MIN_IMAGE_SIZE, format_table, machine_info, paired_rounds

BATCH = 32
SEED = 0
GENERATOR_VERSION = 1  # bump when the generated content changes, so cached files are remade
EXIF_ORIENTATION_TAG, EXIF_MAKE_TAG, EXIF_MODEL_TAG = 0x0112, 0x010F, 0x0110
PHONES_PER_IMAGENET = 4  # --num_images N -> N ImageNet-like + N / 4 phone-like files
NORM_TIMING_ITERS = 5
UINT8_LEVELS = 255.0
# The targets for the train pipeline, ours vs torchvision's chain on the same files.
TARGETS = {("phone", "train"): 3.0, ("imagenet", "train"): 1.2}


@dataclass(frozen=True)
class JpegKind:
    """How one kind of test JPEG is drawn; the detail settings give realistic file sizes
    (ImageNet train JPEGs average ~110 KB, 12 MP phone photos 2.5-4 MB), which matters because
    entropy decoding time grows with the compressed size."""

    name: str
    width: int
    height: int
    quality: int
    detail_shapes: int   # small sharp-edged shapes: the high-frequency content
    texture: float       # std (grey levels) of band-limited luminance texture
    grain: int           # +- per-pixel, per-channel sensor noise
    exif: bool           # phones always write EXIF; its parsing is part of the cost


JPEG_KINDS: dict[str, JpegKind] = {
    "imagenet": JpegKind("imagenet", 500, 375, 90, 600, 12.0, 6, False),
    "phone": JpegKind("phone", 4000, 3000, 92, 300, 8.0, 4, True),
}


def photo_like(width: int, height: int, seed: int, detail_shapes: int, texture: float,
               grain: int) -> Image.Image:
    """A photo-like RGB image: a smooth colour gradient with soft blobs (drawn at 1/8 scale),
    large and small hard-edged shapes, band-limited texture and per-pixel grain."""
    rng = np.random.default_rng(seed)
    sw, sh = max(2, width // 8), max(2, height // 8)
    y, x = np.mgrid[0:sh, 0:sw].astype(np.float32)
    c0, c1 = (rng.uniform(30, 220, 3).astype(np.float32) for _ in range(2))
    angle = rng.uniform(0, 2 * np.pi)
    t = (x / sw - 0.5) * np.cos(angle) + (y / sh - 0.5) * np.sin(angle) + 0.5
    small = c0 + (c1 - c0) * t[..., None]
    for _ in range(16):
        cx, cy = rng.uniform(0, sw), rng.uniform(0, sh)
        r = rng.uniform(0.03, 0.2) * min(sw, sh) + 1
        blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))
        small += blob[..., None] * rng.uniform(-100, 100, 3).astype(np.float32)
    img = Image.fromarray(np.clip(small, 0, 255).astype(np.uint8), "RGB")
    img = img.resize((width, height), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(img)
    big_shapes = int(rng.integers(6, 14))
    for i in range(big_shapes + detail_shapes):
        side = min(width, height) * (rng.uniform(0.05, 0.4) if i < big_shapes else rng.uniform(0.005, 0.04))
        x0, y0 = rng.uniform(-0.1, 1.0) * width, rng.uniform(-0.1, 1.0) * height
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        stretch = rng.uniform(0.5, 1.5)
        kind = int(rng.integers(0, 3))
        if kind == 0:
            draw.ellipse((x0, y0, x0 + side, y0 + side * stretch), fill=colour)
        elif kind == 1:
            draw.rectangle((x0, y0, x0 + side * stretch, y0 + side), fill=colour)
        else:
            draw.polygon([(x0, y0 + side), (x0 + side / 2, y0), (x0 + side, y0 + side * stretch)], fill=colour)
    pixels = np.asarray(img, dtype=np.int16)
    tex = rng.normal(0, texture, (height // 2 + 1, width // 2 + 1)).astype(np.float32)
    tex = np.asarray(Image.fromarray(tex, "F").resize((width, height), Image.Resampling.BILINEAR))
    pixels = pixels + tex[..., None].astype(np.int16)
    pixels += rng.integers(-grain, grain + 1, pixels.shape, dtype=np.int16)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def generate_jpegs(folder: str | os.PathLike, kind: JpegKind, count: int, seed: int = 0) -> list[Path]:
    """``count`` JPEGs of ``kind`` under folder/<kind-geometry-quality>/, reusing files from an
    earlier run (written via a temporary name, so an interrupted run leaves no half files)."""
    sub = Path(folder) / f"{kind.name}-{kind.width}x{kind.height}-q{kind.quality}-v{GENERATOR_VERSION}"
    sub.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = sub / f"{i:04d}.jpg"
        if not path.is_file():
            img = photo_like(kind.width, kind.height, seed * 100_003 + i, kind.detail_shapes,
                             kind.texture, kind.grain)
            extra = {}
            if kind.exif:
                exif = Image.Exif()
                exif[EXIF_MAKE_TAG], exif[EXIF_MODEL_TAG], exif[EXIF_ORIENTATION_TAG] = "bench", "phone", 1
                extra["exif"] = exif
            tmp = path.with_suffix(".tmp")
            img.save(tmp, "JPEG", quality=kind.quality, **extra)
            tmp.replace(path)
        paths.append(path)
    return paths


def parse_geometry(text: str) -> tuple[int, int]:
    """'500x375' -> (500, 375); argparse type."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT like 500x375, got {text!r}") from None
    if w < 8 or h < 8:
        raise argparse.ArgumentTypeError(f"image geometry must be at least 8x8, got {text!r}")
    return w, h


# --------------------------------------------------------------------------------------------
# The pipelines
# --------------------------------------------------------------------------------------------
Pipeline = Callable[[str], torch.Tensor]


@dataclass(frozen=True)
class Pipelines:
    """Per-image callables (path -> CHW tensor); ``normalized`` says which already normalise."""

    train: dict[str, Pipeline]
    eval: dict[str, Pipeline]
    normalized: frozenset[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def build_pipelines(image_size: int, pre: Preprocess, train_interpolation: str) -> Pipelines:
    """Ours and torchvision's train/eval pipelines for one geometry (see module doc)."""
    from torchvision import transforms as tv
    from torchvision.datasets.folder import pil_loader

    modes = {"bilinear": tv.InterpolationMode.BILINEAR, "bicubic": tv.InterpolationMode.BICUBIC}
    normalize = tv.Normalize(pre.mean, pre.std)
    tv_train = tv.Compose([tv.RandomResizedCrop(image_size, interpolation=modes[train_interpolation]),
                           tv.RandomHorizontalFlip(), tv.ToTensor(), normalize])
    tv_eval = tv.Compose([tv.Resize(pre.resize, interpolation=modes[pre.interpolation]),
                          tv.CenterCrop(pre.crop), tv.ToTensor(), normalize])
    # "light" is random resized crop + flip + colour jitter; jitter off and torchvision's crop scale
    # (0.08, light's default is 0.25) to match torchvision's chain box for box.
    light = resolve_augment({"augment": "light", "color_jitter": 0.0, "crop_scale_min": 0.08})
    ours_train = build_train_transform(light, image_size, train_interpolation)
    return Pipelines(
        train={"torchvision": lambda p: tv_train(pil_loader(p)), "ours": ours_train},
        eval={"torchvision": lambda p: tv_eval(pil_loader(p)), "ours": build_eval_transform(pre),
              "ours_draft": build_eval_transform(pre, draft=True)},
        normalized=frozenset({"torchvision"}), mean=pre.mean, std=pre.std,
    )


def make_runner(pipeline: Pipeline, files: Sequence[str], normalize: bool, mean: Sequence[float],
                std: Sequence[float], counts: list[int], batch: int = BATCH) -> Callable[[], None]:
    """A call that processes every file as a worker would (per-file seed, collate per ``batch``),
    plus the CPU normalisation of each batch when ``normalize``; appends the number of images
    it returned to ``counts``."""
    def run() -> None:
        done = 0
        for start in range(0, len(files), batch):
            items = []
            for i in range(start, min(start + batch, len(files))):
                torch.manual_seed(SEED + i)
                items.append(pipeline(files[i]))
            x = torch.stack(items)
            if normalize:
                x = to_device_normalized(x, mean, std, "cpu")
            done += x.shape[0]
        counts.append(done)

    return run


def to_uint8_hwc(x: torch.Tensor, normalized: bool, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """A pipeline output as 0..255 int16 (H, W, 3), undoing ToTensor + Normalize when applied."""
    if normalized:
        m = torch.tensor(mean).view(-1, 1, 1)
        s = torch.tensor(std).view(-1, 1, 1)
        x = torch.round((x * s + m) * UINT8_LEVELS).clamp(0, UINT8_LEVELS)
    return x.permute(1, 2, 0).numpy().astype(np.int16)


def mean_abs_diff(ours: Pipeline, theirs: Pipeline, files: Sequence[str], p: Pipelines,
                  ours_name: str) -> tuple[float, int]:
    """Mean |ours - torchvision| in 0..255 levels over all files (same seed per file), and how
    many images were compared. This untimed pass also warms caches for the timed rounds."""
    total, count = 0.0, 0
    for i, path in enumerate(files):
        torch.manual_seed(SEED + i)
        a = to_uint8_hwc(ours(path), ours_name in p.normalized, p.mean, p.std)
        torch.manual_seed(SEED + i)
        b = to_uint8_hwc(theirs(path), True, p.mean, p.std)
        total += float(np.abs(a - b).mean())
        count += 1
    return total / max(count, 1), count


def normalization_ms_per_image(image_size: int, mean: Sequence[float], std: Sequence[float]) -> float:
    """CPU cost of to_device_normalized per image, on a uint8 batch of BATCH (reported alone)."""
    x = torch.randint(0, 256, (BATCH, 3, image_size, image_size), dtype=torch.uint8)
    times = paired_rounds({"norm": lambda: to_device_normalized(x, mean, std, "cpu")},
                          NORM_TIMING_ITERS, 1, torch.device("cpu"))
    return statistics.median(times["norm"]) / BATCH * 1e3


# --------------------------------------------------------------------------------------------
# The mode
# --------------------------------------------------------------------------------------------
def kinds_from_args(args: argparse.Namespace) -> list[tuple[JpegKind, int]]:
    counts = {"imagenet": args.num_images, "phone": max(1, args.num_images // PHONES_PER_IMAGENET)}
    geometry = {"imagenet": args.imagenet_size, "phone": args.phone_size}
    out = []
    for name in args.kinds:
        kind = JPEG_KINDS[name]
        if geometry[name]:
            kind = replace(kind, width=geometry[name][0], height=geometry[name][1])
        out.append((kind, counts[name]))
    return out


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(1)  # a DataLoader worker runs torch with one thread
    pre = default_preprocess(args.model)
    image_size = args.image_size or pre.crop
    pre = pre.at_crop(image_size)
    if args.source == "shards":  # the same JPEGs from files vs tar shards (bench/shard_data.py)
        from .shard_data import run_shards
        return run_shards(args, kinds_from_args(args), generate_jpegs, image_size, BATCH)
    pipes = build_pipelines(image_size, pre, args.train_interpolation)
    data_dir = args.data_dir or os.path.join(tempfile.gettempdir(), "effnet_bench_jpegs")
    cpu = torch.device("cpu")
    results, files_info = [], []
    for kind, count in kinds_from_args(args):
        files = [str(p) for p in generate_jpegs(data_dir, kind, count)]
        mean_kb = statistics.mean(os.path.getsize(f) for f in files) / 1024
        files_info.append(dict(kind=kind.name, width=kind.width, height=kind.height, quality=kind.quality,
                               count=len(files), mean_kb=mean_kb, folder=str(Path(files[0]).parent)))
        print(f"{kind.name}: {len(files)} JPEGs {kind.width}x{kind.height} q{kind.quality}, "
              f"mean {mean_kb:,.0f} KB, in {Path(files[0]).parent}", flush=True)
        for task, table in (("train", pipes.train), ("eval", pipes.eval)):
            diffs = {name: mean_abs_diff(fn, table["torchvision"], files, pipes, name)
                     for name, fn in table.items() if name != "torchvision"}
            counts: dict[str, list[int]] = {name: [] for name in table}
            runners = {name: make_runner(fn, files, name not in pipes.normalized, pipes.mean, pipes.std,
                                         counts[name]) for name, fn in table.items()}
            times = paired_rounds(runners, args.rounds, 1, cpu)
            ref = times["torchvision"]
            for name, t in times.items():
                per_round = min(counts[name])  # every round returns every image, or this shows it
                results.append(dict(
                    kind=kind.name, task=task, impl=name, images=per_round,
                    images_per_sec=per_round / statistics.median(t),
                    speedup_vs_torchvision=statistics.median(r / o for r, o in zip(ref, t)),
                    speedup_per_round=[r / o for r, o in zip(ref, t)],
                    # torchvision is the reference: no difference is measured for it (None)
                    mean_abs_diff=diffs[name][0] if name in diffs else None,
                    compared_images=diffs[name][1] if name in diffs else None,
                ))
    targets = []
    for (kind_name, task), required in TARGETS.items():
        row = next((r for r in results if (r["kind"], r["task"], r["impl"]) == (kind_name, task, "ours")), None)
        if row is not None:
            targets.append(dict(kind=kind_name, task=task, required=required,
                                measured=row["speedup_vs_torchvision"],
                                met=row["speedup_vs_torchvision"] >= required))
    return dict(mode="data", model=args.model, image_size=image_size, preprocess=pre.to_dict(),
                train_interpolation=args.train_interpolation, batch=BATCH, rounds=args.rounds,
                device="cpu", per="worker (one process, torch threads = 1)", files=files_info,
                norm_ms_per_image=normalization_ms_per_image(image_size, pipes.mean, pipes.std),
                machine=machine_info(), results=results, targets=targets)


IMPL_LABELS = {
    "torchvision": "torchvision (pil_loader + transforms)",
    "ours": "ours (uint8 + CPU normalise)",
    "ours_draft": "ours, draft decode (uint8 + CPU normalise)",
}


def print_report(payload: dict) -> None:
    if payload.get("source") == "shards":
        from .shard_data import print_report as print_shard_report
        return print_shard_report(payload)
    m = payload["machine"]
    print(f"data pipelines, images/s per worker: crop {payload['image_size']} px, train "
          f"{payload['train_interpolation']}, eval {payload['preprocess']['resize']}->"
          f"{payload['preprocess']['crop']} {payload['preprocess']['interpolation']}; "
          f"{m['cpu']}, 1 thread")
    print("CPU-side pipeline (what a DataLoader worker runs); ours also pays the normalisation it "
          f"leaves to the device: {payload['norm_ms_per_image']:.3f} ms/image on this CPU, batch {payload['batch']}")
    sizes = {f["kind"]: f"{f['width']}x{f['height']}, {f['mean_kb']:,.0f} KB" for f in payload["files"]}
    rows = [[f"{r['kind']} ({sizes[r['kind']]})", r["task"], IMPL_LABELS.get(r["impl"], r["impl"]),
             r["images_per_sec"], f"{r['speedup_vs_torchvision']:.2f}x ({min(r['speedup_per_round']):.2f}-"
             f"{max(r['speedup_per_round']):.2f})", "-" if r["mean_abs_diff"] is None else f"{r['mean_abs_diff']:.2f}"]
            for r in payload["results"]]
    print(format_table(["JPEGs", "pipeline", "impl", "images/s per worker",
                        f"vs torchvision: median (range) of {payload['rounds']} rounds",
                        "mean |diff| vs torchvision (0-255)"], rows))
    for t in payload["targets"]:
        print(f"target {t['kind']} {t['task']}: >= {t['required']:.1f}x, measured {t['measured']:.2f}x "
              f"-> {'met' if t['met'] else 'NOT met'}")


# benchmark.py rejects smaller values before the run (common.check_args)
MINIMUMS = {"image_size": MIN_IMAGE_SIZE, "num_images": 1, "rounds": 1}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="efficientnet_b0", help="eval resize/crop/interpolation and mean/std")
    p.add_argument("--image_size", type=int, default=None,
                   help="crop size (default: the variant's eval crop, 224 for B0)")
    p.add_argument("--train_interpolation", default="bilinear", choices=("bilinear", "bicubic"),
                   help="both sides' RandomResizedCrop resampling (torchvision's default: bilinear)")
    p.add_argument("--num_images", type=int, default=64,
                   help=f"ImageNet-like files; phone-like get 1/{PHONES_PER_IMAGENET} of it (64 -> 64 + 16)")
    p.add_argument("--kinds", nargs="+", default=list(JPEG_KINDS), choices=list(JPEG_KINDS))
    p.add_argument("--imagenet_size", type=parse_geometry, default=None, help="override 500x375")
    p.add_argument("--phone_size", type=parse_geometry, default=None, help="override 4000x3000")
    p.add_argument("--data_dir", default=None, help="where generated JPEGs are cached (default: the temp dir)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--source", default="files", choices=("files", "shards"),
                   help="files: ours vs torchvision's chain; shards: train.py's pipeline reading the same JPEGs "
                        "from files vs from WebDataset tar shards (src/data/shards.py)")
    p.add_argument("--shard_size_mb", type=float, default=256.0, help="with --source shards: largest shard")
