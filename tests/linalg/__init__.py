"""The matrix-free routines of ``ignite_landscape.linalg`` called directly on explicit dense float64 matrices."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["rotated", "Counting"]


def rotated(eigenvalues: Sequence[float] | torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A dense symmetric float64 matrix ``Q diag(eigenvalues) Qᵀ`` with a random orthogonal ``Q``, and ``Q``.

    Column ``i`` of ``Q`` is the eigenvector of ``eigenvalues[i]``: every coordinate of it is generic, so
    no routine can profit from a sparse or axis-aligned structure.
    """
    lam = torch.as_tensor(eigenvalues, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    Q, R = torch.linalg.qr(torch.randn(len(lam), len(lam), generator=g, dtype=torch.float64))
    Q = Q * torch.sign(torch.diagonal(R))  # Haar-distributed, not biased by the QR's sign convention
    A = (Q * lam) @ Q.T
    return 0.5 * (A + A.T), Q


class Counting:
    """``v -> A v`` for a dense ``A``, counting its calls (routines report how many they made)."""

    def __init__(self, A: torch.Tensor) -> None:
        self.A = A
        self.calls = 0

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.A.to(v.dtype) @ v
