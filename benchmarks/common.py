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
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from examples.models import DigitsCNN, digits_loaders, digits_tensors  # noqa: E402

__all__ = ["ROOT", "int_options", "trained_digits_cnn", "probe_batch", "median_time"]


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


def median_time(fn: Callable[[], Any], repeats: int = 3) -> tuple[float, Any]:
    """Median wall time of ``repeats`` calls of ``fn`` (seconds) and the last call's result."""
    times = []
    out = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out
