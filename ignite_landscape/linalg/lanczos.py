"""Extreme eigenpairs of a symmetric operator: block Krylov–Rayleigh–Ritz with exact residuals.

The operator is any ``matvec(v) -> A v`` on flat vectors; nothing here knows about models (a Hessian,
a Gauss–Newton matrix or a preconditioned operator are all just a ``matvec``).

:func:`lanczos` keeps an orthonormal basis ``V`` (twice-is-enough Gram–Schmidt against every earlier
vector), the products ``W = A V`` and the projected matrix ``T = V A Vᵀ``. Each step it takes the
Ritz pairs ``(θ, y = Vᵀ s)`` of ``T``, computes every wanted residual ``‖A y − θ y‖ = ‖Wᵀ s − θ Vᵀ s‖``
explicitly from the stored products, and grows the basis by the residuals of the pairs that have not
converged, at most ``num_random`` of them a step, the guard and the least converged first (converged
pairs cost nothing more: soft locking). Started from one vector this is exactly Lanczos with full
reorthogonalization; from a block of random vectors, block Lanczos. Why this design:

* **Multiplicity.** A Krylov space grown from one vector holds one direction of each eigenspace, so
  single-vector Lanczos finds one copy of a repeated eigenvalue. The start block always holds
  ``num_random`` random vectors (2 by default), so eigenvalues of multiplicity up to ``num_random``
  (above the part of the spectrum a warm start already holds) come out with their multiplicity.
* **Warm starts never change the answer.** A warm start deals last time's eigenvectors round-robin
  over the random start vectors and folds each group into its vector (the group's unit sum plus a
  tenth of that random vector), so every start vector keeps a random part and the block has the
  width of a cold start. Convergence asks for more than small wanted residuals: the first Ritz pair
  *beyond* the wanted ones (the guard) must converge too, to the looser ``guard_tol``. Why that
  finds an eigenvalue that has overtaken the old k-th one on a direction the old eigenvectors miss
  (a newcomer): the Rayleigh–Ritz on the whole basis takes up the old directions, so what the basis
  holds outside them is the Krylov space of the random parts, where the newcomer's share relative
  to the rest of the spectrum is exactly what it is in a cold start (scaling a random vector by a
  tenth changes no ratio between its components). Krylov spaces resolve the outermost eigenvalues
  of what they explore first, so the guard — the top of that exploration — cannot converge while
  an eigenvalue above it is still hidden, unless the random parts miss it as a cold start's would;
  and once found, the newcomer is a wanted pair and must converge to ``tol`` itself.
* **Cost.** What a warm start can save is bounded by how far the eigenspace moved: the old
  eigenvectors are worth the first HVPs of a cold start, those that reach their quality, not the
  late ones that separate the top of the spectrum from its neighbours. Dealing the old block over
  the start vectors keeps the polynomial degree per HVP of a cold start, and splitting the old top
  k over two chains (neighbours in eigenvalue order in different chains) means each chain only separates
  members twice as far apart as in one folded vector, whose interpolating polynomial amplifies what the old
  vectors got wrong. Dealing alone (before the guard vector below), tracking the top 5 of the digits CNN
  (``benchmarks/bench_tracking.py``, the README): 0.84× the HVPs of a cold start (one folded vector: 0.93×)
  where the eigenspace turns 11–87° between firings and the old eigenvectors are worth 33–40% of a cold
  start's HVPs; 0.71× (was 0.87×) where it turns 2–5°. A perfect warm start (handed the new eigenvectors
  themselves) would cost 0.33–0.39×: k HVPs of Rayleigh–Ritz plus the random exploration that rules out a
  newcomer. The old vectors as a block of their own (Rayleigh–Ritz on them, then growth by residuals) cost
  1.2–1.3×: refining k vectors at once lowers the polynomial degree per HVP.
* **The guard's vector travels with the eigenvectors.** What slows a warm start where the spectrum moves
  slowly is separating the k-th eigenvalue from the next (0.384 from 0.369 on the digits CNN), the
  direction the top k turns into first. ``guard_vectors`` returns the guard pair's Ritz vector; dealt
  after the eigenvectors (the second chain gets it), it gives that separation a head start: tracking at
  η = 0.01, tol 1e-4 went from 0.71× to 0.66× of cold (seed 1 of the start vectors: 644 → 596 HVPs).
  More of the next Ritz vectors cost more (two: 622, three: 624 against 590 with one): each chain then
  separates more folded members. Measured and dropped, as a two-phase method: Rayleigh–Ritz on the old
  k (or 2k) vectors grown by their residuals until converged, then random chains deflated against that
  basis until their top pair is resolved to 1% — 51–60 HVPs for the first phase and 24–44 for the
  second, over the 75 of a cold start.
* **Honest residuals.** The residuals are recomputed from the stored products, not read off a
  recurrence (which keeps shrinking below what the arithmetic can deliver), and floored at
  ``16·ε·max|θ|`` (ε of the working dtype), so ``converged`` never claims more than float32 gives.

The price is memory: ``V`` and ``W`` hold ``2 × max_iter`` vectors of length ``n``.

Example:
    >>> import torch
    >>> A = torch.diag(torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 4.0], dtype=torch.float64))
    >>> res = lanczos(lambda v: A @ v, 6, k=3, tol=1e-10, dtype=torch.float64)
    >>> [round(x, 8) for x in res.eigenvalues.tolist()]
    [5.0, 5.0, 4.0]
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

# Floor of a reported residual, in units of eps(dtype)·max|θ|: a matvec in floating point is only
# accurate to a modest multiple of that, so no residual below it can be trusted.
PRECISION_FACTOR = 16.0
# A new direction whose part outside the basis is below this share of its norm adds nothing
# reliable (it is rounding noise or nearly in the span) and is not worth a matvec.
_MIN_NEW = 1e-2
# Share of a random vector kept in a folded warm start vector (see _fold): enough that no chain is ever
# confined to an invariant subspace spanned by the old vectors, small enough to keep their head start.
_WARM_NOISE = 0.1


@dataclass
class LanczosResult:
    """Extreme eigenpairs found by :func:`lanczos`.

    Attributes:
        eigenvalues: float64, descending for ``"largest"`` and ``"both"`` (the k largest then the k
            smallest), ascending for ``"smallest"``.
        residuals: ``‖A y − θ y‖`` of each Ritz pair, recomputed from the operator's products and
            floored at the working precision (see the module docstring), same order.
        converged: whether each residual met ``tol·|θ|`` (and the guard pair its looser tolerance).
        num_matvecs: operator applications used.
        eigenvectors: unit Ritz vectors, one row per eigenvalue, when asked for.
        ritz_values: every Ritz value of the final projected matrix, ascending.
        guard_vectors: with ``eigenvectors``, the unit Ritz vector of each end's guard pair (the first beyond
            the wanted ones; rows, none when the basis has no pair beyond them): a warm start's ``v0`` should
            carry it after the eigenvectors (see the module docstring).
    """

    eigenvalues: torch.Tensor
    residuals: torch.Tensor
    converged: torch.Tensor
    num_matvecs: int
    eigenvectors: torch.Tensor | None = None
    ritz_values: torch.Tensor | None = None
    guard_vectors: torch.Tensor | None = None

    @property
    def all_converged(self) -> bool:
        """True when every wanted eigenvalue met the tolerance."""
        return bool(self.converged.all())


def tridiagonal_eigh(alphas: list[float], betas: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigen-decomposition (ascending, float64) of a symmetric tridiagonal matrix.

    The diagonal is ``alphas`` and the off-diagonal ``betas`` (``len(betas) == len(alphas) - 1``).
    """
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


