"""``python -m ignite_landscape report RUN_DIR [RUN_DIR ...] --out DIR``: :func:`write_report` from the shell.

Example:
    >>> import tempfile
    >>> main(["report", tempfile.mkdtemp(), "--out", tempfile.mkdtemp()])  # a folder without event files
    2
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ignite_landscape.report.build import write_report
from ignite_landscape.report.events import ReportError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ignite_landscape", description="ignite_landscape command line")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser(
        "report",
        help="figures and a markdown summary from TensorBoard event files",
        description="Read the TensorBoard event files of one or more runs and write PNG figures and summary.md.",
    )
    r.add_argument("runs", nargs="+", metavar="RUN_DIR", help="folder with event files (or a folder of run folders)")
    r.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (created)")
    r.add_argument("--accuracy-tag", default=None, help="scalar tag of test accuracy (default: test/accuracy)")
    r.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples per confidence interval")
    r.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m ignite_landscape`` and ``ignite-landscape``; returns the exit code.

    0 on success, 2 on bad input (no event files, nothing to report) with the reason on stderr.
    """
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    import matplotlib

    matplotlib.use("Agg", force=False)
    try:
        rep = write_report(
            args.runs, args.out, accuracy_tag=args.accuracy_tag, num_resamples=args.bootstrap, seed=args.seed
        )
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"Read {len(rep.runs)} run(s): {', '.join(r.name for r in rep.runs)}")
    for path in rep.figures.values():
        print(f"  wrote {path}")
    for name, why in rep.skipped.items():
        print(f"  skipped {name}: {why}")
    print(f"  wrote {rep.summary}")
    return 0
