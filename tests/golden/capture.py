"""Capture every scalar the main job logs, and the report's summary values, at a fixed seed.

The golden file ``digits.json`` next to this script was written by ``python -m tests.golden.capture`` on the
code *before* the architecture redesign (issue 12); ``tests/test_golden.py`` reruns the same job and compares,
so a refactor that changes any logged number fails.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

GOLDEN = Path(__file__).with_name("digits.json")

# Every handler of the main job, small enough for CI (~40 s), with error bars so the band tags are covered too.
# A firing every epoch: two machines that round differently trained alike through epoch 2 (test loss within
# 4.5e-7), so even there the first two firings (the second warm-started) are compared (see tests/test_golden.py).
ARGV = [
    "--epochs", "4", "--every", "1", "--probe-samples", "96", "--slice-steps", "5", "--top-k", "3",
    "--trace-hvps", "9", "--density-steps", "6", "--lr", "0.1", "--uncertainty", "jackknife", "--seed", "3",
]  # fmt: skip
# Wall-clock scalars differ between runs; everything else must not.
VOLATILE_SUFFIXES = ("/seconds",)
VOLATILE_ROWS = ("landscape_seconds", "run")


def _num(v: Any) -> Any:
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else repr(v)


def capture(out_dir: Path) -> dict[str, Any]:
    """Run the main job with every handler into ``out_dir`` and return its scalars and report values."""
    from examples import digits
    from ignite_landscape.report import load_run, write_report

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same float reductions whatever the machine's core count
    try:
        run_dir = digits.main(
            ARGV + ["--handlers", ",".join(digits.ALL_HANDLERS), "--output-dir", str(out_dir), "--run-name", "golden"]
        )
    finally:
        torch.set_num_threads(threads)
    run = load_run(run_dir)
    scalars = {
        tag: [[int(s), _num(v)] for s, v in zip(series.steps.tolist(), series.values.tolist())]
        for tag, series in sorted(run.scalars.items())
        if not tag.endswith(VOLATILE_SUFFIXES)
    }
    report = write_report([run_dir], out_dir / "report", num_resamples=200)
    rows = [
        {k: _num(v) if not isinstance(v, str) else v for k, v in r.items() if k not in VOLATILE_ROWS}
        for r in report.rows
    ]
    corrs = [
        {"metric": c.metric, "scope": c.scope, "n": c.n, "pearson": _num(c.pearson), "kendall": _num(c.kendall)}
        for c in report.correlations
    ]
    figures = sorted(report.figures)
    return {"argv": ARGV, "scalars": scalars, "summary_rows": rows, "correlations": corrs, "figures": figures}


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        data = capture(Path(tmp))
    GOLDEN.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {GOLDEN}: {len(data['scalars'])} scalar tags", file=sys.stderr)
