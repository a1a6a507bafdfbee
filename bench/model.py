"""``benchmark.py model``: train-step and inference images/s, ours vs torchvision (and timm).

Each implementation gets the same input, optimizer and memory format; rounds alternate the
order, and the ratio is the median of per-round ratios, so background load hits all equally.
"""
from __future__ import annotations

import argparse
import copy
import statistics

import torch

from src.models import build_model

from .common import format_table, machine_info, paired_rounds, write_json


def reference_models(name: str, num_classes: int) -> dict[str, torch.nn.Module]:
    """Ours plus the implementations a user would otherwise pick, when installed."""
    import torchvision

    models = {
        "ours": build_model(name, num_classes=num_classes),
        "torchvision": torchvision.models.get_model(name, num_classes=num_classes),
    }
    try:
        import timm

        timm_name = {"efficientnet_v2_s": "tf_efficientnetv2_s", "efficientnet_v2_m": "tf_efficientnetv2_m",
                     "efficientnet_v2_l": "tf_efficientnetv2_l"}.get(name, name)
        models["timm"] = timm.create_model(timm_name, num_classes=num_classes)
    except ImportError:
        pass
    return models


def make_train_step(model, x, y):
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    return step


def make_infer_step(model, x):
    model.eval()

    def step():
        with torch.inference_mode():
            model(x)

    return step


def prepare(model: torch.nn.Module, variant: str, device: torch.device) -> torch.nn.Module:
    model = copy.deepcopy(model).to(device)
    if variant in ("channels_last", "compile"):
        model = model.to(memory_format=torch.channels_last)
    if variant == "compile":
        model = torch.compile(model)
    return model


def run(args: argparse.Namespace) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    torch.manual_seed(0)
    base = reference_models(args.model, 1000)
    variants = ["eager", "channels_last"] + (["compile"] if args.compile else [])
    results = []
    for variant in variants:
        fmt = torch.channels_last if variant != "eager" else torch.contiguous_format
        x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
        x = x.contiguous(memory_format=fmt)
        y = torch.randint(0, 1000, (args.batch_size,), device=device)
        for task in ("train", "infer"):
            steps = {}
            for impl, model in base.items():
                m = prepare(model, variant, device)
                steps[impl] = make_train_step(m, x, y) if task == "train" else make_infer_step(m, x)
                for _ in range(args.warmup):
                    steps[impl]()
            times = paired_rounds(steps, args.rounds, args.iters, device)
            ours = times["ours"]
            for impl, t in times.items():
                ratios = [o_t and (ti / o_t) for ti, o_t in zip(t, ours)]
                results.append(
                    dict(
                        task=task, variant=variant, impl=impl,
                        images_per_sec=args.batch_size / statistics.median(t),
                        ours_speedup=statistics.median(ratios),
                    )
                )
    return dict(mode="model", model=args.model, batch_size=args.batch_size,
                image_size=args.image_size, device=str(device), machine=machine_info(), results=results)


def print_report(payload: dict) -> None:
    print(f"model={payload['model']} batch={payload['batch_size']} px={payload['image_size']} "
          f"device={payload['device']} ({payload['machine']['cpu']}, {payload['machine']['torch_threads']} threads)")
    if payload["device"] == "cpu":
        print("no GPU here: CPU rows only; the same command prints GPU rows on a CUDA machine")
    rows = [[r["task"], r["variant"], r["impl"], r["images_per_sec"], f"{r['ours_speedup']:.3f}x"]
            for r in payload["results"]]
    print(format_table(["task", "variant", "impl", "images/s", "ours vs it (median of rounds)"], rows))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="efficientnet_b0")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--compile", action="store_true", help="also time torch.compile (slow to compile on CPU)")
    p.add_argument("--cpu", action="store_true", help="time on the CPU even when a GPU is present")
    p.add_argument("--json", default=None, help="write the results here")


def main(args: argparse.Namespace) -> None:
    payload = run(args)
    print_report(payload)
    write_json(args.json, payload)
