"""Parameter and multiply-accumulate counts of every variant (counted on the meta device), with its
reference weights' eval preprocessing and published accuracy (src.models.weights.default_weights)."""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from .effnet import VARIANTS, build_model
from .weights import default_weights


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(name: str, resolution: int | None = None) -> int:
    """Multiply-accumulates of one forward pass at ``resolution`` (default: the reference weights' eval crop).

    Counted on the meta device, so even B7 at 600 px costs no real computation.
    FLOPs as torch counts them are 2 × MACs.
    """
    size = resolution or default_weights(name).preprocess.crop
    with torch.device("meta"):
        model = build_model(name).eval()
        x = torch.empty(1, 3, size, size)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() // 2


def summary_rows() -> list[dict]:
    rows = []
    for name, spec in VARIANTS.items():
        with torch.device("meta"):
            params = count_params(build_model(name))
        reference = default_weights(name)
        pre = reference.preprocess
        rows.append(
            dict(
                model=name,
                params=params,
                gmacs=count_macs(name) / 1e9,
                train_size=spec.train_size,
                eval=f"{pre.resize} -> {pre.crop}",
                interpolation=pre.interpolation,
                acc1=reference.accuracy.top1,
                acc5=reference.accuracy.top5,
            )
        )
    return rows


def format_table(rows: list[dict]) -> str:
    header = "| model | params | GMACs | train px | eval resize -> crop | interp | acc@1 | acc@5 |"
    lines = [header, "|---|---:|---:|---:|---|---|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['params']:,} | {r['gmacs']:.3f} | {r['train_size']} | "
            f"{r['eval']} | {r['interpolation']} | {_accuracy(r['acc1'])} | {_accuracy(r['acc5'])} |"
        )
    return "\n".join(lines)


def _accuracy(value: float | None) -> str:
    """Published accuracies to three decimals; '–' where none was published (Lite's top-5)."""
    return "–" if value is None else f"{value:.3f}"


WEIGHTS_FORMS = ("`--pretrained` takes (train.py, eval.py, export.py; `weights=` in hubconf.py): `imagenet` "
                 "(the variant's reference weights, marked below), a name below, torchvision's "
                 "`EfficientNet_B0_Weights.IMAGENET1K_V1`, `hf-hub:OWNER/REPO` (timm's repositories on the "
                 "Hugging Face hub) or a weight file.")


def format_weights_table() -> str:
    """The weights registry as markdown: the name to type, where each entry comes from, what it needs,
    what it claims; after one line naming every form a --pretrained value takes."""
    from .weights import WEIGHTS, describe_source, imagenet_entry

    lines = [WEIGHTS_FORMS, "",
             "| --pretrained NAME | imagenet | source | layout | padding, eps | eval resize -> crop | acc@1 | acc@5 "
             "| accuracy from |",
             "|---|---|---|---|---|---|---:|---:|---|"]
    for w in WEIGHTS.values():
        pre = w.preprocess
        lines.append(f"| {w.name} | {'yes' if imagenet_entry(w.arch) is w else ''} | {describe_source(w.source)} | "
                     f"{w.layout} | {w.padding}, {w.bn_eps:g} | {pre.resize} -> {pre.crop} {pre.interpolation} | "
                     f"{_accuracy(w.accuracy.top1)} | {_accuracy(w.accuracy.top5)} | {w.accuracy.source} |")
    return "\n".join(lines)
