"""Shared pieces of the benchmarks: a briefly trained digits CNN and its fixed probe batch.

Everything is seeded with private generators, so two runs train bit-identical models (for a fixed
``torch.set_num_threads``).

Example:
    >>> model, (x, y) = trained_digits_cnn(epochs=1), probe_batch(64)  # doctest: +SKIP
    >>> x.shape, y.shape  # doctest: +SKIP
    (torch.Size([64, 1, 8, 8]), torch.Size([64]))
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from examples.models import DigitsCNN, digits_loaders, digits_tensors  # noqa: E402

__all__ = [
    "ROOT",
    "int_options",
    "timing_options",
    "quick_option",
    "parse_quick",
    "trained_digits_cnn",
    "probe_batch",
]


def int_options(doc: str, **defaults: int) -> argparse.ArgumentParser:
    """A parser described by the first paragraph of ``doc``, with one integer option per keyword.

    ``probe_samples=512`` adds ``--probe-samples`` (default 512); a script adds its other options itself.

    Example:
        >>> int_options("Time it.", samples=512, batch_size=128).parse_args(["--batch-size", "64"])
        Namespace(samples=512, batch_size=64)
    """
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    for name, default in defaults.items():
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=default)
    return parser


def timing_options(doc: str, quick: str, epochs: tuple[int, int], repeats: tuple[int, int]) -> argparse.ArgumentParser:
    """The options of a benchmark that times tools against each other, described by the first line of ``doc``.

    ``--quick`` (``quick`` says what it cuts), ``--threads``, and ``--epochs``/``--repeats`` with ``(full, quick)``
    defaults that :func:`parse_quick` applies.

    Example:
        >>> parser = timing_options("Time it.", "fewer epochs", epochs=(4, 2), repeats=(3, 1))
        >>> args = parse_quick(parser, ["--quick", "--repeats", "5"])
        >>> args.epochs, args.repeats, args.threads
        (2, 5, 1)
    """
    parser = argparse.ArgumentParser(description=doc.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads for every tool (default 1)")
    quick_option(parser, "--epochs", epochs, "training epochs")
    quick_option(parser, "--repeats", repeats, "timed rounds per tool")
    return parser


def quick_option(parser: argparse.ArgumentParser, flag: str, defaults: tuple[int, int], what: str) -> None:
    """Add an integer option whose default is ``defaults[0]``, or ``defaults[1]`` with ``--quick``."""
    parser.add_argument(flag, type=int, default=None, help=f"{what} (default {defaults[0]}, quick: {defaults[1]})")
    quick = parser.get_default("quick_defaults") or {}
    parser.set_defaults(quick_defaults={**quick, flag.lstrip("-").replace("-", "_"): defaults})


def parse_quick(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``; every :func:`quick_option` not given takes its full or quick default."""
    args = parser.parse_args(argv)
    for name, (full, fast) in args.quick_defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, fast if args.quick else full)
    return args


def trained_digits_cnn(epochs: int = 4, seed: int = 0, lr: float = 3e-3, batch_size: int = 64) -> DigitsCNN:
    """A :class:`DigitsCNN` trained ``epochs`` epochs with Adam on the digits training split.

    The initialization comes from ``torch.manual_seed(seed)`` and the shuffling from the loader's own
    seeded generator; the global RNG is restored afterwards so callers see no side effect. Training runs on
    one thread (restored afterwards) so the weights do not depend on the caller's ``torch.set_num_threads``.
    """
    rng = torch.get_rng_state()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        torch.manual_seed(seed)
        model = DigitsCNN()
        train, _ = digits_loaders(batch_size=batch_size, seed=seed)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        model.train()
        for _ in range(epochs):
            for x, y in train:
                opt.zero_grad(set_to_none=True)
                torch.nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
        model.eval()
        for p in model.parameters():
            p.grad = None
    finally:
        torch.set_rng_state(rng)
        torch.set_num_threads(threads)
    return model


def probe_batch(num_samples: int = 512, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``num_samples`` samples of the (fixed-permutation) digits training split."""
    x_train, y_train, _, _ = digits_tensors(seed=seed)
    return x_train[:num_samples].clone(), y_train[:num_samples].clone()
