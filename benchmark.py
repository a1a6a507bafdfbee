"""One benchmark command: ``python benchmark.py MODE [options]`` (``--help`` per mode).

Every mode prints a table comparing this project with what a user would otherwise run, measured
in the same process on the same inputs, and can write the numbers as JSON (``--json``).
"""
import argparse
import sys

from bench import model as model_mode

MODES = {
    "model": (model_mode, "train-step and inference images/s: ours vs torchvision/timm"),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    for name, (module, help_text) in MODES.items():
        module.add_arguments(sub.add_parser(name, help=help_text))
    args = parser.parse_args(argv)
    MODES[args.mode][0].main(args)


if __name__ == "__main__":
    sys.exit(main())