def _ends(m: int, k: int, which: str) -> list[tuple[list[int], int | None]]:
    """Per wanted end: the wanted Ritz indices (outermost first) and the guard index just inside them."""
    top = (list(range(m - 1, m - 1 - min(k, m), -1)), m - 1 - k if m > k else None)
    bottom = (list(range(min(k, m))), k if m > k else None)
    if which == "largest":
        return [top]
    if which == "smallest":
        return [bottom]
    if m < 2 * k:
        # Not yet enough Ritz values for two disjoint ends: ask for all of them, guard nothing yet.
        return [(list(range(m - 1, -1, -1)), None)]
    guard_top = top[1] if top[1] is not None and top[1] >= k else None
    guard_bottom = bottom[1] if bottom[1] is not None and bottom[1] < m - k else None
    return [(top[0], guard_top), (list(range(k - 1, -1, -1)), guard_bottom)]


def _fold(block: torch.Tensor, random: torch.Tensor) -> torch.Tensor:
    """One start vector from a warm block.

    The sum of its unit rows (unit norm) plus ``_WARM_NOISE`` of a unit random vector; an empty block gives the
    random vector alone.
    """
    r = random / torch.linalg.vector_norm(random)
    if block.shape[0] == 0:
        return r
    c = (block / torch.linalg.vector_norm(block, dim=1, keepdim=True)).sum(0)
    size = torch.linalg.vector_norm(c)
    if not bool(torch.isfinite(size)) or float(size) == 0:
        return r
    return c / size + _WARM_NOISE * r


