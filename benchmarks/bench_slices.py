"""A 21×21 2-D loss slice of a digits CNN: cost per grid point, against a bare forward and loss-landscapes.

A :class:`~examples.models.DigitsCNN` (about 38k parameters) is trained a few seeded epochs on scikit-learn's
``load_digits``; the probe is 512 training samples evaluated in one batch. One grid point costs one forward
pass, and on a CPU that forward's cost depends on the *weights*: ``max_pool2d``, half of this CNN's forward,
runs about 2.5× faster on all-zero (dead-ReLU) activations than on varied ones, because its comparisons
become predictable. So the contenders are timed on the **same plane**, and the floor is a bare forward **at
the same grid points**:

* ``floor``: the grid's weights swapped into a scratch copy of the model, then ``model(x)`` under
  ``torch.no_grad()`` at every point: one bare forward pass over the probe per point, the physical floor of
  a grid point on a CPU.
* ``ours``: ``loss_slice(model, probe, directions, steps=21)``: loss *and* accuracy at each of the 441
  points, the centre exactly the model's own weights, nothing copied.
* ``loss_landscapes.random_plane(model, Loss(cross_entropy, x, y), distance=0.5, steps=21,
  normalization="filter", deepcopy_model=True)``, seeded: loss only. Its directions are uniform on [0, 1)
  (all positive), so much of its plane has every ReLU dead and is cheap to evaluate. The plane it used is
  read back from the weights it evaluated (a recording forward pre-hook, in an untimed call) and ``ours``
  is timed on that plane too, centred on the model's weights with the same 21 steps (loss_landscapes'
  grid sits half a step off centre).
* ``ours`` and its floor also on our own plane: :func:`random_directions` with filter normalization.
* ``beyond the forward``: the same three contenders with the CNN replaced by a linear model whose forward
  is nearly free, so what is left per point is everything else (moving to the point, loss, accuracy).
* With ``--device cuda`` (or ``--batch-points N`` on a CPU): batched evaluation (``batch_points=N``,
  ``torch.func.vmap`` over chunks of grid points) against point-by-point on our plane.

Times are the process's CPU time on a CPU (``time.process_time``: other processes on a shared machine do not
inflate it, and with one thread it equals the wall time of an idle machine) and wall time on CUDA. Each
round runs every contender once, in a rotating order; ratios are formed within a round, and the median over
rounds is printed with its range. glibc's allocator hands the 2-4 MB activations of each forward back to
the kernel and faults them in again on the next one, which made per-point costs swing by 20% between
identical runs; the script therefore re-executes itself with ``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TRIM_THRESHOLD_`` and ``MALLOC_ARENA_MAX`` set so freed memory is reused (the same for every
contender; ``--system-allocator`` keeps the defaults).

Example:
    Run from the repository root::

        python benchmarks/bench_slices.py             # CPU
        python benchmarks/bench_slices.py --quick     # 7×7 grid, one round: a smoke test
        python benchmarks/bench_slices.py --device cuda               # + batched, 64 points a call
        python benchmarks/bench_slices.py --batch-points 16           # batched on a CPU too
"""

from __future__ import annotations

import copy
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import int_options, probe_batch, trained_digits_cnn  # noqa: E402
from ignite_landscape import Probe, loss_slice, random_directions  # noqa: E402
from ignite_landscape.measures.directions import Direction  # noqa: E402

__all__ = ["main"]

# Large enough that no activation of these models is mmapped or trimmed: freed memory is reused as is.
_ALLOCATOR_ENV = {
    "MALLOC_MMAP_THRESHOLD_": "1073741824",
    "MALLOC_TRIM_THRESHOLD_": "1073741824",
    "MALLOC_ARENA_MAX": "1",
}


def _clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return time.perf_counter()
    return time.process_time()


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _plane_points(model: nn.Module, dirs: list[Direction], steps: int) -> torch.Tensor:
    """``(steps², P)``: the weights at each point of our grid, in the order :func:`loss_slice` walks it."""
    theta = _flat(model)
    names = [n for n, _ in model.named_parameters()]
    flat = [torch.cat([d[n].reshape(-1) for n in names]) for d in dirs]
    coords = torch.linspace(-1.0, 1.0, steps)
    return torch.stack([theta + float(a) * flat[0] + float(b) * flat[1] for a in coords for b in coords])


