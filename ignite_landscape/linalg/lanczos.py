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
* **Warm starts change the cost, not the answer.** A warm start deals last time's eigenvectors
  round-robin over the random start vectors and folds each group into its vector (the group's unit sum
  plus a tenth of that random vector), so every start vector keeps a random part and the block has the
  width of a cold start. Convergence asks for more than small wanted residuals: the first Ritz pair
  *beyond* the wanted ones (the guard) must be resolved too (:func:`_guard_resolved`). Why that finds an
  eigenvalue that has overtaken the old k-th one on a direction the old eigenvectors miss (a newcomer):
  the Rayleigh–Ritz on the whole basis takes up the old directions, so what the basis holds outside them
  is the Krylov space of the random parts, where the newcomer's share relative to the rest of the
  spectrum is what it is in a cold start. Krylov spaces resolve the outermost eigenvalues of what they
  explore first, so the guard — the top of that exploration — is not resolved while an eigenvalue above
  it is still hidden, unless the random parts miss it as a cold start's would; once found, the newcomer
  is a wanted pair and must converge to ``tol`` itself. Three conditions keep the guard honest, each found
  by a miss (``benchmarks/bench_newcomers.py``: 100 drawn operators whose old top k are exact and whose
  newcomers sit 0.3–50% above the old k-th):

  - only the first k rows of ``v0`` are dealt. An accurate vector beyond the wanted ones (an earlier
    version dealt the old guard's Ritz vector, which saved 5–7% of the HVPs while tracking) is the guard
    from the first step, resolved at once, and the iteration stopped before the random parts had looked:
    23 of the 100 operators lost a newcomer that the cold start found (22 of them reporting convergence),
    one 50% above the old k-th;
  - the guard's residual must be under 0.3 times its distance to the k-th Ritz value, not only 1% of it:
    a guard that still mixed a newcomer 0.3–1% above the old k-th with the eigenvalue just below met the
    1% and stopped the iteration;
  - a warm start also grows until its basis is a Krylov space of high enough degree that a newcomer more
    than ``guard_tol`` beyond the k-th, held by the random parts 30 times less than the guard, would
    have outgrown the guard (:func:`_explored`). Where the old vectors are accurate and the guard is
    isolated, both converge long before the random parts have been explored: one operator in 300 lost
    a newcomer 1.6% above the old top that the same random vectors found cold.

  What is left is the risk every Krylov method carries: an eigenvalue that the random start vectors
  hardly hold is found late or not at all, by a cold start as by a warm one. In those 300 operators
  (seeds 1–3) no warm start reported converged while missing what the cold start found; the version that
  dealt the guard vector and had none of these conditions did so on 22 of the first 100.
* **Cost.** What a warm start can save is bounded by how far the eigenspace moved: the old
  eigenvectors are worth the first HVPs of a cold start, those that reach their quality, not the
  late ones that separate the top of the spectrum from its neighbours. Dealing the old block over
  the start vectors keeps the polynomial degree per HVP of a cold start, and splitting the old top
  k over two chains (neighbours in eigenvalue order in different chains) means each chain only separates
  members twice as far apart as in one folded vector, whose interpolating polynomial amplifies what the old
  vectors got wrong. Tracking the top 5 of the digits CNN (``benchmarks/bench_tracking.py``, the README
  has the current figures) cost 0.84× the HVPs of a cold start (one folded vector: 0.93×) where the
  eigenspace turns 12–87° between firings, 0.85× after two epochs of training, and 0.71–0.73× where it
  turns 2–5°. A perfect warm start (handed the new eigenvectors themselves) would cost 0.30–0.39×: k HVPs
  of Rayleigh–Ritz plus the random exploration that rules out a newcomer. Refining the old vectors alone,
  in one chain with no guard (so finding neither a newcomer nor a second copy of an eigenvalue), already
  costs 0.56–0.70× there: their error is spread over the spectrum, and removing it near the top cluster
  takes the degree a cold start spends. Measured and dropped: the old vectors as a block of their own
  (Rayleigh–Ritz on them, then growth by residuals) cost 1.2–1.3×, since refining k vectors at once lowers
  the polynomial degree per HVP; as a two-phase method (that block until converged, then random chains
  deflated against it until their top pair is resolved to 1%), 51–60 HVPs for the first phase and 24–44
  for the second, over the 75 of a cold start.
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
# Largest guard residual, relative to its distance from the k-th Ritz value, that lets the iteration stop
# (see _guard_resolved): a weight of at most 0.09 on eigenvalues beyond the k-th. 0.3 removed the misses of
# newcomers 0.3-1% above the k-th in benchmarks/bench_newcomers.py, at 2% more matvecs for a cold start; 0.1
# cost cold starts more.
_GUARD_GAP = 0.3
# How much smaller than the guard's a newcomer's share of the start block may be and still be found (_explored).
# With 0.3 above, 30 removed the last newcomer that a warm start missed (and said it had converged) where a cold
# start found it, in the 300 operators of benchmarks/bench_newcomers.py --seed 1, 2, 3; 10 did not. 100 did too,
# but the main job's warm start (benchmarks/bench_overhead.py, tol 1e-3) then saved 3% of the HVPs, at 30 12%.
_NEWCOMER_SHARE = 30.0
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


def _guard_resolved(
    theta: torch.Tensor, guard: int, last: int, residual: float, tol: float, guard_tol: float, tiny: float
) -> bool:
    """Whether the guard pair (the first beyond the wanted ones) lets the iteration stop.

    Its residual ``r`` must meet ``guard_tol`` relative to the larger of its own and the k-th Ritz value, and
    be at most ``_GUARD_GAP`` times its distance to the k-th Ritz value ``θ_k`` (or ``tol·|θ_k|`` where they
    are closer than that). A unit vector with Rayleigh quotient ``θ_g`` and residual ``r`` puts a weight of at
    most ``r² / (θ_k − θ_g)²`` on eigenvalues at or beyond ``θ_k``, so this keeps the guard from stopping the
    iteration while it is still a mixture that holds an eigenvalue belonging in the top k.
    """
    if math.isinf(guard_tol):
        return True  # the guard is off (an exploration that is itself the guard of another run)
    theta_g, theta_k = float(theta[guard]), float(theta[last])
    if not residual <= guard_tol * max(abs(theta_g), abs(theta_k), tiny):
        return False
    gap = theta_k - theta_g if guard < last else theta_g - theta_k  # >= 0: the guard lies inside
    return residual <= max(_GUARD_GAP * gap, tol * max(abs(theta_k), tiny))


def _explored(theta: torch.Tensor, guard: int, last: int, steps: int, guard_tol: float) -> bool:
    """Whether the basis has been grown far enough to have seen an eigenvalue beyond the k-th.

    A Krylov space of degree ``d`` holds ``T_d`` of the operator, mapped so that the Ritz values from the guard
    to the far end of the spectrum lie in [-1, 1], applied to the start block; it multiplies an eigenvalue
    beyond the k-th Ritz value ``θ_k`` by more than ``guard_tol·|θ_k|`` by at least ``T_d(x)``,
    ``x = 1 + 2 (|θ_k − θ_g| + guard_tol·|θ_k|) / |θ_g − θ_far|``, relative to the guard and everything
    past it. The basis counts as explored once ``T_d(x) ≥ _NEWCOMER_SHARE``: such an eigenvalue has
    overtaken the guard even if the random start vectors hold it 30 times less than the guard's. Asked of warm
    starts only: there the old vectors resolve the wanted pairs (and an isolated guard) before the random parts
    have been explored, while a cold start's wanted pairs converge only as its exploration goes; this is what
    keeps a warm start going until a newcomer can show up.
    """
    if math.isinf(guard_tol):
        return True
    theta_g, theta_k = float(theta[guard]), float(theta[last])
    far = float(theta[0]) if guard < last else float(theta[-1])
    width = abs(theta_g - far)
    if not width > 0:
        return True  # nothing lies beyond the guard in the basis: nothing to outgrow
    x = 1.0 + 2.0 * (abs(theta_k - theta_g) + guard_tol * abs(theta_k)) / width
    return steps * math.acosh(x) >= math.acosh(_NEWCOMER_SHARE)


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


def _deal(block: torch.Tensor, randoms: torch.Tensor, rows: int) -> tuple[torch.Tensor, int]:
    """The start block of a warm start.

    The first ``rows`` usable rows of ``block`` (finite, nonzero) are dealt round-robin, in their order, over the
    random start vectors, and each group is folded into its vector (:func:`_fold`).

    Returns:
        The start block and how many rows were dealt (0: a cold start).
    """
    norms = torch.linalg.vector_norm(block, dim=1)
    usable = block[torch.isfinite(block).all(dim=1) & torch.isfinite(norms) & (norms > 0)][:rows]
    count = randoms.shape[0]
    return torch.stack([_fold(usable[j::count], randoms[j]) for j in range(count)]), usable.shape[0]


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
        v0: a start vector or a block of them (rows), e.g. last time's eigenvectors in eigenvalue order:
            the first ``k`` (``2k`` for ``"both"``) rows that are finite and nonzero are dealt round-robin over
            the random start vectors and folded into them (see the module docstring), so they change the
            cost, not which eigenvalues are found. Further rows are ignored: an accurate vector beyond the
            wanted ones would stand in for the guard before the exploration has looked.
        seed: seed of the random start vectors.
        dtype: dtype of the basis (the operator's).
        device: device of the basis.
        return_eigenvectors: also return the Ritz vectors.
        num_random: random vectors in the start block (``≥ 1``); eigenvalues of multiplicity up to
            this are found with their multiplicity.
        guard_tol: relative residual the first Ritz pair beyond the wanted ones must reach before
            the iteration may stop, relative to the larger of its own and the k-th eigenvalue (default
            ``max(tol, 1e-2)``): resolving the top of the rest of the spectrum to 1% is what makes a
            missed eigenvalue above the k-th show up. Its residual must also be under 0.3 times its distance
            to the k-th Ritz value (or ``tol`` relative), so that it is not a mixture still holding one above.
            ``math.inf`` turns the guard off.

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
    dealt = 0
    if v0 is not None:
        v0 = v0.detach().to(dtype=dtype, device=device)
        v0 = v0.reshape(1, -1) if v0.dim() <= 1 else v0.reshape(v0.shape[0], -1)
        if v0.shape[1] != n:
            raise ValueError(f"v0 must have {n} entries per vector, got {v0.shape[1]}")
        starts, dealt = _deal(v0, starts, need)
    space = _Subspace(matvec, n, cap, dtype, device)
    space.extend(starts)
    eps = torch.finfo(dtype).eps
    restarts = 0
    steps = 0  # growth steps: the polynomial degree the start block has been explored to
    while space.finite:
        theta, S = space.ritz()
        m = space.m
        scale = float(theta.abs().max())
        floor = PRECISION_FACTOR * eps * scale
        tiny = 1e-12 * scale
        # Unconverged pairs with their residual relative to what they must reach, and per wanted end its
        # indices, residuals and whether its guard lets it stop (what the result reports if this is the last step).
        active: dict[int, float] = {}
        ends: list[tuple[list[int], list[float], bool]] = []
        for wanted, guard in _ends(m, k, which):
            # The guard's residual in the same pass over the basis as the wanted ones' (the last entry).
            looked_at = wanted + [guard] if guard is not None and m < n else wanted
            _, res = space.residuals(theta, S, looked_at)
            res_all = res.clamp_min(floor).tolist()
            res_list = res_all[: len(wanted)]
            for i, r in zip(wanted, res_list):
                need_i = tol * max(abs(float(theta[i])), tiny)
                if not r <= need_i:
                    active[i] = r / need_i
            guard_ok = m >= n  # with the whole space in the basis nothing is left to find
            if guard is not None and m < n:
                if not _guard_resolved(theta, guard, wanted[-1], res_all[-1], tol, guard_tol, tiny):
                    active[guard] = math.inf  # the exploration goes first: it is what finds newcomers
                elif dealt and not _explored(theta, guard, wanted[-1], steps, guard_tol):
                    # Resolved, but not yet looked far enough: grow from the guard and the pairs beyond it.
                    inward = -1 if guard < wanted[-1] else 1
                    for j in range(num_random):
                        if 0 <= guard + inward * j < m:
                            active.setdefault(guard + inward * j, 1.0 - j / (num_random + 1))
                else:
                    guard_ok = True
            elif m < n:
                active[-1] = math.inf  # not enough Ritz values yet: keep growing
            ends.append((wanted, res_list, guard_ok))
        if not active or m >= cap:
            break
        steps += 1
        # Grow by at most num_random directions a step, the least converged first: from a random block
        # that is block Lanczos; from a warm block it refines k old vectors for the price of a few.
        grow = sorted((i for i in active if i >= 0), key=lambda i: -active[i]) or list(range(m - 1, -1, -1))
        block, _ = space.residuals(theta, S, grow)
        if space.extend(block, limit=num_random) == 0:
            # The residuals lie in the basis (an invariant subspace, or rounding): explore a fresh
            # random direction instead, so eigenvalues it did not reach can still be found.
            restarts += 1
            fresh = gaussian(n, seed + 7919 * (num_random + restarts), dtype=dtype, device=device)
            if space.extend(fresh[None]) == 0:
                break
    count = need
    if not space.finite:
        warnings.warn(
            "lanczos: the operator returned non-finite values; eigenvalues are NaN", RuntimeWarning, stacklevel=2
        )
        nan = torch.full((count,), float("nan"), dtype=torch.float64)
        return LanczosResult(nan, nan.clone(), torch.zeros(count, dtype=torch.bool), space.m)
    # Every exit of a finite loop leaves the basis its last assessment saw: report that assessment.
    idx: list[int] = []
    conv: list[bool] = []
    residuals: list[float] = []
    for wanted, res_list, guard_ok in ends:
        idx += wanted
        residuals += res_list
        conv += [guard_ok and r <= tol * max(abs(float(theta[i])), tiny) for i, r in zip(wanted, res_list)]
    if which == "both" and m < 2 * k:
        idx = idx[:k] + idx[-k:] if len(idx) >= 2 * k else idx
    eig = theta[idx]
    vecs = space.vectors(S, idx) if return_eigenvectors else None
    return LanczosResult(
        eig,
        torch.tensor(residuals, dtype=torch.float64)[: len(idx)],
        torch.tensor(conv, dtype=torch.bool)[: len(idx)],
        m,
        vecs,
        theta,
    )
