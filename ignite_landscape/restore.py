"""The restoring context every measurement runs inside.

Watching training must not change it. :class:`preserved_state` snapshots everything a probe could
touch and puts it back bit-for-bit on exit, on success and on exception alike:

* parameter values and their ``requires_grad`` flags,
* the ``.grad`` of every parameter: ``None`` stays ``None``; an existing tensor keeps its identity
  (DDP bucket views and optimizers may hold it) and its values,
* every buffer (BatchNorm running statistics, ``num_batches_tracked``),
* the train/eval flag of every submodule,
* the RNG streams of torch (CPU and every CUDA device), numpy and :mod:`random`.

Example:
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout())
    >>> with preserved_state(model):
    ...     _ = model.eval()
    ...     _ = torch.rand(3)  # consumes the global RNG; restored on exit
    >>> model.training
    True
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

__all__ = ["RNGState", "preserved_state"]


class RNGState:
    """A snapshot of every global RNG stream that training code may draw from."""

    def __init__(self) -> None:
        self.torch_cpu = torch.get_rng_state()
        self.torch_cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and _cuda_initialized() else None
        self.numpy = np.random.get_state()
        self.python = random.getstate()

    def restore(self) -> None:
        """Put every stream back where it was when the snapshot was taken."""
        torch.set_rng_state(self.torch_cpu)
        if self.torch_cuda is not None:
            torch.cuda.set_rng_state_all(self.torch_cuda)
        np.random.set_state(self.numpy)
        random.setstate(self.python)


def _cuda_initialized() -> bool:
    # Reading CUDA RNG state would initialise CUDA in a CPU-only run; skip it when CUDA is unused.
    return torch.cuda.is_initialized()


@contextmanager
def preserved_state(model: nn.Module) -> Iterator[nn.Module]:
    """Run a block with ``model`` and the global RNGs restored bit-for-bit afterwards.

    Args:
        model: the module to protect (its submodules, parameters and buffers included).

    Yields:
        ``model`` itself.
    """
    rng = RNGState()
    modes = [(m, m.training) for m in model.modules()]
    params = list(model.parameters())
    values = [p.detach().clone() for p in params]
    flags = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    grad_values = [None if g is None else g.detach().clone() for g in grads]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield model
    finally:
        with torch.no_grad():
            for p, v, flag, g, gv in zip(params, values, flags, grads, grad_values):
                if not torch.equal(p, v):
                    p.copy_(v)
                if p.requires_grad != flag:
                    p.requires_grad_(flag)
                if p.grad is not g:
                    p.grad = g
                if g is not None and not torch.equal(g, gv):
                    g.copy_(gv)
            for b, v in buffers:
                if not torch.equal(b, v):
                    b.copy_(v)
        for m, training in modes:
            m.training = training
        rng.restore()
