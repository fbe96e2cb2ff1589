"""``python -m ignite_landscape report RUN_DIR [RUN_DIR ...] --out DIR`` (see :mod:`ignite_landscape.report`).

Example:
    python -m ignite_landscape report runs/digits-lr0.05-s0 --out report
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 success, 2 bad input)."""
    from ignite_landscape.report import main as report_main

    return report_main(argv)


if __name__ == "__main__":
    sys.exit(main())