def _loss_landscapes_plane(
    model: nn.Module, run: Callable[[], object], steps: int
) -> tuple[torch.Tensor, list[Direction]]:
    """The weights ``run`` (a seeded ``random_plane``) evaluates, and its plane as two :func:`loss_slice` directions.

    loss_landscapes walks ``start + i·d₁ + j·d₂`` column by column (``j = 1..steps`` up on even columns,
    ``steps-1..0`` down on odd ones), so ``d₂`` is the step between the first two points and ``d₁`` follows
    from the step into the second column. The whole walk is checked against what was recorded.
    """
    seen: list[torch.Tensor] = []
    handle = model.register_forward_pre_hook(lambda module, args: seen.append(_flat(module)))
    try:
        run()  # the hook travels into loss_landscapes' deep copy of the model
    finally:
        handle.remove()
    points = torch.stack(seen)
    d2 = points[1] - points[0]
    d1 = points[steps] - points[steps - 1] + d2
    start = points[0] - d2
    walk = [start + i * d1 + (t + 1 if i % 2 == 0 else steps - 1 - t) * d2 for i in range(steps) for t in range(steps)]
    mismatch = float((torch.stack(walk) - points).abs().max() / d2.abs().max())
    if mismatch > 1e-3:
        raise RuntimeError(f"could not read back loss_landscapes' plane (mismatch {mismatch:.1e} of a step)")
    half = (steps - 1) / 2  # our coordinates run over [-1, 1]: ±half grid steps
    dirs = []
    for d in (d1, d2):
        chunks = (half * d).split([p.numel() for p in model.parameters()])
        dirs.append({n: c.view_as(p) for (n, p), c in zip(model.named_parameters(), chunks)})
    return points, dirs


def _floor(scratch: nn.Module, x: torch.Tensor, grid: torch.Tensor) -> None:
    """``scratch(x)`` at each row of ``grid`` (swapped in as views of the row, not copied)."""
    with torch.no_grad():
        params = list(scratch.parameters())
        for w in grid:
            torch.nn.utils.vector_to_parameters(w, params)
            scratch(x)


def _contenders(
    model: nn.Module, probe: Probe, x: torch.Tensor, y: torch.Tensor, steps: int, seed: int
) -> dict[str, Callable[[], object]]:
    """Every timed run on ``model``, by name: floors, ours on both planes, loss_landscapes."""
    planes: dict[str, list[Direction]] = {"our plane": random_directions(model, 2, "filter", seed=seed)}
    floors: dict[str, torch.Tensor] = {}
    runs: dict[str, Callable[[], object]] = {}
    try:
        import loss_landscapes
        import loss_landscapes.metrics
    except ImportError:
        loss_landscapes = None
        print("loss_landscapes is not installed (pip install -e '.[bench]'): skipping its rows")
    if loss_landscapes is not None and x.device.type != "cpu":
        loss_landscapes = None  # it draws its directions on the CPU (torch.rand without a device)
        print("loss_landscapes runs on the CPU only: skipping its rows")
    if loss_landscapes is not None:
        metric = loss_landscapes.metrics.Loss(F.cross_entropy, x, y)

        def random_plane() -> object:
            rng = torch.get_rng_state()
            torch.manual_seed(seed)  # the same plane at every call
            try:
                return loss_landscapes.random_plane(
                    model, metric, distance=0.5, steps=steps, normalization="filter", deepcopy_model=True
                )
            finally:
                torch.set_rng_state(rng)

        floors["loss_landscapes' points"], planes["loss_landscapes' plane"] = _loss_landscapes_plane(
            model, random_plane, steps
        )
        runs["loss_landscapes, its plane"] = random_plane
    for plane, dirs in planes.items():
        floors[f"our points, {plane}"] = _plane_points(model, dirs, steps)
        runs[f"ours, {plane}"] = lambda dirs=dirs: loss_slice(model, probe, dirs, steps=steps)
    for where, grid in floors.items():
        scratch = copy.deepcopy(model)
        runs[f"floor at {where}"] = lambda scratch=scratch, grid=grid: _floor(scratch, x, grid)
    return runs


def _time_rounds(runs: dict[str, Callable[[], object]], rounds: int, device: torch.device) -> dict[str, list[float]]:
    """Seconds of each run in each round; every round runs them all once, starting one further along."""
    names = list(runs)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t0 = _clock(device)
            runs[name]()
            seconds[name].append(_clock(device) - t0)
    return seconds


