"""A 21×21 2-D loss slice of a digits CNN: cost per grid point, against a bare forward and loss-landscapes.

A :class:`~examples.models.DigitsCNN` (about 38k parameters) is trained a few seeded epochs on scikit-learn's
``load_digits``; the probe is 512 training samples evaluated in one batch. Figures, all from one process with
the same ``torch.set_num_threads`` (1 by default: the figures are ratios of per-point costs, and one
thread keeps them stable on a shared machine; median of ``--repeats`` rounds, the contenders interleaved in each round):

Times are the process's CPU time on a CPU (user + kernel from ``os.times``, robust to other load on a shared
machine; the kernel part, page faults of the allocator, is also shown on its own) and wall time on CUDA.

* ``bare forward``: ``model(x)`` over the 512 probe samples under ``torch.no_grad()`` — the physical floor of a
  grid point on a CPU, where one point costs one forward pass.
* ``ours``: ``loss_slice(model, probe, random_directions(model, 2, "filter"), steps=21)`` (loss *and* accuracy
  at each of the 441 points, centre exact), time per grid point and as a multiple of the bare forward.
* ``loss_landscapes.random_plane(model, Loss(cross_entropy, x, y), distance=0.5, steps=21,
  normalization="filter", deepcopy_model=True)``: the same grid (21×21 points reaching ``‖θ‖`` along each
  direction, as our ``span=(-1, 1)`` with filter-normalized directions does): time per point, and our ratio to
  it. (Its grid is centred at ``steps/2``, so with 21 steps the model's own weights are not on it.)
* With ``--device cuda``: batched evaluation (``batch_points=N``, ``torch.func.vmap`` over chunks of grid
  points) against point-by-point on the same model.

Example:
    Run from the repository root::

        python benchmarks/bench_slices.py             # CPU
        python benchmarks/bench_slices.py --quick     # fewer repeats, for a smoke test
        python benchmarks/bench_slices.py --device cuda --batch-points 64
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import probe_batch, trained_digits_cnn  # noqa: E402
from ignite_landscape import Probe, loss_slice, random_directions  # noqa: E402

__all__ = ["main"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device) -> tuple[tuple[float, float], object]:
    """``((seconds, kernel seconds), result)`` of one call of ``fn``.

    On a CPU the seconds are the process's own CPU time (user + kernel, from ``os.times``): other processes
    on a shared machine do not inflate it, and with one thread it equals the wall time of an idle machine.
    The kernel part is mostly page faults of the allocator, which depend on the allocation pattern, so it
    is reported on its own. On an accelerator, wall time (kernel time 0).
    """
    _sync(device)
    w0, t0 = time.perf_counter(), os.times()
    out = fn()
    _sync(device)
    w1, t1 = time.perf_counter(), os.times()
    if device.type == "cuda":
        return (w1 - w0, 0.0), out
    return ((t1.user - t0.user) + (t1.system - t0.system), t1.system - t0.system), out


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=21)
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch.set_num_threads; 0 leaves it (1: stable on a shared CPU)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-points", type=int, default=64, help="grid points per vmap call (--device cuda)")
    parser.add_argument("--quick", action="store_true", help="1 epoch, 1 repeat")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.repeats = 1, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    model = trained_digits_cnn(epochs=args.epochs).to(device).eval()
    x, y = probe_batch(args.samples)
    x, y = x.to(device), y.to(device)
    probe = Probe((x, y), F.cross_entropy, batch_size=args.samples)
    dirs = random_directions(model, 2, normalization="filter", seed=0)
    points = args.steps**2

    def bare() -> None:
        with torch.no_grad():
            model(x)

    for _ in range(5):
        bare()
    contenders = {"ours": lambda: loss_slice(model, probe, dirs, steps=args.steps)}
    try:
        import loss_landscapes
        import loss_landscapes.metrics

        metric = loss_landscapes.metrics.Loss(F.cross_entropy, x, y)
        contenders["loss_landscapes"] = lambda: loss_landscapes.random_plane(
            model, metric, distance=0.5, steps=args.steps, normalization="filter", deepcopy_model=True
        )
    except ImportError:
        print("loss_landscapes is not installed: skipping its row")
    if device.type == "cuda":
        contenders["ours batched"] = lambda: loss_slice(
            model, probe, dirs, steps=args.steps, batch_points=args.batch_points
        )

    times: dict[str, list[float]] = {k: [] for k in ["bare forward", *contenders]}
    kernel: dict[str, list[float]] = {k: [] for k in times}
    results: dict[str, object] = {}
    for name, fn in contenders.items():  # warm-up
        results[name] = fn()

    def record(name: str, fn, count: int) -> None:
        (t, k), out = _timed(fn, device)
        times[name].append(t / count)
        kernel[name].append(k / count)
        if name in contenders:
            results[name] = out

    for _ in range(args.repeats):
        for name, fn in contenders.items():
            # The floor is timed right next to each contender, so load drift on a shared machine cancels.
            record("bare forward", lambda: [bare() for _ in range(50)], 50)
            record(name, fn, points)
        record("bare forward", lambda: [bare() for _ in range(50)], 50)
    med = {k: statistics.median(v) for k, v in times.items()}
    med_kernel = {k: statistics.median(v) for k, v in kernel.items()}

    ours = results["ours"]
    center = probe.evaluate(model).loss
    print(f"device: {device}, threads: {torch.get_num_threads()}, torch {torch.__version__}")
    print(f"DigitsCNN ({sum(p.numel() for p in model.parameters())} params), probe {probe.num_samples} samples, ")
    clock = "wall time" if device.type == "cuda" else "process CPU time (user + kernel)"
    print(f"grid {args.steps}x{args.steps} = {points} points, {clock}, median of {args.repeats} rounds")
    print(f"centre exact: {ours.center_loss == center} (slice {ours.center_loss:.6f}, model {center:.6f})")
    print(f"{'':24s}{'ms / point':>12s}{'of it kernel':>14s}{'x bare fwd':>12s}")
    for name, t in med.items():
        print(f"{name:24s}{t * 1e3:12.3f}{med_kernel[name] * 1e3:14.3f}{t / med['bare forward']:12.3f}")
    print(f"ours / bare forward:      {med['ours'] / med['bare forward']:.3f}x (target <= 1.05x)")
    if "loss_landscapes" in med:
        print(f"ours / loss_landscapes:   {med['ours'] / med['loss_landscapes']:.3f}x (target <= 1.0x)")
    if "ours batched" in med:
        b = results["ours batched"]
        agree = float((b.loss - ours.loss).abs().max())
        print(f"batched (vmap, {args.batch_points} points/call) used: {b.batched}, max |diff| {agree:.2e}")
        print(f"point-by-point / batched: {med['ours'] / med['ours batched']:.2f}x faster (target >= 2x)")


if __name__ == "__main__":
    main()