def _deal(block: torch.Tensor, randoms: torch.Tensor) -> torch.Tensor:
    """The start block of a warm start.

    The usable rows of ``block`` (finite, nonzero) are dealt round-robin, in their order, over the random start
    vectors, and each group is folded into its vector (:func:`_fold`).
    """
    norms = torch.linalg.vector_norm(block, dim=1)
    usable = block[torch.isfinite(block).all(dim=1) & torch.isfinite(norms) & (norms > 0)]
    count = randoms.shape[0]
    return torch.stack([_fold(usable[j::count], randoms[j]) for j in range(count)])


class _Subspace:
    """Orthonormal basis ``V``, products ``W = A V`` and projected matrix ``T = V A Vᵀ`` (float64)."""

    def __init__(self, matvec: MatVec, n: int, cap: int, dtype: torch.dtype, device: torch.device | str | None):
        self.matvec = matvec
        self.cap = cap
        self.V = torch.empty(cap, n, dtype=dtype, device=device)
        self.W = torch.empty(cap, n, dtype=dtype, device=device)
        self.T = torch.zeros(cap, cap, dtype=torch.float64)
        self.m = 0
        self.finite = True

    def extend(self, block: torch.Tensor, limit: int | None = None) -> int:
        """Add the directions of ``block`` (rows) that are new to the basis, at most ``limit`` of them.

        Returns:
            How many were added.
        """
        added = 0
        for x in block:
            if self.m >= self.cap or not self.finite or (limit is not None and added >= limit):
                break
            norm = torch.linalg.vector_norm(x)
            if not torch.isfinite(norm) or norm == 0:
                continue
            q = x / norm
            basis = self.V[: self.m]
            for _ in range(2):  # twice is enough for orthogonality to working precision
                q = q - basis.T @ (basis @ q)
            rest = float(torch.linalg.vector_norm(q))
            if rest <= _MIN_NEW:
                continue
            q = q / rest
            w = self.matvec(q)
            m = self.m
            self.V[m] = q
            self.W[m] = w
            h = (self.V[: m + 1] @ w).to(torch.float64).cpu()
            if not bool(torch.isfinite(h).all()):
                self.finite = False
            self.T[m, : m + 1] = h
            self.T[: m + 1, m] = h
            self.m += 1
            added += 1
        return added

    def ritz(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Ritz values (ascending, float64) and their coefficient vectors (columns)."""
        T = self.T[: self.m, : self.m]
        return torch.linalg.eigh(0.5 * (T + T.T))

    def residuals(self, theta: torch.Tensor, S: torch.Tensor, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Residual vectors ``A y − θ y`` (rows) of the Ritz pairs ``idx`` from the stored products, and norms."""
        coeffs = S[:, idx].to(dtype=self.V.dtype, device=self.V.device)
        ay = coeffs.T @ self.W[: self.m]
        y = coeffs.T @ self.V[: self.m]
        r = ay - theta[idx].to(dtype=self.V.dtype, device=self.V.device)[:, None] * y
        return r, torch.linalg.vector_norm(r.to(torch.float64), dim=1).cpu()

    def vectors(self, S: torch.Tensor, idx: list[int]) -> torch.Tensor:
        coeffs = S[:, idx].to(dtype=self.V.dtype, device=self.V.device)
        return (coeffs.T @ self.V[: self.m]).contiguous()


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
    num_random: int = 2,
    guard_tol: float | None = None,
) -> LanczosResult:
    """Extreme eigenvalues of the symmetric ``n × n`` operator ``matvec``, with their multiplicity.

    Args:
        matvec: ``v -> A v`` on flat vectors of length ``n``.
        n: dimension of the operator.
        k: how many eigenvalues at each wanted end.
        which: ``"largest"``, ``"smallest"`` (algebraic: negative eigenvalues come first) or
            ``"both"`` (k at each end).
        tol: stop when every wanted residual is ``≤ tol·|θ|`` (and the guard pair has converged).
        max_iter: maximum operator applications, which is also the size of the basis kept
            (default ``min(n, max(100, 6k))``).
        v0: a start vector or a block of them (rows), e.g. last time's eigenvectors in eigenvalue order
            followed by its ``guard_vectors``:
            dealt round-robin over the random start vectors and folded into them (see the module
            docstring), so it can change the cost but not which eigenvalues are found. Rows that are
            zero or not finite are left out.
        seed: seed of the random start vectors.
        dtype: dtype of the basis (the operator's).
        device: device of the basis.
        return_eigenvectors: also return the Ritz vectors.
        num_random: random vectors in the start block (``≥ 1``); eigenvalues of multiplicity up to
            this are found with their multiplicity.
        guard_tol: relative residual the first Ritz pair beyond the wanted ones must reach before
            the iteration may stop, relative to the larger of its own and the k-th eigenvalue (default
            ``max(tol, 1e-2)``): resolving the top of the rest of the spectrum to 1% is what makes a
            missed eigenvalue above the k-th show up.

    Raises:
        ValueError: on ``k < 1``, ``k ≥ n`` (``2k > n`` for ``"both"``), unknown ``which``,
            ``tol ≤ 0``, ``max_iter < 1``, ``num_random < 1``, ``guard_tol ≤ 0`` or a ``v0`` of the
            wrong size.
        TypeError: on a non-integer ``k`` or ``num_random``.
    """
    for name, value in (("k", k), ("num_random", num_random)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    if k < 1 or k >= n or (which == "both" and 2 * k > n):
        raise ValueError(f"k must satisfy 1 <= k < number of parameters ({n}), got k={k}")
    if not tol > 0:
        raise ValueError(f"tol must be positive, got {tol}")
    if num_random < 1:
        raise ValueError(f"num_random must be at least 1, got {num_random}")
    if guard_tol is None:
        guard_tol = max(tol, 1e-2)
    elif not guard_tol > 0:
        raise ValueError(f"guard_tol must be positive, got {guard_tol}")
    if max_iter is None:
        max_iter = min(n, max(100, 6 * k))
    if max_iter < 1:
        raise ValueError(f"max_iter must be positive, got {max_iter}")
    need = 2 * k if which == "both" else k
    cap = min(max(max_iter, need + 1), n)
    starts = torch.stack([gaussian(n, seed + 7919 * i, dtype=dtype, device=device) for i in range(num_random)])
    if v0 is not None:
        v0 = v0.detach().to(dtype=dtype, device=device)
        v0 = v0.reshape(1, -1) if v0.dim() <= 1 else v0.reshape(v0.shape[0], -1)
        if v0.shape[1] != n:
            raise ValueError(f"v0 must have {n} entries per vector, got {v0.shape[1]}")
        starts = _deal(v0, starts)
    space = _Subspace(matvec, n, cap, dtype, device)
    space.extend(starts)
    eps = torch.finfo(dtype).eps
    restarts = 0
    while space.finite:
        theta, S = space.ritz()
        m = space.m
        scale = float(theta.abs().max())
        floor = PRECISION_FACTOR * eps * scale
        tiny = 1e-12 * scale
        # Unconverged pairs with their residual relative to what they must reach.
        active: dict[int, float] = {}
        for wanted, guard in _ends(m, k, which):
            _, res = space.residuals(theta, S, wanted)
            res = res.clamp_min(floor)
            for i, r in zip(wanted, res.tolist()):
                need_i = tol * max(abs(float(theta[i])), tiny)
                if not r <= need_i:
                    active[i] = r / need_i
            if guard is not None and m < n:
                _, gres = space.residuals(theta, S, [guard])
                need_g = guard_tol * max(abs(float(theta[guard])), abs(float(theta[wanted[-1]])), tiny)
                if not max(float(gres[0]), floor) <= need_g:
                    active[guard] = math.inf  # the exploration goes first: it is what finds newcomers
            elif m < n:
                active[-1] = math.inf  # not enough Ritz values yet: keep growing
        if not active or m >= cap:
            break
        # Grow by at most num_random directions a step, the least converged first: from a random block
        # that is block Lanczos; from a warm block it refines k old vectors for the price of a few.
        idx = sorted((i for i in active if i >= 0), key=lambda i: -active[i]) or list(range(m - 1, -1, -1))
        block, _ = space.residuals(theta, S, idx)
        if space.extend(block, limit=num_random) == 0:
            # The residuals lie in the basis (an invariant subspace, or rounding): explore a fresh
            # random direction instead, so eigenvalues it did not reach can still be found.
            restarts += 1
            fresh = gaussian(n, seed + 7919 * (num_random + restarts), dtype=dtype, device=device)
            if space.extend(fresh[None]) == 0:
                break
    m = space.m
    count = need
    if not space.finite:
        warnings.warn(
            "lanczos: the operator returned non-finite values; eigenvalues are NaN", RuntimeWarning, stacklevel=2
        )
        nan = torch.full((count,), float("nan"), dtype=torch.float64)
        return LanczosResult(nan, nan.clone(), torch.zeros(count, dtype=torch.bool), m)
    theta, S = space.ritz()
    scale = float(theta.abs().max())
    floor = PRECISION_FACTOR * eps * scale
    tiny = 1e-12 * scale
    idx: list[int] = []
    conv: list[bool] = []
    residuals: list[float] = []
    guards: list[int] = []
    for wanted, guard in _ends(m, k, which):
        guards += [guard] if guard is not None else []
        _, res = space.residuals(theta, S, wanted)
        res = res.clamp_min(floor)
        guard_ok = True
        if guard is not None and m < n:
            _, gres = space.residuals(theta, S, [guard])
            bound = max(abs(float(theta[guard])), abs(float(theta[wanted[-1]])), tiny)
            guard_ok = max(float(gres[0]), floor) <= guard_tol * bound
        elif m < n:
            guard_ok = False
        idx += wanted
        residuals += res.tolist()
        conv += [guard_ok and r <= tol * max(abs(float(theta[i])), tiny) for i, r in zip(wanted, res.tolist())]
    if which == "both" and m < 2 * k:
        idx = idx[:k] + idx[-k:] if len(idx) >= 2 * k else idx
    eig = theta[idx]
    vecs = space.vectors(S, idx) if return_eigenvectors else None
    guard_vecs = space.vectors(S, guards) if return_eigenvectors and guards else None
    return LanczosResult(
        eig,
        torch.tensor(residuals, dtype=torch.float64)[: len(idx)],
        torch.tensor(conv, dtype=torch.bool)[: len(idx)],
        m,
        vecs,
        theta,
        guard_vecs,
    )
