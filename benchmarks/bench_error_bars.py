"""What ``uncertainty="jackknife"`` costs and gives on the digits CNN: value ± stderr, products and time.

The digits CNN trained for ``--epochs`` epochs of SGD on the first 1024 training samples, then on a probe of
``--samples`` of them, each measure with and without the jackknife (``--chunks`` chunks): the top-``k``
Hessian eigenvalues (Lanczos), the Hutch++ trace (60 HVPs) and the gradient statistics (GSNR, Fisher trace).
One thread; times are wall seconds on whatever else the machine runs.

Example:
    python benchmarks/bench_error_bars.py              # 1024-sample probe, top 5, 10 chunks
    python benchmarks/bench_error_bars.py --samples 128 --k 2 --chunks 4   # a quick run
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ignite_landscape as il  # noqa: E402
from benchmarks.common import int_options  # noqa: E402
from examples.models import DigitsCNN, digits_tensors  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    """Run the comparison and print one line per measure and setting."""
    args = int_options(__doc__, samples=1024, k=5, chunks=10, epochs=3).parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x, y, _, _ = digits_tensors()
    x, y = x[:1024], y[:1024]
    model = DigitsCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(args.epochs):
        for i in range(0, len(y), 64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[i : i + 64]), y[i : i + 64]).backward()
            opt.step()
    probe = il.Probe((x, y), nn.CrossEntropyLoss(), num_samples=args.samples)
    jk = {"uncertainty": "jackknife", "jackknife_chunks": args.chunks}
    for opts in ({}, jk):
        t = time.perf_counter()
        r = il.hessian_eigenvalues(model, probe, k=args.k, **opts)
        err = "" if r.stderr is None else f" ± {float(r.stderr[0]):.4g}"
        print(
            f"eigenvalues {'jackknife' if opts else 'plain    '}: lambda_max {r.lambda_max:.4g}{err}, "
            f"{r.num_hvps} + {r.uncertainty_hvps} HVPs, {time.perf_counter() - t:.2f} s"
        )
    for opts in ({}, jk):
        t = time.perf_counter()
        r = il.hessian_trace(model, probe, **opts)
        print(
            f"trace       {'jackknife' if opts else 'plain    '}: {r.value:.4g} ± {r.stderr:.3g} "
            f"(estimator ± {r.estimator_stderr if r.estimator_stderr is not None else r.stderr:.3g}), "
            f"{r.num_hvps} + {r.uncertainty_hvps} HVPs, {time.perf_counter() - t:.2f} s"
        )
    for opts in ({}, jk):
        t = time.perf_counter()
        r = il.gradient_statistics(model, probe, **opts)
        gsnr = f"{r.gsnr:.4g}" + ("" if r.gsnr_stderr is None else f" ± {r.gsnr_stderr:.2g}")
        fisher = f"{r.fisher_trace:.4g}" + ("" if r.fisher_trace_stderr is None else f" ± {r.fisher_trace_stderr:.3g}")
        print(
            f"gradstats   {'jackknife' if opts else 'plain    '}: GSNR {gsnr}, Fisher trace {fisher}, "
            f"{time.perf_counter() - t:.2f} s"
        )


if __name__ == "__main__":
    main()
