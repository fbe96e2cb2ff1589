"""Statistics of the report: Pearson's r, Kendall's τ-b, seeded bootstrap intervals, and honest refusals.

Every coefficient comes with its n, both Pearson's r and Kendall's τ-b, and a seeded percentile bootstrap
interval; below :data:`MIN_POINTS` finite points (e.g. a correlation *across* two runs, which always gives
r = ±1) :func:`correlate` says the correlation cannot be estimated instead of returning a number.

Example:
    >>> c = correlate([1, 2, 3, 4, 5], [2, 1, 4, 3, 5], metric="λ_max", scope="within run", num_resamples=100)
    >>> c.n, round(c.pearson, 2), round(c.kendall, 2)
    (5, 0.8, 0.6)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "MIN_POINTS",
    "FEW_POINTS",
    "pearson",
    "kendall_tau",
    "bootstrap_ci",
    "Correlation",
    "correlate",
    "format_number",
]

MIN_POINTS = 3
FEW_POINTS = 10


def pearson(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Pearson's correlation coefficient; NaN when either variable is constant or n < 2.

    Example:
        >>> round(pearson([1, 2, 3, 4], [2, 4, 5, 9]), 4)
        0.9648
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D of equal length, got shapes {x.shape} and {y.shape}")
    if x.size < 2:
        return math.nan
    return float(_pearson_rows(x[None], y[None])[0])


def kendall_tau(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Kendall's τ-b (ties in either variable accounted for); NaN when a variable is constant or n < 2.

    ``τ_b = (concordant − discordant) / sqrt((n0 − n1)(n0 − n2))`` over the ``n0 = n(n−1)/2`` pairs,
    ``n1``/``n2`` the pairs tied in x/y. Exact O(n²) pair count.

    Example:
        >>> kendall_tau([1, 2, 3, 4], [1, 3, 2, 4])
        0.6666666666666666
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D of equal length, got shapes {x.shape} and {y.shape}")
    if x.size < 2:
        return math.nan
    return float(_kendall_rows(x[None], y[None])[0])


def bootstrap_ci(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    statistic: Callable[[np.ndarray, np.ndarray], float],
    *,
    num_resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(x, y)``, resampling (x, y) pairs with replacement.

    Uses a private ``numpy.random.Generator`` seeded by ``seed`` (same seed, same interval). Resamples
    on which the statistic is undefined (e.g. all pairs identical) are dropped; if more than half are,
    the interval is ``(nan, nan)``.

    Example:
        >>> lo, hi = bootstrap_ci([1, 2, 3, 4, 5, 6], [1, 3, 2, 5, 4, 6], pearson, seed=0)
        >>> bool(lo < pearson([1, 2, 3, 4, 5, 6], [1, 3, 2, 5, 4, 6]) <= hi)
        True
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if num_resamples < 1:
        raise ValueError(f"num_resamples must be at least 1, got {num_resamples}")
    n = x.size
    if n < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(num_resamples, n))
    rows = _ROW_STATISTICS.get(statistic)
    if rows is not None:
        # Vectorised over resamples, in chunks that keep the n×n sign matrices of Kendall's τ small.
        chunk = max(1, 4_000_000 // (n * n))
        stats = np.concatenate([rows(x[idx[i : i + chunk]], y[idx[i : i + chunk]]) for i in range(0, len(idx), chunk)])
    else:
        stats = np.array([statistic(x[i], y[i]) for i in idx], dtype=np.float64)
    stats = stats[np.isfinite(stats)]
    if stats.size < num_resamples / 2:
        return math.nan, math.nan
    tail = 100.0 * (1.0 - level) / 2.0
    lo, hi = np.percentile(stats, [tail, 100.0 - tail])
    return float(lo), float(hi)


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """:func:`pearson` of each row pair of two ``(B, n)`` arrays (NaN where a row is constant)."""
    dx = x - x.mean(axis=1, keepdims=True)
    dy = y - y.mean(axis=1, keepdims=True)
    denom = np.sqrt((dx * dx).sum(axis=1) * (dy * dy).sum(axis=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (dx * dy).sum(axis=1) / denom
    r[denom == 0] = np.nan
    return np.clip(r, -1.0, 1.0)


def _kendall_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """:func:`kendall_tau` (τ-b) of each row pair of two ``(B, n)`` arrays."""
    n = x.shape[1]
    iu = np.triu_indices(n, k=1)
    sx = np.sign(x[:, :, None] - x[:, None, :])[:, iu[0], iu[1]]
    sy = np.sign(y[:, :, None] - y[:, None, :])[:, iu[0], iu[1]]
    n0 = iu[0].size
    denom = np.sqrt((n0 - (sx == 0).sum(axis=1)).astype(np.float64) * (n0 - (sy == 0).sum(axis=1)))
    with np.errstate(divide="ignore", invalid="ignore"):
        tau = (sx * sy).sum(axis=1) / denom
    tau[denom == 0] = np.nan
    return np.clip(tau, -1.0, 1.0)


_ROW_STATISTICS: dict[Callable[..., float], Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    pearson: _pearson_rows,
    kendall_tau: _kendall_rows,
}


@dataclass
class Correlation:
    """One correlation between a geometry quantity and test accuracy.

    Attributes:
        metric: the geometry quantity (a label such as ``"λ_max"``).
        scope: which points: ``"within <run>"``, ``"pooled (epoch, run) pairs"`` or ``"across runs (final)"``.
        n: number of points.
        pearson: Pearson's r (NaN when not estimable).
        kendall: Kendall's τ-b (NaN when not estimable).
        pearson_ci: bootstrap interval of r.
        kendall_ci: bootstrap interval of τ.
        note: why it is not estimable, or a caveat.
    """

    metric: str
    scope: str
    n: int
    pearson: float = math.nan
    kendall: float = math.nan
    pearson_ci: tuple[float, float] = (math.nan, math.nan)
    kendall_ci: tuple[float, float] = (math.nan, math.nan)
    note: str = ""

    @property
    def estimable(self) -> bool:
        """Whether a coefficient was computed."""
        return math.isfinite(self.pearson) or math.isfinite(self.kendall)

    def describe(self, short: bool = False) -> str:
        """One line: ``n=…, r=… [lo, hi], τ=… [lo, hi]`` or the reason it cannot be estimated."""
        if not self.estimable:
            if short:
                return f"n={self.n}: cannot be estimated (needs ≥ {MIN_POINTS})"
            return f"n={self.n}: cannot be estimated ({self.note})"
        few = " (few points)" if short and self.n < FEW_POINTS else ""
        r_ci = f"[{format_number(self.pearson_ci[0], 2)}, {format_number(self.pearson_ci[1], 2)}]"
        tau_ci = f"[{format_number(self.kendall_ci[0], 2)}, {format_number(self.kendall_ci[1], 2)}]"
        return (
            f"n={self.n}{few}, r={format_number(self.pearson, 2)} {r_ci}, τ={format_number(self.kendall, 2)} {tau_ci}"
        )


def correlate(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    *,
    metric: str,
    scope: str,
    num_resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
    unit: str = "points",
) -> Correlation:
    """Pearson r and Kendall τ-b with bootstrap intervals, or "cannot be estimated" below 3 finite points.

    Example:
        >>> correlate([0.1, 0.2], [0.9, 0.8], metric="λ_max", scope="across runs", unit="runs").describe()
        'n=2: cannot be estimated (2 runs; a correlation needs at least 3 — two points always give r = ±1)'
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = int(x.size)
    if n < MIN_POINTS:
        why = f"{n} {unit if n != 1 else unit.rstrip('s')}; a correlation needs at least {MIN_POINTS}" + (
            " — two points always give r = ±1" if n == 2 else ""
        )
        return Correlation(metric, scope, n, note=why)
    r, tau = pearson(x, y), kendall_tau(x, y)
    if not (math.isfinite(r) or math.isfinite(tau)):
        return Correlation(metric, scope, n, note="one of the variables is constant")
    return Correlation(
        metric,
        scope,
        n,
        r,
        tau,
        bootstrap_ci(x, y, pearson, num_resamples=num_resamples, level=level, seed=seed),
        bootstrap_ci(x, y, kendall_tau, num_resamples=num_resamples, level=level, seed=seed + 1),
        note="few points: the bootstrap interval is unreliable" if n < FEW_POINTS else "",
    )


def format_number(v: float | None, digits: int = 4) -> str:
    """``v`` for a table cell: ``digits`` significant digits, scientific outside [1e-3, 1e5), ``—`` for NaN/None.

    Example:
        >>> format_number(0.123456), format_number(2.5e-5), format_number(float("nan"))
        ('0.1235', '2.500e-05', '—')
    """
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if math.isinf(v):
        return "∞" if v > 0 else "−∞"
    if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
        return f"{v:.{max(digits - 1, 1)}e}"
    return f"{v:.{digits}g}"
