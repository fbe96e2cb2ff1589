"""Lanczos with full reorthogonalization for extreme eigenpairs of a symmetric operator.

The operator is any ``matvec(v) -> A v`` on flat vectors; nothing here knows about models.

Every new Lanczos vector is orthogonalized twice against all previous ones (classical
Gram-Schmidt, "twice is enough"), so no spurious copies of converged eigenvalues appear, unlike
plain three-term Lanczos or power iteration. After each step the Ritz pairs of the tridiagonal
matrix ``T_j`` are computed; the residual of Ritz pair ``(θ_i, y_i)`` is ``‖A y_i − θ_i y_i‖ =
β_j |s_{j,i}|`` and the iteration stops when every wanted pair has a residual ``≤ tol·|θ_i|``.
When the Krylov space becomes invariant (``β_j ≈ 0``) the iteration restarts with a random vector
orthogonal to it, so eigenvalues the start vector did not reach (repeated ones included) are still
found; no shift is used, so negative eigenvalues come out as they are.

Example:
    >>> import torch
    >>> A = torch.diag(torch.arange(1.0, 11.0, dtype=torch.float64))
    >>> res = lanczos(lambda v: A @ v, 10, k=2, tol=1e-10, dtype=torch.float64)
    >>> [round(x, 8) for x in res.eigenvalues.tolist()]
    [10.0, 9.0]
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ignite_landscape.linalg.random import gaussian

__all__ = ["WHICH", "LanczosResult", "lanczos", "lanczos_tridiagonal", "tridiagonal_eigh"]

WHICH = ("largest", "smallest", "both")
MatVec = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class LanczosResult:
    """Extreme eigenpairs found by :func:`lanczos`.

    Attributes:
        eigenvalues: float64, descending for ``"largest"`` and ``"both"`` (the k largest then the k
            smallest), ascending for ``"smallest"``.
        residuals: ``‖A y − θ y‖`` of each Ritz pair, same order.
        converged: whether each residual met ``tol·|θ|``.
        num_matvecs: operator applications used.
        eigenvectors: unit Ritz vectors, one row per eigenvalue, when asked for.
        ritz_values: every Ritz value of the final tridiagonal matrix, ascending.
    """

    eigenvalues: torch.Tensor
    residuals: torch.Tensor
    converged: torch.Tensor
    num_matvecs: int
    eigenvectors: torch.Tensor | None = None
    ritz_values: torch.Tensor | None = None

    @property
    def all_converged(self) -> bool:
        """True when every wanted eigenvalue met the tolerance."""
        return bool(self.converged.all())


def tridiagonal_eigh(alphas: list[float], betas: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigen-decomposition (ascending) of the symmetric tridiagonal matrix with diagonal ``alphas``
    and off-diagonal ``betas`` (``len(betas) == len(alphas) - 1``), in float64."""
    m = len(alphas)
    T = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if m > 1:
        off = torch.tensor(betas[: m - 1], dtype=torch.float64)
        T += torch.diag(off, 1) + torch.diag(off, -1)
    return torch.linalg.eigh(T)


