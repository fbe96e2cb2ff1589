"""Overhead of the landscape handlers on the digits example, and HVPs saved by warm-starting Lanczos.

Three measurements on the digits example's training (DigitsCNN, SGD η=0.05, batch 32, the fixed
probe of the first 512 training samples), all in one process on the same thread count:

1. Overhead: the same training with and without the default handler set (every handler with its
   library defaults, every epoch) plus the TensorBoard log handler. Reported per handler (its own
   ``landscape/<name>/seconds``) and in total as a fraction of the plain training time; the runs are
   also checked to train bit-identically.
2. Warm start: HessianSpectrum with ``warm_start=False`` next to warm-started ones (several noise
   levels) on one trainer: Hessian-vector products per firing and the largest relative difference
   of the eigenvalues they report.

Example:
    python benchmarks/bench_overhead.py                 # 10 epochs, 1 thread
    python benchmarks/bench_overhead.py --epochs 4 --threads 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Events, create_supervised_trainer
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ignite_landscape as il  # noqa: E402
from benchmarks.common import int_options  # noqa: E402
from examples.models import DigitsCNN, digits_loaders  # noqa: E402

__all__ = ["main"]


def default_handlers(model: nn.Module, probe: il.Probe, optimizer: torch.optim.Optimizer) -> list[Any]:
    """Every handler with its library defaults (the optimizer given to HessianSpectrum for 2/η)."""
    return [
        il.HessianSpectrum(model, probe, optimizer=optimizer),
        il.HessianTrace(model, probe),
        il.HessianDensity(model, probe),
        il.Sharpness(model, probe),
        il.LossSlice(model, probe, dims=1),
        il.LossSlice(model, probe, dims=2),
        il.ModeConnectivity(model, probe),
        il.GradientNoiseScale(model, probe),
    ]


class TimedLogHandler(il.LandscapeLogHandler):
    """The TensorBoard log handler, timing its own calls."""

    seconds = 0.0

    def __call__(self, engine: Any, logger: Any, event_name: Any) -> None:
        t0 = time.perf_counter()
        super().__call__(engine, logger, event_name)
        self.seconds += time.perf_counter() - t0


def train(args: argparse.Namespace, make_handlers: Any = None, tensorboard: bool = False) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    loader, _ = digits_loaders(batch_size=32, seed=args.seed)
    model = DigitsCNN()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    trainer = create_supervised_trainer(model, optimizer, nn.CrossEntropyLoss())
    x, y = loader.dataset.tensors
    probe = il.Probe((x, y), nn.CrossEntropyLoss(), num_samples=args.probe_samples)
    handlers = make_handlers(model, probe, optimizer) if make_handlers else []
    for h in handlers:
        h.attach(trainer, Events.EPOCH_COMPLETED)
    log_handler = None
    tmp = None
    if tensorboard:
        from ignite.handlers import TensorboardLogger

        tmp = tempfile.TemporaryDirectory()
        tb = TensorboardLogger(log_dir=tmp.name)
        log_handler = TimedLogHandler()
        tb.attach(trainer, log_handler=log_handler, event_name=Events.EPOCH_COMPLETED)
    losses: list[float] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output))
    t0 = time.perf_counter()
    trainer.run(loader, max_epochs=args.epochs)
    wall = time.perf_counter() - t0
    if tensorboard:
        tb.close()
        tmp.cleanup()
    return {
        "wall": wall,
        "handlers": handlers,
        "log_seconds": log_handler.seconds if log_handler else 0.0,
        "losses": losses,
        "params": [p.detach().clone() for p in model.parameters()],
    }


def overhead(args: argparse.Namespace) -> None:
    plain = train(args)
    watched = train(args, default_handlers, tensorboard=True)
    identical = plain["losses"] == watched["losses"] and all(
        torch.equal(a, b) for a, b in zip(plain["params"], watched["params"])
    )
    base = plain["wall"]
    print(
        f"\n== Overhead: {args.epochs} epochs, {len(plain['losses'])} iterations, probe {args.probe_samples} samples, "
        f"{torch.get_num_threads()} thread(s)"
    )
    print(f"plain training: {base:.2f} s ({base / args.epochs:.3f} s/epoch)")
    print(f"{'handler':<14}{'s/firing':>10}{'x training':>12}  notes")
    total = 0.0
    for h in watched["handlers"]:
        secs = [f.seconds for f in h.history]
        mean = sum(secs) / len(secs)
        total += sum(secs)
        last = h.history[-1].scalars
        note = ", ".join(f"{k}={last[k]:.0f}" for k in ("num_hvps", "num_forwards", "num_grads") if k in last)
        print(f"{h.name:<14}{mean:>10.3f}{sum(secs) / base:>12.2f}  {note}")
    print(f"{'TensorBoard':<14}{watched['log_seconds'] / args.epochs:>10.3f}{watched['log_seconds'] / base:>12.2f}")
    extra = watched["wall"] - base
    print(
        f"with every handler every epoch: {watched['wall']:.2f} s -> overhead {extra / base:.1f}x the training time "
        f"(handlers {total:.2f} s, TensorBoard {watched['log_seconds']:.2f} s)"
    )
    print(f"derived, every 5 epochs: {extra / 5 / base:.1f}x; every 20 epochs: {extra / 20 / base:.2f}x")
    print(f"training bit-identical with and without the handlers: {identical}")


def warm_start(args: argparse.Namespace) -> None:
    noises = [float(n) for n in args.noise.split(",")]

    def make(model: nn.Module, probe: il.Probe, optimizer: torch.optim.Optimizer) -> list[Any]:
        hs = [il.HessianSpectrum(model, probe, k=args.k, tol=args.tol, warm_start=False, name="cold")]
        hs += [
            il.HessianSpectrum(model, probe, k=args.k, tol=args.tol, warm_start_noise=n, name=f"warm_{n:g}")
            for n in noises
        ]
        return hs

    run = train(args, make)
    cold, *warms = run["handlers"]
    print(f"\n== Warm start: HessianSpectrum k={args.k}, tol={args.tol:g}, {args.epochs} firings (one per epoch)")
    print("HVPs per firing:")
    print(f"  {'cold':<12}" + " ".join(f"{f.result.num_hvps:4d}" for f in cold.history))
    for w in warms:
        print(f"  {w.name:<12}" + " ".join(f"{f.result.num_hvps:4d}" for f in w.history))
    later = slice(1, None)  # the first firing has nothing to start from
    cold_total = sum(f.result.num_hvps for f in cold.history[later])
    for w in warms:
        warm_total = sum(f.result.num_hvps for f in w.history[later])
        diff = max(
            float(((fw.result.eigenvalues - fc.result.eigenvalues).abs() / fc.result.eigenvalues.abs()).max())
            for fw, fc in zip(w.history, cold.history)
        )
        print(
            f"  {w.name}: firings 2..{args.epochs}: {warm_total} HVPs vs {cold_total} cold "
            f"({1 - warm_total / cold_total:.0%} saved); max relative eigenvalue difference {diff:.1e}"
        )


def main(argv: list[str] | None = None) -> None:
    p = int_options(__doc__, epochs=10, probe_samples=512, threads=1, k=5, seed=0)
    p.add_argument("--tol", type=float, default=1e-3)
    p.add_argument("--noise", default="0,0.1,0.5", help="warm_start_noise values to compare")
    p.add_argument("--skip-overhead", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not args.skip_overhead:
        overhead(args)
    warm_start(args)


if __name__ == "__main__":
    main()
