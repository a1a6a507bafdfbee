"""``python -m src.models --summary``: params, GMACs and resolutions of every variant."""
import argparse

from .summary import format_table, summary_rows


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m src.models", description=__doc__)
    parser.add_argument("--summary", action="store_true", help="print the variant table (markdown)")
    args = parser.parse_args()
    if not args.summary:
        parser.print_help()
        return
    print(format_table(summary_rows()))


if __name__ == "__main__":
    main()