def _orthogonalize(w: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    # Two passes of classical Gram-Schmidt keep the basis orthogonal to working precision.
    for _ in range(2):
        w = w - basis.T @ (basis @ w)
    return w


def lanczos_tridiagonal(
    matvec: MatVec,
    v0: torch.Tensor,
    num_steps: int,
    *,
    restart_seed: int | None = None,
    stop: Callable[[list[float], list[float], int], bool] | None = None,
) -> tuple[list[float], list[float], torch.Tensor]:
    """Run up to ``num_steps`` Lanczos steps with full reorthogonalization.

    Args:
        matvec: the symmetric operator.
        v0: start vector (normalized here).
        num_steps: maximum number of steps (operator applications).
        restart_seed: on an invariant subspace, continue from a random vector orthogonal to it drawn
            with this seed; ``None`` stops there instead (what quadrature wants).
        stop: ``stop(alphas, betas, j)`` called after each step; returning True ends the iteration.

    Returns:
        ``(alphas, betas, basis)``: the tridiagonal entries (``betas[j]`` couples steps j and j+1)
        and the orthonormal basis, one vector per row.
    """
    n = v0.numel()
    num_steps = min(num_steps, n)
    basis = torch.zeros(num_steps, n, dtype=v0.dtype, device=v0.device)
    norm = torch.linalg.vector_norm(v0)
    if not torch.isfinite(norm) or norm == 0:
        raise ValueError("v0 must be a finite, nonzero vector")
    basis[0] = v0 / norm
    alphas: list[float] = []
    betas: list[float] = []
    restarts = 0
    for j in range(num_steps):
        q = basis[j]
        w = matvec(q)
        alpha = float(torch.dot(q, w))
        alphas.append(alpha)
        if not math.isfinite(alpha):
            break
        w = _orthogonalize(w, basis[: j + 1])
        beta = float(torch.linalg.vector_norm(w))
        if not math.isfinite(beta):
            betas.append(beta)
            break
        if stop is not None and stop(alphas, betas + [beta], j):
            betas.append(beta)
            break
        if j + 1 == num_steps:
            betas.append(beta)
            break
        scale = max(abs(a) for a in alphas) + max(betas, default=0.0)
        if beta <= 1e-10 * max(scale, 1e-300):
            # Invariant subspace: its Ritz values are exact eigenvalues.
            if restart_seed is None:
                betas.append(0.0)
                break
            restarts += 1
            fresh = gaussian(n, restart_seed + 7919 * restarts, dtype=v0.dtype, device=v0.device)
            fresh = _orthogonalize(fresh, basis[: j + 1])
            betas.append(0.0)
            basis[j + 1] = fresh / torch.linalg.vector_norm(fresh)
        else:
            betas.append(beta)
            basis[j + 1] = w / beta
    return alphas, betas, basis[: len(alphas)]


def _wanted(m: int, k: int, which: str) -> list[int]:
    k = min(k, m)
    if which == "largest":
        return list(range(m - 1, m - 1 - k, -1))
    if which == "smallest":
        return list(range(k))
    top = list(range(m - 1, m - 1 - k, -1))
    return top + [i for i in range(min(k, m) - 1, -1, -1) if i not in top]


def lanczos(
    matvec: MatVec,
    n: int,
    *,
    k: int = 5,
    which: str = "largest",
    tol: float = 1e-4,
    max_iter: int | None = None,
    v0: torch.Tensor | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    return_eigenvectors: bool = False,
) -> LanczosResult:
    """Extreme eigenvalues of the symmetric ``n × n`` operator ``matvec``.

    Args:
        matvec: ``v -> A v`` on flat vectors of length ``n``.
        n: dimension of the operator.
        k: how many eigenvalues at each wanted end.
        which: ``"largest"``, ``"smallest"`` (algebraic: negative eigenvalues come first) or
            ``"both"`` (k at each end).
        tol: stop when every wanted Ritz residual is ``≤ tol·|θ|``.
        max_iter: maximum operator applications (default ``min(n, max(100, 4k))``).
        v0: start vector (e.g. the sum of last time's eigenvectors); random Gaussian by default.
        seed: seed of the random start and restart vectors.
        dtype: dtype of the Lanczos vectors (the operator's).
        device: device of the Lanczos vectors.
        return_eigenvectors: also return the Ritz vectors.

    Raises:
        ValueError: on ``k < 1``, ``k ≥ n`` (``2k > n`` for ``"both"``), unknown ``which``,
            ``tol ≤ 0`` or ``max_iter < 1``.
    """
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    if k < 1 or k >= n or (which == "both" and 2 * k > n):
        raise ValueError(f"k must satisfy 1 <= k < number of parameters ({n}), got k={k}")
    if not tol > 0:
        raise ValueError(f"tol must be positive, got {tol}")
    if max_iter is None:
        max_iter = min(n, max(100, 4 * k))
    if max_iter < 1:
        raise ValueError(f"max_iter must be positive, got {max_iter}")
    need = 2 * k if which == "both" else k
    max_iter = max(min(max_iter, n), need)
    if v0 is None:
        v0 = gaussian(n, seed, dtype=dtype, device=device)
    else:
        v0 = v0.detach().reshape(-1).to(dtype=dtype, device=device)
        if v0.numel() != n:
            raise ValueError(f"v0 must have {n} entries, got {v0.numel()}")

    def converged_now(alphas: list[float], betas: list[float], j: int) -> bool:
        m = len(alphas)
        if m < need:
            return False
        theta, S = tridiagonal_eigh(alphas, betas)
        res = abs(betas[-1]) * S[-1].abs()
        idx = _wanted(m, k, which)
        floor = 1e-12 * float(theta.abs().max())
        return bool(all(res[i] <= tol * max(abs(theta[i]), floor) for i in idx))

    alphas, betas, basis = lanczos_tridiagonal(matvec, v0, max_iter, restart_seed=seed + 1, stop=converged_now)
    m = len(alphas)
    if not all(math.isfinite(a) for a in alphas) or not all(math.isfinite(b) for b in betas):
        warnings.warn(
            "lanczos: the operator returned non-finite values; eigenvalues are NaN", RuntimeWarning, stacklevel=2
        )
        count = 2 * k if which == "both" else k
        nan = torch.full((count,), float("nan"), dtype=torch.float64)
        return LanczosResult(nan, nan.clone(), torch.zeros(count, dtype=torch.bool), m)
    theta, S = tridiagonal_eigh(alphas, betas)
    last_beta = abs(betas[-1]) if len(betas) == m else 0.0
    res_all = last_beta * S[-1].abs()
    idx = _wanted(m, k, which)
    floor = 1e-12 * float(theta.abs().max())
    eig = theta[idx]
    res = res_all[idx]
    conv = res <= tol * torch.clamp(eig.abs(), min=floor)
    vecs = None
    if return_eigenvectors:
        coeffs = S[:, idx].to(dtype=basis.dtype, device=basis.device)
        vecs = (basis.T @ coeffs).T.contiguous()
    return LanczosResult(eig, res, conv, m, vecs, theta)
