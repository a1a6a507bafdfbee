"""``python -m src.models --summary``: params, GMACs and resolutions of every variant;
``--weights``: the published weights registry (source, layout, padding, preprocessing, accuracy)."""
import argparse

from .summary import format_table, format_weights_table, summary_rows


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m src.models", description=__doc__)
    parser.add_argument("--summary", action="store_true", help="print the variant table (markdown)")
    parser.add_argument("--weights", action="store_true", help="print the weights registry (markdown)")
    args = parser.parse_args()
    if not (args.summary or args.weights):
        parser.print_help()
        return
    if args.summary:
        print(format_table(summary_rows()))
    if args.weights:
        print(format_weights_table())


if __name__ == "__main__":
    main()
