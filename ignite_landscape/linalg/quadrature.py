"""Stochastic Lanczos quadrature (SLQ) for the spectral density of a symmetric operator.

For a unit start vector ``v``, ``m`` Lanczos steps give a tridiagonal ``T_m = S Θ Sᵀ``; the nodes
``θ_j`` with weights ``τ_j = S_{0j}²`` form an m-point Gauss quadrature of the spectral measure
``Σ_i (vᵀu_i)² δ(λ − λ_i)``, exact for polynomials of degree ``≤ 2m − 1``:
``Σ_j τ_j θ_j^r = vᵀ A^r v``. Averaging over random ``v`` estimates the normalized density of
eigenvalues ``(1/n) Σ_i δ(λ − λ_i)`` (Ghorbani, Krishnan, Xiao 2019; Lin, Saad, Yang 2016).

Example:
    >>> import torch
    >>> A = torch.diag(torch.tensor([-1.0, 0.5, 2.0], dtype=torch.float64))
    >>> q = stochastic_lanczos_quadrature(lambda v: A @ v, 3, num_steps=3, num_runs=2, dtype=torch.float64)
    >>> q.nodes.shape
    torch.Size([2, 3])
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ignite_landscape.linalg.lanczos import lanczos_tridiagonal, tridiagonal_eigh
from ignite_landscape.linalg.random import rademacher

__all__ = ["Quadrature", "stochastic_lanczos_quadrature", "gaussian_density"]

MatVec = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Quadrature:
    """Nodes and weights of SLQ, one row per random start vector.

    Attributes:
        nodes: ``(runs, m)`` Ritz values; rows shorter than ``m`` (the Krylov space became invariant:
            a small or low-rank operator) are padded with 0 and weight 0.
        weights: ``(runs, m)`` quadrature weights, each row summing to 1.
        num_matvecs: operator applications used.
        mask: ``(runs, m)``, True at real nodes and False at padding. Everything that reads node
            positions (extremes, grids) must read only these: a padded 0 is not an eigenvalue.
    """

    nodes: torch.Tensor
    weights: torch.Tensor
    num_matvecs: int
    mask: torch.Tensor | None = None

    def real_nodes(self) -> torch.Tensor:
        """The nodes that are Ritz values (padding dropped), flattened."""
        return self.nodes[self.mask] if self.mask is not None else self.nodes.reshape(-1)

    @property
    def lambda_min(self) -> float:
        """Smallest real node."""
        return float(self.real_nodes().min())

    @property
    def lambda_max(self) -> float:
        """Largest real node."""
        return float(self.real_nodes().max())

    def moment(self, r: int) -> float:
        """Estimate of ``(1/n) tr(A^r)``: the mean over runs of ``Σ_j τ_j θ_j^r``."""
        return float((self.weights * self.nodes**r).sum(dim=1).mean())

    @property
    def negative_mass(self) -> float:
        """Share of the spectrum's absolute mass at negative eigenvalues: ``Σ_{λ<0} |λ| / Σ |λ|``.

        Weighting by ``|λ|`` keeps the many eigenvalues at about zero — whose Ritz nodes land on either
        side of 0 from one run to the next — from deciding the number.
        """
        mass = self.weights * self.nodes.abs()
        total = float(mass.sum())
        return float((mass * (self.nodes < 0)).sum()) / total if total > 0 else 0.0

    def negative_fraction(self, tol: float = 1e-2) -> float:
        """Estimated fraction of eigenvalues below ``-tol · max|θ|`` (the count, not the mass).

        The tolerance matters: a quadrature node for the cluster at zero may sit just below it.
        """
        cut = -tol * float(self.real_nodes().abs().max())
        return float((self.weights * (self.nodes < cut)).sum(dim=1).mean())


def stochastic_lanczos_quadrature(
    matvec: MatVec,
    n: int,
    *,
    num_steps: int = 30,
    num_runs: int = 4,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    start_vectors: list[torch.Tensor] | None = None,
) -> Quadrature:
    """Run ``num_runs`` independent ``num_steps``-step Lanczos quadratures.

    Args:
        matvec: the symmetric operator.
        n: its dimension.
        num_steps: Lanczos steps per run (``m``); capped at ``n``.
        num_runs: number of Rademacher start vectors averaged.
        seed: seed of the start vectors.
        dtype: dtype of the Lanczos vectors.
        device: their device.
        start_vectors: explicit start vectors instead of random ones (they are normalized).
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be positive, got {num_steps}")
    if num_runs < 1:
        raise ValueError(f"num_runs must be positive, got {num_runs}")
    m = min(num_steps, n)
    if start_vectors is None:
        start_vectors = [rademacher(n, seed + 104729 * r, dtype=dtype, device=device) for r in range(num_runs)]
    nodes = torch.zeros(len(start_vectors), m, dtype=torch.float64)
    weights = torch.zeros_like(nodes)
    mask = torch.zeros(nodes.shape, dtype=torch.bool)
    used = 0
    for r, v in enumerate(start_vectors):
        alphas, betas, _ = lanczos_tridiagonal(matvec, v, m, restart_seed=None)
        used += len(alphas)
        if not all(math.isfinite(a) for a in alphas) or not all(math.isfinite(b) for b in betas):
            nodes[r] = float("nan")
            weights[r] = float("nan")
            continue
        theta, S = tridiagonal_eigh(alphas, betas)
        nodes[r, : len(alphas)] = theta
        weights[r, : len(alphas)] = S[0] ** 2
        mask[r, : len(alphas)] = True
    return Quadrature(nodes, weights, used, mask)


def gaussian_density(quadrature: Quadrature, grid: torch.Tensor, sigma: float) -> torch.Tensor:
    """The quadrature smoothed with a Gaussian of width ``sigma`` and averaged over runs, on ``grid``.

    The result integrates to 1 over a grid that covers the nodes with a few ``sigma`` to spare.
    """
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    grid = grid.to(torch.float64)
    diff = grid[None, None, :] - quadrature.nodes[:, :, None]
    kernel = torch.exp(-0.5 * (diff / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
    return (quadrature.weights[:, :, None] * kernel).sum(dim=1).mean(dim=0)