def _ratio(seconds: dict[str, list[float]], a: str, b: str) -> str:
    rs = [x / y for x, y in zip(seconds[a], seconds[b])]
    return f"{statistics.median(rs):.3f}x (rounds {min(rs):.3f}-{max(rs):.3f})"


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print its figures."""
    parser = int_options(__doc__, steps=21, samples=512, epochs=3, rounds=9)
    parser.add_argument("--seed", type=int, default=0, help="seeds the directions (ours and random_plane's)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch.set_num_threads; 0 leaves it (1: stable on a shared CPU)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--batch-points", type=int, default=None, help="grid points per vmap call (default: 64 on CUDA, off on CPU)"
    )
    parser.add_argument("--system-allocator", action="store_true", help="keep glibc's default malloc settings")
    parser.add_argument("--quick", action="store_true", help="1 epoch, 7×7 grid, 1 round")
    args = parser.parse_args(argv)
    if not args.system_allocator and any(os.environ.get(k) != v for k, v in _ALLOCATOR_ENV.items()):
        # glibc reads these once, at start-up.
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **_ALLOCATOR_ENV})
    if args.quick:
        args.epochs, args.rounds, args.steps = 1, 1, 7
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    steps, points = args.steps, args.steps**2

    model = trained_digits_cnn(epochs=args.epochs).to(device).eval()
    x, y = probe_batch(args.samples)
    x, y = x.to(device), y.to(device)
    probe = Probe((x, y), F.cross_entropy, batch_size=args.samples)
    runs = _contenders(model, probe, x, y, steps, args.seed)
    if device.type == "cuda" and args.batch_points is None:
        args.batch_points = 64
    if args.batch_points:
        batched_dirs = random_directions(model, 2, "filter", seed=args.seed)
        runs["ours batched, our plane"] = lambda: loss_slice(
            model, probe, batched_dirs, steps=steps, batch_points=args.batch_points
        )
    torch.manual_seed(0)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(x[0].numel(), 10)).to(device).eval()
    linear_probe = Probe((x, y), F.cross_entropy, batch_size=args.samples)
    linear_runs = _contenders(linear, linear_probe, x, y, steps, args.seed)

    for fn in [*runs.values(), *linear_runs.values()]:  # warm-up
        fn()
    seconds = _time_rounds(runs, args.rounds, device)
    linear_seconds = _time_rounds(linear_runs, args.rounds, device)

    dirs = random_directions(model, 2, "filter", seed=args.seed)
    ours = loss_slice(model, probe, dirs, steps=steps)
    center = probe.evaluate(model).loss
    print(f"device: {device}, threads: {torch.get_num_threads()}, torch {torch.__version__}")
    print(f"DigitsCNN ({sum(p.numel() for p in model.parameters())} params), probe {probe.num_samples} samples")
    clock = "wall time" if device.type == "cuda" else "process CPU time"
    allocator = "glibc defaults" if args.system_allocator else "freed memory reused"
    print(f"grid {steps}x{steps} = {points} points, {clock}, {args.rounds} rounds, allocator: {allocator}")
    print(f"centre exact: {ours.center_loss == center} (slice {ours.center_loss:.6f}, model {center:.6f})")
    print(f"{'':48s}{'ms / point (median)':>20s}")
    for name, v in seconds.items():
        print(f"{name:48s}{statistics.median(v) / points * 1e3:20.3f}")
    for plane in ("our plane", "loss_landscapes' plane"):
        if f"ours, {plane}" in seconds:
            floor = f"floor at our points, {plane}"
            print(f"ours / floor, {plane}: {_ratio(seconds, f'ours, {plane}', floor)} (target <= 1.05x)")
    ll, ll_floor, ours_there = (
        "loss_landscapes, its plane",
        "floor at loss_landscapes' points",
        "ours, loss_landscapes' plane",
    )
    if ll in seconds:
        print(f"loss_landscapes / floor at its points: {_ratio(seconds, ll, ll_floor)}")
        print(f"ours / loss_landscapes, same plane: {_ratio(seconds, ours_there, ll)} (target <= 1.0x)")
    print(f"beyond the forward (a linear model, forward nearly free), {steps}x{steps} grid:")
    for name, v in linear_seconds.items():
        print(f"  {name:46s}{statistics.median(v) / points * 1e6:14.1f} us / point")
    if args.batch_points:
        b = loss_slice(model, probe, dirs, steps=steps, batch_points=args.batch_points)
        agree = float((b.loss - ours.loss).abs().max())
        print(f"batched (vmap, {args.batch_points} points/call) used: {b.batched}, max |diff| {agree:.2e}")
        print(
            f"point-by-point / batched: {_ratio(seconds, 'ours, our plane', 'ours batched, our plane')} (target >= 2x)"
        )


if __name__ == "__main__":
    main()
