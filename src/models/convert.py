"""Convert EfficientNet weights of any public layout to this project's, as .pth or .safetensors.

    python -m src.models.convert IN OUT [--model NAME] [--padding same|symmetric]

IN: torchvision's / this project's, timm's (efficientnet_*, tf_efficientnet_*, tf_efficientnet_lite*,
efficientnetv2_*, tf_efficientnetv2_*) or efficientnet_pytorch's (and its Lite fork's) weights.
OUT (.safetensors or .pth by its suffix) remembers the variant, padding, BatchNorm eps and eval
preprocessing, so train.py --pretrained, eval.py and export.py rebuild exactly that network.
The layout logic lives in src.models.layouts.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from src.common.errors import EXIT_FAILED, InputError, report_error

from .effnet import list_models
from .layers import PADDINGS
from .files import read_file, save_weights
from .layouts import WeightMismatchError, import_weights



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.models.convert",
                                     description="Convert EfficientNet weights (torchvision, timm or efficientnet_pytorch "
                                                 "layout) to this project's layout (.pth or .safetensors).")
    parser.add_argument("input", help="weight file (.pth / .pt / .bin / .safetensors)")
    parser.add_argument("output", help="file to write; .safetensors or .pth by its suffix")
    parser.add_argument("--model", choices=list_models(), metavar="NAME",
                        help="variant (default: the one whose shapes fit)")
    parser.add_argument("--padding", choices=PADDINGS,
                        help="force the padding (default: saved in the file, its layout's, or its BatchNorm statistics')")
    args = parser.parse_args(argv)
    try:
        if Path(args.output).resolve() == Path(args.input).resolve():
            raise WeightMismatchError("OUT must differ from IN")
        weights = import_weights(read_file(args.input), args.model, args.input, args.padding)
        out = save_weights(weights.state, weights.metadata(), args.output)
    except InputError as exc:
        return report_error(exc)
    except OSError as exc:  # writing OUT failed (a full disk, no permission)
        return report_error(exc, EXIT_FAILED)
    for note in weights.notes:
        print(note)
    print(f"wrote {out} ({weights.model_name}, {weights.num_classes} classes, padding {weights.padding})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
