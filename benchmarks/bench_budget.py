"""A shared overhead budget on real training: measured overhead against the fraction asked for.

The digits CNN trains (SGD η=0.05, batch 32) once without landscape handlers and once with several
handlers firing every ``--every`` iterations, far more often than a ``Budget(--fraction)`` shared by
all of them allows. The measured overhead is ``(wall with handlers − wall without) / wall without``;
the plain run is repeated after the watched one, and both plain times are printed, so the noise of a
shared machine shows. ``--clock cpu`` gives the budget the process CPU time (``time.process_time``)
instead of the wall clock: on a machine shared with other jobs the wall time of identical runs varies
by tens of percent, their CPU time far less, so the overhead is then also measured in CPU time.
Per handler: firings that ran, firings skipped, seconds per firing. Training is also checked to be
bit-identical with and without the handlers.

Example:
    python benchmarks/bench_budget.py                    # 150 epochs, Budget(0.25), wall clock
    python benchmarks/bench_budget.py --clock cpu        # the same in process CPU time
    python benchmarks/bench_budget.py --epochs 3 --quick  # a smoke run (the test suite's)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Events, create_supervised_trainer
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ignite_landscape as il  # noqa: E402
from examples.models import DigitsCNN, digits_loaders  # noqa: E402

__all__ = ["main", "make_handlers", "train"]


def make_handlers(model: nn.Module, probe: il.Probe, quick: bool = False) -> list[il.LandscapeHandler]:
    """The watched run's handlers (lighter settings with ``quick``)."""
    if quick:
        return [
            il.HessianSpectrum(model, probe, k=1, max_iter=5),
            il.HessianTrace(model, probe, num_hvps=6),
            il.Sharpness(model, probe),
            il.LossSlice(model, probe, dims=1, steps=5),
        ]
    return [
        il.HessianSpectrum(model, probe, k=2),
        il.HessianTrace(model, probe, num_hvps=12),
        il.Sharpness(model, probe),
        il.LossSlice(model, probe, dims=1, steps=11),
        il.ModeConnectivity(model, probe, steps=5),
        il.GradientNoiseScale(model, probe),
    ]


def train(args: argparse.Namespace, watched: bool) -> dict[str, Any]:
    """One training run; with ``watched`` the handlers share one budget."""
    torch.manual_seed(args.seed)
    loader, _ = digits_loaders(batch_size=32, seed=args.seed)
    model = DigitsCNN()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    trainer = create_supervised_trainer(model, optimizer, nn.CrossEntropyLoss())
    handlers: list[il.LandscapeHandler] = []
    budget = il.Budget(args.fraction, clock=time.process_time if args.clock == "cpu" else time.perf_counter)
    if watched:
        x, y = loader.dataset.tensors
        probe = il.Probe((x, y), nn.CrossEntropyLoss(), num_samples=args.probe)
        handlers = make_handlers(model, probe, args.quick)
        for h in handlers:
            h.attach(trainer, Events.ITERATION_COMPLETED(every=args.every), budget=budget)
    losses: list[float] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output))
    t0, c0 = time.perf_counter(), time.process_time()
    trainer.run(loader, max_epochs=args.epochs)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "wall": wall,
        "cpu": cpu,
        "handlers": handlers,
        "budget": budget,
        "iterations": trainer.state.iteration,
        "losses": losses,
        "params": [p.detach().clone() for p in model.parameters()],
    }


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=150)
    p.add_argument("--fraction", type=float, default=0.25)
    p.add_argument("--every", type=int, default=5, help="handlers fire every N iterations (budget permitting)")
    p.add_argument("--probe", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="light handler settings (smoke test)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="what the budget (and overhead) counts")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    plain = train(args, watched=False)
    watched = train(args, watched=True)
    plain_after = train(args, watched=False)
    overheads = {}
    for kind in ("wall", "cpu"):
        base = (plain[kind] + plain_after[kind]) / 2
        overheads[kind] = (watched[kind] - base) / base
    overhead = overheads[args.clock]
    identical = plain["losses"] == watched["losses"] and all(
        torch.equal(a, b) for a, b in zip(plain["params"], watched["params"])
    )
    budget = watched["budget"]
    wanted = watched["iterations"] // args.every
    print(
        f"\n== Budget({args.fraction:g}) shared by {len(watched['handlers'])} handlers, each wanting to fire every "
        f"{args.every} iterations ({wanted} times); {args.epochs} epochs, probe {args.probe}, "
        f"{torch.get_num_threads()} thread(s)"
    )
    print(f"{'handler':<14}{'ran':>6}{'skipped':>9}{'s/firing':>10}")
    for h in watched["handlers"]:
        secs = [f.seconds for f in h.history]
        print(f"{h.name:<14}{len(h.history):>6}{h.skipped:>9}{sum(secs) / max(len(secs), 1):>10.3f}")
    for kind in ("wall", "cpu"):
        mean = (plain[kind] + plain_after[kind]) / 2
        print(
            f"{kind:>4} time: plain {plain[kind]:.2f} s before, {plain_after[kind]:.2f} s after (spread "
            f"{abs(plain[kind] - plain_after[kind]) / mean:.1%} of their mean); with handlers {watched[kind]:.2f} s "
            f"-> overhead (with - without) / without = {overheads[kind]:.3f}"
        )
    print(
        f"budget's own books ({args.clock} clock): landscape {budget.landscape_seconds:.2f} s, training "
        f"{budget.training_seconds:.2f} s (ratio {budget.landscape_seconds / budget.training_seconds:.3f})"
    )
    print(f"measured overhead in {args.clock} time: {overhead:.3f} (asked for {args.fraction:g})")
    print(f"training bit-identical with and without the handlers: {identical}")
    return {
        "overhead": overhead,
        "ratio": budget.landscape_seconds / budget.training_seconds,
        "min_firings": min(len(h.history) for h in watched["handlers"]),
        "identical": float(identical),
    }


if __name__ == "__main__":
    main()
