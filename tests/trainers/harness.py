"""Run one trainer twice, with and without landscape handlers, and compare the training bit for bit.

A trainer shape is a ``build(with_handlers) -> Job`` function: it seeds, builds the model, optimizer,
loader and Ignite trainer, and (when asked) the probe and handlers. :func:`run_both` trains both
versions for the same number of epochs and asserts that every parameter, buffer, optimizer state,
per-iteration loss and the global RNG states end up identical; it returns the run with handlers so
the test can check its numbers against a reference.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from torch import nn

from ignite_landscape.handlers.base import LandscapeHandler
from tests.helpers import assert_same_tree

__all__ = ["Job", "run_both", "dense_top", "dense_hessian_of", "snapshot", "assert_finite_history"]


@dataclass
class Job:
    """One configured training run."""

    trainer: Engine
    model: nn.Module
    optimizer: torch.optim.Optimizer
    data: Iterable[Any]
    handlers: list[LandscapeHandler] = field(default_factory=list)
    probe: Any = None
    losses: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def attach_handlers(self, event: Any = Events.EPOCH_COMPLETED) -> None:
        """Attach every handler in :attr:`handlers` to the trainer at ``event``."""
        for h in self.handlers:
            h.attach(self.trainer, event)


def snapshot(job: Job) -> dict[str, Any]:
    """Everything training owns that a probe could disturb."""
    return {
        "state": {k: v.detach().clone() for k, v in job.model.state_dict().items()},
        "grads": {n: None if p.grad is None else p.grad.clone() for n, p in job.model.named_parameters()},
        "training": [m.training for m in job.model.modules()],
        "optimizer": copy.deepcopy(job.optimizer.state_dict()["state"]),
        "losses": list(job.losses),
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": np.random.get_state()[1].copy(),
        "python_rng": random.getstate(),
    }


def _train(build: Callable[[bool], Job], with_handlers: bool, epochs: int, seed: int) -> tuple[Job, dict[str, Any]]:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    job = build(with_handlers)

    @job.trainer.on(Events.ITERATION_COMPLETED)
    def record(engine: Engine) -> None:
        out = engine.state.output
        job.losses.append(float(out) if not isinstance(out, float) else out)

    job.trainer.run(job.data, max_epochs=epochs)
    return job, snapshot(job)


def run_both(build: Callable[[bool], Job], epochs: int = 2, seed: int = 0) -> Job:
    """Train without and with handlers; assert bit-identical training; return the run with handlers."""
    _, plain = _train(build, False, epochs, seed)
    job, watched = _train(build, True, epochs, seed)
    assert job.handlers, "the build function attached no handler"
    assert_same_tree(plain, watched, "training")
    return job


def assert_finite_history(job: Job, firings: int | None = None) -> None:
    """Every handler fired (``firings`` times if given) without failure and with finite scalars."""
    for h in job.handlers:
        assert h.history, h.name
        if firings is not None:
            assert len(h.history) == firings, (h.name, len(h.history))
        for f in h.history:
            assert not f.failed, (h.name, f.error)
            bad = {k: v for k, v in f.scalars.items() if not math.isfinite(v)}
            assert not bad, (h.name, bad)


def dense_hessian_of(loss: Callable[..., torch.Tensor], params: list[torch.Tensor]) -> torch.Tensor:
    """The P×P Hessian of ``loss(*params)``, blocks flattened in order."""
    H = torch.autograd.functional.hessian(loss, tuple(p.detach() for p in params))
    sizes = [p.numel() for p in params]
    return torch.cat(
        [torch.cat([H[i][j].reshape(sizes[i], sizes[j]) for j in range(len(sizes))], 1) for i in range(len(sizes))]
    )


def dense_top(
    model: nn.Module,
    x: Any,
    y: torch.Tensor,
    loss_fn: Callable[[Any, Any], torch.Tensor] = F.cross_entropy,
    *,
    k: int = 2,
    names: list[str] | None = None,
    transform: Callable[[Any], Any] = lambda out: out,
    train: bool = False,
) -> torch.Tensor:
    """Top-k eigenvalues of the dense float64 Hessian of ``loss_fn(transform(model(x)), y)`` (on a float64 copy)."""
    from torch.func import functional_call

    twin = copy.deepcopy(model).double().train(train)
    named = dict(twin.named_parameters())
    names = names if names is not None else [n for n, p in named.items() if p.requires_grad]
    fixed = {n: p.detach() for n, p in named.items() if n not in names}
    buffers = {n: b.clone() for n, b in twin.named_buffers()}
    x = x.double() if isinstance(x, torch.Tensor) and x.is_floating_point() else x

    def loss(*ps: torch.Tensor) -> torch.Tensor:
        out = functional_call(twin, {**fixed, **buffers, **dict(zip(names, ps))}, (x,))
        return loss_fn(transform(out), y)

    return torch.linalg.eigvalsh(dense_hessian_of(loss, [named[n] for n in names])).flip(0)[:k]
