"""HVP cost against the memory the probe's gradient-graph cache may use (``max_graph_bytes``).

The digits CNN (briefly trained) on a probe of ``--samples`` samples in batches of ``--batch-size``:
the whole graph's size is measured first, then each HVP is timed (process CPU time, median of
``--repeats``) with the cache limited to fractions of it, and with no cache at all. Over the limit the
probe keeps the graphs of the batches that fit and recomputes only the others per HVP.

Example:
    python benchmarks/bench_graph_cache.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ignite_landscape as il  # noqa: E402
from benchmarks.common import int_options, probe_batch, trained_digits_cnn  # noqa: E402

__all__ = ["main"]


def time_hvp(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace, limit: int):
    """``(median CPU seconds per HVP, cached batches, cached bytes)`` with ``max_graph_bytes=limit``."""
    probe = il.Probe((x, y), torch.nn.CrossEntropyLoss(), batch_size=args.batch_size, max_graph_bytes=limit)
    with probe.session(model) as s:
        v = torch.randn(s.space.numel, generator=torch.Generator().manual_seed(0))
        s.hvp(v)  # builds the cache
        times = []
        for _ in range(args.repeats):
            t0 = time.process_time()
            s.hvp(v)
            times.append(time.process_time() - t0)
        cached = s.cached_batches
        return statistics.median(times), cached, s.saved_graph_bytes if cached else 0


def main(argv: list[str] | None = None) -> None:
    args = int_options(__doc__, samples=512, batch_size=128, repeats=21, threads=1).parse_args(argv)
    torch.set_num_threads(args.threads)
    model = trained_digits_cnn(epochs=1)
    x, y = probe_batch(args.samples)
    batches = -(-args.samples // args.batch_size)
    full, cached, size = time_hvp(model, x, y, args, 1 << 40)
    print(f"whole graph: {cached}/{batches} batches, {size / 2**20:.1f} MiB, {full * 1e3:.1f} ms per HVP")
    for fraction in (0.75, 0.5, 0.25):
        t, cached, used = time_hvp(model, x, y, args, int(size * fraction) + 1)
        print(
            f"limit {fraction:.2f} of it: {cached}/{batches} batches cached ({used / 2**20:.1f} MiB), "
            f"{t * 1e3:.1f} ms per HVP ({t / full:.2f}x)"
        )
    t, _, _ = time_hvp(model, x, y, args, 0)
    print(f"no cache: {t * 1e3:.1f} ms per HVP ({t / full:.2f}x)")


if __name__ == "__main__":
    main()
