"""Stochastic trace estimation: Hutchinson (1989) and Hutch++ (Meyer, Musco, Musco, Woodruff 2021).

Hutchinson: ``tr(A) ≈ mean_i z_iᵀ A z_i`` over Rademacher ``z_i``; unbiased, variance
``2(‖A‖_F² − Σ A_ii²)/m``. Hutch++ spends a third of its budget on a sketch ``Q`` of A's dominant
range, computes ``tr(QᵀAQ)`` exactly, and runs Hutchinson only on the deflated rest
``(I − QQᵀ)A(I − QQᵀ)``, which cuts the variance when A has a few large eigenvalues — as Hessians do.
The standard error reported is that of the stochastic part (the sample standard deviation of the
quadratic forms over √count); the deflated part's trace is exact.

Example:
    >>> import torch
    >>> A = torch.diag(torch.arange(1.0, 6.0, dtype=torch.float64))
    >>> est = hutchinson(lambda v: A @ v, 5, num_matvecs=200, seed=0, dtype=torch.float64)
    >>> est.value  # diagonal A: every Rademacher form equals the trace
    15.0
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ignite_landscape.linalg.random import generator, rademacher

__all__ = ["TraceEstimate", "hutchinson", "hutchpp", "TRACE_METHODS"]

TRACE_METHODS = ("hutchinson", "hutch++")
MatVec = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class TraceEstimate:
    """A stochastic trace estimate.

    Attributes:
        value: the estimate.
        stderr: its standard error (0 when the estimate is exact).
        num_matvecs: operator applications used.
        method: ``"hutchinson"`` or ``"hutch++"``.
        samples: the individual quadratic forms of the stochastic part.
    """

    value: float
    stderr: float
    num_matvecs: int
    method: str
    samples: list[float]


def _summary(samples: list[float]) -> tuple[float, float]:
    t = torch.tensor(samples, dtype=torch.float64)
    mean = float(t.mean())
    stderr = float(t.std(unbiased=True) / math.sqrt(len(samples))) if len(samples) > 1 else float("inf")
    return mean, stderr


def hutchinson(
    matvec: MatVec,
    n: int,
    *,
    num_matvecs: int = 100,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> TraceEstimate:
    """Hutchinson's estimator with ``num_matvecs`` Rademacher probes."""
    if num_matvecs < 2:
        raise ValueError(f"num_matvecs must be at least 2 to give a standard error, got {num_matvecs}")
    g = generator(seed)
    samples = []
    for _ in range(num_matvecs):
        z = rademacher(n, g, dtype=dtype, device=device)
        samples.append(float(torch.dot(z, matvec(z)).double()))
    value, stderr = _summary(samples)
    return TraceEstimate(value, stderr, num_matvecs, "hutchinson", samples)


def hutchpp(
    matvec: MatVec,
    n: int,
    *,
    num_matvecs: int = 99,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> TraceEstimate:
    """Hutch++ with a budget of ``num_matvecs`` operator applications (split in thirds)."""
    if num_matvecs < 6:
        raise ValueError(f"num_matvecs must be at least 6 for Hutch++, got {num_matvecs}")
    s = num_matvecs // 3
    rest = num_matvecs - 2 * s
    g = generator(seed)
    sketch = torch.stack([matvec(rademacher(n, g, dtype=dtype, device=device)) for _ in range(s)], dim=1)
    Q, _ = torch.linalg.qr(sketch)
    exact = sum(float(torch.dot(Q[:, i], matvec(Q[:, i].contiguous())).double()) for i in range(Q.shape[1]))
    samples = []
    for _ in range(rest):
        z = rademacher(n, g, dtype=dtype, device=device)
        z = z - Q @ (Q.T @ z)
        samples.append(float(torch.dot(z, matvec(z)).double()))
    value, stderr = _summary(samples)
    return TraceEstimate(exact + value, stderr, 2 * s + rest, "hutch++", samples)
