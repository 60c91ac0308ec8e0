"""`python -m amct_targets.report OUT`: rewrite the HTML reports of a build folder."""
from __future__ import annotations

import argparse
import sys

from amct_targets.errors import AmctError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m amct_targets.report",
        description="Rewrite OUT/index.html and OUT/<target>/report.html from the "
                    "report.json files of a build folder.")
    parser.add_argument("out", help="the --output folder of an amct-targets build")
    args = parser.parse_args(argv)
    from amct_targets.report.html import regenerate

    try:
        written = regenerate(args.out)
    except AmctError as exc:
        print(f"amct-targets: error: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
