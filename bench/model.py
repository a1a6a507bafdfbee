"""``benchmark.py model``: train-step and inference images/s, ours vs torchvision (and timm).

Each implementation gets the same input, optimizer and memory format; rounds alternate the
order, and the ratio is the median of per-round ratios, so background load hits all equally.
Random weights, with BatchNorm statistics set from a random batch (``calibrate_batchnorm``) so
inference does not run on vanishing, denormal activations that trained weights never produce.
"""
from __future__ import annotations

import argparse
import copy
import statistics

import torch

from src.runtime.amp import autocast, build_scaler
from src.models import build_model

from .common import MIN_IMAGE_SIZE, format_table, machine_info, paired_rounds


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


CALIBRATION_BATCH = 8


def calibrate_batchnorm(model: torch.nn.Module, size: int, batch: int = CALIBRATION_BATCH) -> None:
    """Set every BatchNorm's running statistics from one random batch; leaves the model in eval mode.

    A freshly initialised network keeps running_var = 1, so in eval mode its activations shrink
    stage after stage (B0's logits end near 1e-14) and reach denormal floats, which the CPU
    computes far more slowly: inference timings of such a model are not those of trained
    weights. After this, activations have unit scale, as trained ones do.
    """
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: after one batch, running stats = batch stats
    model.train()
    with torch.no_grad():
        model(torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1)))
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum
    model.eval()


def make_train_step(model, x, y, amp: str = "none"):
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    scaler = build_scaler(amp, 0.0, x.device)  # fp16: dynamic loss scaling, as train.py does
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast(x.device, amp):
            loss = loss_fn(model(x), y)
        scaler.backward(loss)
        scaler.step(opt)

    return step


def make_infer_step(model, x, amp: str = "none"):
    model.eval()

    def step():
        with torch.inference_mode(), autocast(x.device, amp):
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
    for model in base.values():
        calibrate_batchnorm(model, args.image_size)
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
                steps[impl] = (make_train_step(m, x, y, args.amp) if task == "train"
                               else make_infer_step(m, x, args.amp))
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
                        seconds_per_round=t,  # the measurements both numbers above come from
                    )
                )
    return dict(mode="model", model=args.model, batch_size=args.batch_size, image_size=args.image_size,
                amp=args.amp, rounds=args.rounds, iters=args.iters, warmup=args.warmup, device=str(device),
                machine=machine_info(), results=results)


def print_report(payload: dict) -> None:
    print(f"model={payload['model']} batch={payload['batch_size']} px={payload['image_size']} "
          f"amp={payload.get('amp', 'none')} rounds={payload['rounds']} iters={payload['iters']} "
          f"device={payload['device']} ({payload['machine']['cpu']}, {payload['machine']['torch_threads']} threads, "
          f"malloc {payload['machine']['malloc']})")
    if payload["device"] == "cpu":
        print("no GPU here: CPU rows only; the same command prints GPU rows on a CUDA machine")
    rows = [[r["task"], r["variant"], r["impl"], r["images_per_sec"], f"{r['ours_speedup']:.3f}x"]
            for r in payload["results"]]
    print(format_table(["task", "variant", "impl", "images/s", "ours vs it (median of rounds)"], rows))


# benchmark.py rejects smaller values before the run (common.check_args)
MINIMUMS = {"batch_size": 1, "image_size": MIN_IMAGE_SIZE, "rounds": 1, "iters": 1, "warmup": 0}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="efficientnet_b0")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--image_size", type=int, default=224)
    # Defaults sized to finish in ~3 minutes on 2 CPU cores; raise them on a GPU.
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--iters", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--amp", default="none", choices=("none", "fp16", "bf16"),
                   help="autocast dtype for both tasks (fp16 trains with dynamic loss scaling)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile (slow to compile on CPU)")
    p.add_argument("--cpu", action="store_true", help="time on the CPU even when a GPU is present")
