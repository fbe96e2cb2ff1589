"""What one product with each curvature matrix costs, as a multiple of one Hessian-vector product.

A :class:`~examples.models.DigitsCNN` trained a few seeded epochs; the probe is the first ``--samples`` training
samples (32 and 512 by default). In one probe session per matrix (``curvature_operator``: ``"hessian"``,
``"ggn"``, ``"fisher"``, ``"empirical_fisher"``), after a warm-up product, the products are timed in rounds that
visit every matrix once (the order rotating between rounds), so load from other jobs falls on all of them alike;
the table has the median seconds per product and its ratio to the Hessian's median. One gradient
(``loss_and_grad``) is timed in the same rounds as a unit a user knows.

Example:
    Run from the repository root::

        python benchmarks/bench_products.py                 # probes of 32 and 512 samples
        python benchmarks/bench_products.py --quick         # one epoch of training, fewer rounds
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import parse_quick, probe_batch, timing_options, trained_digits_cnn  # noqa: E402

from ignite_landscape import Probe, curvature_operator  # noqa: E402

__all__ = ["MATRICES", "product_seconds", "main"]

MATRICES = ("hessian", "ggn", "fisher", "empirical_fisher")


def product_seconds(model: nn.Module, probe: Probe, rounds: int) -> dict[str, float]:
    """Median seconds of one product with each matrix of :data:`MATRICES`, and of one gradient (``"gradient"``).

    Example:
        >>> probe = Probe((torch.randn(8, 3), torch.randint(0, 2, (8,))), nn.functional.cross_entropy)
        >>> sorted(product_seconds(nn.Linear(3, 2), probe, rounds=1))
        ['empirical_fisher', 'fisher', 'ggn', 'gradient', 'hessian']
    """
    n = sum(p.numel() for p in model.parameters())
    v = torch.randn(n, generator=torch.Generator().manual_seed(1))
    times: dict[str, list[float]] = {name: [] for name in (*MATRICES, "gradient")}
    with ExitStack() as stack:
        sessions = {name: stack.enter_context(probe.session(model)) for name in MATRICES}
        products = {name: curvature_operator(s, name) for name, s in sessions.items()}
        ops: dict[str, Callable[[], object]] = {name: (lambda op=op: op(v)) for name, op in products.items()}
        ops["gradient"] = sessions["hessian"].loss_and_grad
        names = list(ops)
        for name in names:  # warm-up: the first product builds each session's cached graph
            ops[name]()
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                t0 = time.perf_counter()
                ops[name]()
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = timing_options(__doc__, "one epoch of training and 5 rounds", epochs=(4, 1), repeats=(31, 5))
    parser.add_argument("--samples", type=int, nargs="+", default=[32, 512], help="probe sizes (default 32 512)")
    args = parse_quick(parser, argv)
    torch.set_num_threads(args.threads)
    model = trained_digits_cnn(epochs=args.epochs, seed=0)
    print(
        f"DigitsCNN ({sum(p.numel() for p in model.parameters())} parameters), trained {args.epochs} epochs; "
        f"median of {args.repeats} rounds, {torch.get_num_threads()} thread(s)"
    )
    print(f"{'probe':>6}  {'product':<18} {'ms':>9} {'x HVP':>7}")
    for samples in args.samples:
        x, y = probe_batch(samples)
        seconds = product_seconds(model, Probe((x, y), nn.functional.cross_entropy), args.repeats)
        for name, s in seconds.items():
            print(f"{samples:>6}  {name:<18} {1000 * s:>9.2f} {s / seconds['hessian']:>7.2f}")


if __name__ == "__main__":
    main()
