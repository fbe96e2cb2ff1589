"""The ``report`` command: figures and a markdown summary from the TensorBoard event files of runs.

``python -m ignite_landscape report RUN_DIR [RUN_DIR ...] --out DIR`` reads every run (a folder that
holds ``events.out.tfevents.*`` files; a folder of such folders is expanded), and writes

- ``training_curves.png``: training loss, test loss and test accuracy per epoch;
- ``spectrum.png``: λ_1 … λ_k over training with the stability threshold 2/η, and the final SLQ density;
  a band of ±2 standard errors around each eigenvalue whose run logged ``lambda_i_stderr``
  (``uncertainty="jackknife"``), likewise around tr(H) and sharpness in ``metric_comparison.png``;
- ``metric_comparison.png``: every geometry quantity over training, one line per run;
- ``connectivity.png``: loss along the linear path from the connectivity reference (the weights at
  attach time by default; the previous firing's with ``reference="previous"``) to the current weights;
- ``slice1d.png``, ``contour.png``, ``surface.png``: the 1D slices and the last 2D slice of each run;
- ``trajectory.png``: the training path over the loss in its top-2 PCA plane, with the explained variance;
- ``correlation.png``: geometry against test accuracy, with n, Pearson r, Kendall τ and bootstrap CIs;
- ``summary_table.png`` and ``summary.md``: the final numbers of every run and the correlation table.

Correlations are stated honestly: every coefficient comes with its n, both Pearson's r and Kendall's
τ-b, and a seeded bootstrap percentile interval; below 3 points (e.g. a correlation *across* two runs,
which always gives r = ±1) the command says the correlation cannot be estimated. Pooled correlations
use every logged (epoch, run) pair and say so: pairs from one run are consecutive points of one
trajectory, not independent samples, so the interval is optimistic. No condition number is reported
for an indefinite Hessian: |λ_min|/λ_max and the negative spectral mass instead.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> main(["report", tempfile.mkdtemp(), "--out", tempfile.mkdtemp()])  # a folder without event files
    2
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ignite_landscape.measures.jackknife import INTERVAL_Z
from ignite_landscape.plots import finite_grid

__all__ = [
    "ReportError",
    "Series",
    "RunData",
    "Correlation",
    "Report",
    "find_runs",
    "load_run",
    "pearson",
    "kendall_tau",
    "bootstrap_ci",
    "correlate",
    "correlations",
    "paired",
    "figure_curvature",
    "stderr_rows",
    "write_report",
    "main",
]

logger = logging.getLogger(__name__)

EVENT_FILE_PATTERN = "events.out.tfevents.*"
MIN_POINTS = 3
FEW_POINTS = 10


class ReportError(Exception):
    """A problem with the user's input (no event files, nothing to plot); the command exits with code 2."""


# ----------------------------------------------------------------------------------------------- loading


@dataclass
class Series:
    """One scalar tag of one run: ``values[i]`` logged at ``steps[i]`` (steps ascending, one value each)."""

    steps: np.ndarray
    values: np.ndarray

    def at(self, step: int) -> float:
        """The value logged at ``step`` (NaN if none)."""
        idx = np.nonzero(self.steps == step)[0]
        return float(self.values[idx[0]]) if idx.size else math.nan

    def last(self) -> float:
        """The value at the last logged step (NaN when empty)."""
        return float(self.values[-1]) if self.values.size else math.nan


def paired(run: RunData, geometry: Series, metric: Series) -> tuple[np.ndarray, np.ndarray]:
    """Values of ``geometry`` and ``metric`` at the moments both were logged.

    Same steps first; when a landscape logged at the trainer's iterations meets a metric an evaluator
    logged at epochs, the steps are mapped to epochs through the ``landscape/epoch`` scalar that
    :class:`~ignite_landscape.LandscapeLogHandler` writes, keeping the last firing of each epoch.
    """
    steps = np.intersect1d(geometry.steps, metric.steps)
    direct = (np.array([geometry.at(t) for t in steps]), np.array([metric.at(t) for t in steps]))
    epochs = run.scalars.get("landscape/epoch")
    if epochs is None:
        return direct
    by_epoch: dict[int, float] = {}
    for t, v in zip(geometry.steps.tolist(), geometry.values.tolist()):
        e = epochs.at(t)
        if math.isfinite(e):
            by_epoch[int(e)] = float(v)  # steps ascend: the last firing of an epoch wins
    common = [e for e in sorted(by_epoch) if e in set(metric.steps.tolist())]
    if len(common) <= len(steps):
        return direct
    return np.array([by_epoch[e] for e in common]), np.array([metric.at(e) for e in common])


@dataclass
class RunData:
    """Everything the report uses from one run's event files.

    Attributes:
        name: label in figures and tables (the folder name, made unique).
        path: the folder.
        scalars: tag → :class:`Series`.
        histograms: tag → list of ``(step, bucket_limits, bucket_counts)``.
        texts: tag → list of ``(step, markdown)``.
        tensors: tag → list of ``(step, numpy array)`` (mesh vertices, faces, raw curves).
    """

    name: str
    path: Path
    scalars: dict[str, Series] = field(default_factory=dict)
    histograms: dict[str, list[tuple[int, np.ndarray, np.ndarray]]] = field(default_factory=dict)
    texts: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    tensors: dict[str, list[tuple[int, np.ndarray]]] = field(default_factory=dict)

    def series(self, tag: str) -> Series | None:
        """The scalar series of ``tag`` if it was logged with at least one finite value."""
        s = self.scalars.get(tag)
        return s if s is not None and np.isfinite(s.values).any() else None

    def landscape_tags(self, name: str) -> list[str]:
        """Scalar tags under ``landscape/<name>/``."""
        prefix = f"landscape/{name}/"
        return sorted(t for t in self.scalars if t.startswith(prefix))


def _is_run_dir(path: Path) -> bool:
    return any(p.is_file() for p in path.glob(EVENT_FILE_PATTERN))


def find_runs(paths: Sequence[str | Path]) -> list[Path]:
    """The run folders named by ``paths``: a folder with event files is a run; otherwise every folder
    below it that holds event files (the top-most ones) is.

    Raises:
        ReportError: when a path does not exist or holds no event file anywhere below it.
    """
    runs: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise ReportError(f"{path} does not exist")
        if path.is_file():
            raise ReportError(f"{path} is a file; pass the run folder that holds the event files")
        if _is_run_dir(path):
            runs.append(path)
            continue
        found = sorted({p.parent for p in path.rglob(EVENT_FILE_PATTERN) if p.is_file()})
        # Keep the top-most run folders (a run's own sub-writers live below it).
        top = [p for p in found if not any(q != p and q in p.parents for q in found)]
        if not top:
            raise ReportError(
                f"no TensorBoard event files ({EVENT_FILE_PATTERN}) in {path} or below it; "
                "pass the folder a TensorboardLogger wrote to (e.g. runs/digits-lr0.2-s0)"
            )
        runs.extend(top)
    unique: list[Path] = []
    for r in runs:
        if r.resolve() not in {u.resolve() for u in unique}:
            unique.append(r)
    return unique


def _tensor_to_numpy(proto: Any) -> np.ndarray:
    from tensorboard.util import tensor_util

    return np.asarray(tensor_util.make_ndarray(proto))


def load_run(path: str | Path, name: str | None = None) -> RunData:
    """Read every scalar, histogram, text and tensor of the event files in ``path``.

    When a run was restarted into the same folder (``--resume`` or a rerun), the same step can appear
    more than once; the value written last (event files are read in the order they were created) wins.
    """
    from tensorboard.backend.event_processing import event_accumulator as ea

    path = Path(path)
    acc = ea.EventAccumulator(
        str(path),
        size_guidance={ea.SCALARS: 0, ea.HISTOGRAMS: 0, ea.TENSORS: 0, ea.IMAGES: 1, ea.COMPRESSED_HISTOGRAMS: 1},
        purge_orphaned_data=False,
    )
    acc.Reload()
    run = RunData(name=name or path.name, path=path)
    tags = acc.Tags()
    for tag in tags.get(ea.SCALARS, []):
        _store_scalars(run, tag, [(e.step, e.value) for e in acc.Scalars(tag)])
    for tag in tags.get(ea.HISTOGRAMS, []):
        last: dict[int, tuple[int, np.ndarray, np.ndarray]] = {}
        for e in acc.Histograms(tag):
            h = e.histogram_value
            last[e.step] = (
                e.step,
                np.asarray(h.bucket_limit, dtype=np.float64),
                np.asarray(h.bucket, dtype=np.float64),
            )
        run.histograms[tag] = [last[s] for s in sorted(last)]
    for tag in tags.get(ea.TENSORS, []):
        events = acc.Tensors(tag)
        plugin = ""
        try:
            plugin = acc.SummaryMetadata(tag).plugin_data.plugin_name
        except (KeyError, AttributeError):
            pass
        if plugin == "scalars":
            _store_scalars(run, tag, [(e.step, float(_tensor_to_numpy(e.tensor_proto))) for e in events])
        elif plugin == "text":
            texts: dict[int, str] = {}
            for e in events:
                arr = _tensor_to_numpy(e.tensor_proto)
                item = arr.reshape(-1)[0] if arr.size else b""
                texts[e.step] = item.decode("utf-8") if isinstance(item, bytes) else str(item)
            run.texts[tag] = sorted(texts.items())
        else:
            arrays = {e.step: _tensor_to_numpy(e.tensor_proto) for e in events}
            run.tensors[tag] = sorted(arrays.items(), key=lambda kv: kv[0])
    return run


def _store_scalars(run: RunData, tag: str, pairs: list[tuple[int, float]]) -> None:
    last: dict[int, float] = {}
    for step, value in pairs:
        last[int(step)] = float(value)
    steps = np.array(sorted(last), dtype=np.int64)
    run.scalars[tag] = Series(steps, np.array([last[s] for s in steps], dtype=np.float64))


# -------------------------------------------------------------------------------------------- statistics


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
    dx, dy = x - x.mean(), y - y.mean()
    denom = math.sqrt(float(dx @ dx) * float(dy @ dy))
    if denom == 0.0:
        return math.nan
    return float(np.clip((dx @ dy) / denom, -1.0, 1.0))


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
    n = x.size
    if n < 2:
        return math.nan
    iu = np.triu_indices(n, k=1)
    sx = np.sign(x[:, None] - x[None, :])[iu]
    sy = np.sign(y[:, None] - y[None, :])[iu]
    n0 = iu[0].size
    n1, n2 = int((sx == 0).sum()), int((sy == 0).sum())
    denom = math.sqrt(float(n0 - n1) * float(n0 - n2))
    if denom == 0.0:
        return math.nan
    return float(np.clip((sx * sy).sum() / denom, -1.0, 1.0))


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
        r_ci = f"[{_fmt(self.pearson_ci[0], 2)}, {_fmt(self.pearson_ci[1], 2)}]"
        tau_ci = f"[{_fmt(self.kendall_ci[0], 2)}, {_fmt(self.kendall_ci[1], 2)}]"
        return f"n={self.n}{few}, r={_fmt(self.pearson, 2)} {r_ci}, τ={_fmt(self.kendall, 2)} {tau_ci}"


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


def _fmt(v: float | None, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if math.isinf(v):
        return "∞" if v > 0 else "−∞"
    if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
        return f"{v:.{max(digits - 1, 1)}e}"
    return f"{v:.{digits}g}"


# ---------------------------------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class _Metric:
    key: str
    label: str
    definition: str
    get: Callable[[RunData], Series | None]


def _tag(tag: str) -> Callable[[RunData], Series | None]:
    return lambda run: run.series(tag)


def _ratio(num: Series | None, den: Series | None, absolute: bool = False) -> Series | None:
    if num is None or den is None:
        return None
    steps = np.intersect1d(num.steps, den.steps)
    if steps.size == 0:
        return None
    a = np.array([num.at(s) for s in steps])
    b = np.array([den.at(s) for s in steps])
    with np.errstate(divide="ignore", invalid="ignore"):
        v = (np.abs(a) if absolute else a) / b
    return Series(steps, v)


def _lambda_min_ratio(run: RunData) -> Series | None:
    # Lanczos' λ_min when the spectrum handler asked for both ends; else SLQ's extreme Ritz values.
    lmin = run.series("landscape/hessian/lambda_min")
    if lmin is not None and run.series("landscape/hessian/lambda_max") is not None:
        return _ratio(lmin, run.series("landscape/hessian/lambda_max"), absolute=True)
    return _ratio(run.series("landscape/density/lambda_min"), run.series("landscape/density/lambda_max"), True)


def _threshold_tag(run: RunData) -> str | None:
    """The stability-threshold tag (2/η, or (2+2β)/η with momentum) the spectrum handler logged, if any."""
    for tag in run.landscape_tags("hessian"):
        leaf = tag.rsplit("/", 1)[-1]
        if "threshold" in leaf and "precond" not in leaf and run.series(tag) is not None:
            return tag
    return None


def _threshold(run: RunData) -> Series | None:
    tag = _threshold_tag(run)
    return run.series(tag) if tag else None


def _threshold_label(run: RunData) -> str:
    """How the run defined its stability threshold (``2/η``, ``(2 + 2β)/η``), when it logged that."""
    return _definition(run, "stability threshold") or "stability threshold"


def _lambda_over_threshold(run: RunData) -> Series | None:
    return _ratio(run.series("landscape/hessian/lambda_max"), _threshold(run))


METRICS: tuple[_Metric, ...] = (
    _Metric(
        "lambda_max",
        "λ_max",
        "largest Hessian eigenvalue of the probe loss (Lanczos, exact HVPs)",
        _tag("landscape/hessian/lambda_max"),
    ),
    _Metric(
        "lambda_over_threshold",
        "λ_max / (2/η)",
        "λ_max over the stability threshold 2/η ((2+2β)/η with "
        "momentum β); ≥ 1 means gradient descent on a quadratic would diverge along the top direction",
        _lambda_over_threshold,
    ),
    _Metric(
        "trace", "tr(H)", "Hessian trace (Hutch++ / Hutchinson with Rademacher vectors)", _tag("landscape/trace/value")
    ),
    _Metric(
        "negative_mass",
        "negative mass",
        "share of the absolute spectral mass at negative eigenvalues, Σ_{λ<0}|λ| / Σ|λ| (Lanczos quadrature)",
        _tag("landscape/density/negative_mass"),
    ),
    _Metric(
        "lambda_min_ratio",
        "|λ_min|/λ_max",
        "size of the most negative eigenvalue relative to the largest "
        "(the Hessian is indefinite, so no condition number)",
        _lambda_min_ratio,
    ),
    _Metric(
        "sharpness",
        "sharpness",
        "L(θ+ε) − L(θ) with ‖ε‖ ≤ ρ (see the sharpness definition)",
        _tag("landscape/sharpness/value"),
    ),
    _Metric(
        "loss_barrier",
        "loss barrier",
        "max over α of L((1−α)a+αb) − [(1−α)L(a)+αL(b)] (chord barrier, Entezari et al. 2022) from the "
        "reference a (weights at attach, or at the previous firing with reference='previous') to the current b",
        _tag("landscape/connectivity/loss_barrier"),
    ),
    _Metric(
        "noise_scale",
        "B_simple",
        "gradient noise scale tr(Σ)/‖G‖² (McCandlish et al. 2018), in samples; ‖G‖² with the "
        "finite-population correction for the probe's share of the data set",
        _tag("landscape/noise_scale/b_simple"),
    ),
)


# The standard error logged next to a metric, drawn as its band (±INTERVAL_Z) where the run has it.
_STDERR_TAGS = {
    "lambda_max": "landscape/hessian/lambda_max_stderr",
    "trace": "landscape/trace/stderr",
    "sharpness": "landscape/sharpness/stderr",
}
BAND_NOTE = (
    "bands: ±2 standard errors where the run logged one (the jackknife over probe chunks with "
    "uncertainty='jackknife', else the estimator's own)"
)


def _band(ax: Any, s: Series, err: Series | None, color: str) -> bool:
    """Shade ``s ± INTERVAL_Z·err`` at the steps both were logged; whether anything was drawn."""
    if err is None:
        return False
    steps = np.intersect1d(s.steps, err.steps)
    v = np.array([s.at(t) for t in steps])
    e = np.array([err.at(t) for t in steps])
    ok = np.isfinite(v) & np.isfinite(e)
    if not ok.any():
        return False
    ax.fill_between(steps[ok], v[ok] - INTERVAL_Z * e[ok], v[ok] + INTERVAL_Z * e[ok], color=color, alpha=0.2, lw=0)
    ax.errorbar(steps[ok], v[ok], yerr=INTERVAL_Z * e[ok], fmt="none", ecolor=color, elinewidth=0.8, capsize=2)
    return True


def stderr_rows(run: RunData) -> list[tuple[str, float, float, str]]:
    """``(quantity tag, last value, its standard error, "jackknife" | "estimator")`` for every landscape tag
    ``q`` logged with ``q_stderr`` (or ``…/value`` with ``…/stderr``), at the last step both were logged."""
    rows = []
    for tag in sorted(run.scalars):
        if not tag.startswith("landscape/") or tag.endswith("estimator_stderr"):
            continue
        if tag.endswith("/stderr"):
            base = tag[: -len("stderr")] + "value"
        elif tag.endswith("_stderr"):
            base = tag[: -len("_stderr")]
        else:
            continue
        handler = tag.split("/")[1]
        if tag.endswith("/lambda_max_stderr") and f"landscape/{handler}/lambda_1_stderr" in run.scalars:
            continue  # λ_max is λ_1
        s, e = run.series(base), run.series(tag)
        if s is None or e is None:
            continue
        steps = np.intersect1d(s.steps, e.steps)
        if steps.size == 0:
            continue
        # A handler with uncertainty='jackknife' logs its intervals (q_lo); without, a stderr is the estimator's.
        jackknife = any(t.endswith("_lo") for t in run.landscape_tags(handler))
        kind = "jackknife" if jackknife else "estimator"
        rows.append((base, s.at(int(steps[-1])), e.at(int(steps[-1])), kind))
    return rows


def _accuracy_tag(run: RunData, requested: str | None) -> str | None:
    if requested is not None:
        return requested if run.series(requested) is not None else None
    candidates = [t for t in run.scalars if re.search(r"(^|/)(test|val|valid|validation|eval)[/_-]?acc(uracy)?$", t)]
    preferred = [t for t in candidates if t.startswith("test")]
    pick = (preferred or candidates or [None])[0]
    return pick if pick is not None and run.series(pick) is not None else None


def correlations(
    runs: Sequence[RunData],
    *,
    accuracy_tag: str | None = None,
    num_resamples: int = 2000,
    seed: int = 0,
) -> list[Correlation]:
    """Every geometry quantity against test accuracy: within each run, pooled, and across runs.

    - within a run: the (epoch, value, accuracy) triples of that run;
    - pooled: every logged (epoch, run) pair of all runs together (only with ≥ 2 runs);
    - across runs: each run's final value against its final test accuracy; needs ≥ 3 runs.
    """
    out: list[Correlation] = []
    for m in METRICS:
        pooled_x: list[float] = []
        pooled_y: list[float] = []
        final_x: list[float] = []
        final_y: list[float] = []
        seen = False
        for run in runs:
            s = m.get(run)
            acc_tag = _accuracy_tag(run, accuracy_tag)
            if s is None or acc_tag is None:
                continue
            seen = True
            x, y = paired(run, s, run.scalars[acc_tag])
            out.append(
                correlate(
                    x,
                    y,
                    metric=m.label,
                    scope=f"within {run.name}",
                    num_resamples=num_resamples,
                    seed=seed,
                    unit="epochs",
                )
            )
            pooled_x += x.tolist()
            pooled_y += y.tolist()
            ok = np.isfinite(x) & np.isfinite(y)
            if ok.any():
                last = np.nonzero(ok)[0][-1]
                final_x.append(float(x[last]))
                final_y.append(float(y[last]))
        if not seen:
            continue
        if len(runs) > 1:
            out.append(
                correlate(
                    pooled_x,
                    pooled_y,
                    metric=m.label,
                    scope="pooled (epoch, run) pairs",
                    num_resamples=num_resamples,
                    seed=seed,
                    unit="pairs",
                )
            )
        out.append(
            correlate(
                final_x,
                final_y,
                metric=m.label,
                scope="across runs (final values)",
                num_resamples=num_resamples,
                seed=seed,
                unit="runs",
            )
        )
    return out


# ------------------------------------------------------------------------------------------ definitions


def _definitions(run: RunData) -> dict[str, str]:
    """``key → value`` rows of the definitions table a run logged as text under ``landscape/definitions``.

    The examples write one (probe size, slice normalization, ρ, optimizer); other runs may not, and the
    figures then say "not logged" rather than guess.
    """
    found: dict[str, str] = {}
    for tag, entries in sorted(run.texts.items()):
        if not tag.startswith("landscape/definitions"):
            continue
        for _, text in entries:
            for line in text.splitlines():
                cells = [c.strip(" *`") for c in line.strip().strip("|").split("|")]
                if len(cells) >= 2 and cells[0] and not set(cells[0]) <= set("-: ") and cells[0] != "definition":
                    found[cells[0].lower()] = " | ".join(cells[1:])
    return found


def _definition(run: RunData, key: str) -> str | None:
    return _definitions(run).get(key.lower())


def _probe_note(run: RunData) -> str:
    n = _definition(run, "probe samples")
    return f"probe: {n} fixed training samples" if n else "probe size: not logged"


def _sharpness_note(run: RunData) -> str:
    text = _definition(run, "sharpness")
    if text:
        return f"sharpness: {text}"
    rho = run.series("landscape/sharpness/rho")
    rho_txt = f"ρ = {_fmt(rho.last(), 3)}" if rho is not None else "ρ not logged"
    return f"sharpness = L(θ+ε) − L(θ), ‖ε‖ ≤ ρ, {rho_txt}"


def _slice_note(run: RunData) -> str:
    text = _definition(run, "slice directions")
    return f"slice directions: {text}" if text else "slice directions: normalization not logged"


def _connectivity_note(run: RunData) -> str:
    ref = _definition(run, "connectivity reference")
    return f"a = {ref}" if ref else "a = the handler's reference weights (not logged)"


def _footer(fig: Any, lines: Sequence[str]) -> None:
    """Definitions behind the numbers, printed under the axes (constrained layout makes room for them)."""
    text = "\n".join(dict.fromkeys(line for line in lines if line))
    if text:
        fig.supxlabel(text, x=0.005, ha="left", fontsize=7, color="0.25")


# ---------------------------------------------------------------------------------------------- figures


def _new_figure(rows: int, cols: int, width: float = 4.2, height: float = 3.2, footer_lines: int = 2) -> Any:
    from matplotlib.figure import Figure

    # At least 8 inches wide: the footer lines with the definitions must fit.
    return Figure(figsize=(max(width * cols, 8.0), height * rows + 0.15 * footer_lines), layout="constrained")


def _panel_figure(count: int, footer_lines: int, **size: float) -> tuple[Any, int, int]:
    """A figure for ``count`` panels, at most three a row: ``(figure, rows, cols)``."""
    cols = min(3, count)
    rows = math.ceil(count / cols)
    return _new_figure(rows, cols, footer_lines=footer_lines, **size), rows, cols


def _color(i: int) -> str:
    return f"C{i % 10}"


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    return path


def _training_tags(runs: Sequence[RunData]) -> list[str]:
    tags = sorted({t for r in runs for t in r.scalars if not t.startswith("landscape/")})
    # Accuracy and loss first: the curves a reader looks for.
    return sorted(tags, key=lambda t: (0 if "acc" in t else 1 if "loss" in t else 2, t))


def figure_training_curves(runs: Sequence[RunData], path: Path) -> Path | None:
    """One panel per logged training/evaluation scalar, one line per run."""
    tags = [t for t in _training_tags(runs) if any(r.series(t) is not None for r in runs)][:6]
    if not tags:
        return None
    fig, rows, cols = _panel_figure(len(tags), footer_lines=1)
    for k, tag in enumerate(tags):
        ax = fig.add_subplot(rows, cols, k + 1)
        for i, run in enumerate(runs):
            s = run.series(tag)
            if s is not None:
                ax.plot(s.steps, s.values, marker="." if s.steps.size < 60 else None, color=_color(i), label=run.name)
        ax.set_title(tag, fontsize=10)
        ax.set_xlabel("step (as logged)")
        if "loss" in tag and all((r.series(tag) is None or (r.scalars[tag].values > 0).all()) for r in runs):
            ax.set_yscale("log")
        if k == 0:
            ax.legend(fontsize="small")
    fig.suptitle("Training curves")
    _footer(fig, ["test/* is measured on the held-out test set after each epoch; train/loss is the epoch mean"])
    return _save(fig, path)


def _eigen_tags(run: RunData) -> list[str]:
    tags = [t for t in run.landscape_tags("hessian") if re.fullmatch(r"landscape/hessian/lambda_\d+", t)]
    return sorted(tags, key=lambda t: int(t.rsplit("_", 1)[1]))


def _density_curve(run: RunData) -> tuple[int, np.ndarray, np.ndarray] | None:
    """The last logged eigenvalue density: a raw (grid, density) curve when logged, else a histogram."""
    raw = _raw_curve(run, "density")
    if raw is not None:
        step, data = raw
        if "grid" in data and "density" in data:
            return step, np.asarray(data["grid"], dtype=np.float64), np.asarray(data["density"], dtype=np.float64)
    hist_tags = [t for t in run.histograms if t.startswith("landscape/density")] or [
        t for t in run.histograms if t.startswith("landscape/hessian")
    ]
    if not hist_tags:
        return None
    step, limits, counts = run.histograms[hist_tags[0]][-1]
    if limits.size < 2:
        return None
    edges = np.concatenate([[limits[0] - (limits[1] - limits[0])], limits])
    edges[~np.isfinite(edges)] = np.nan
    centers = 0.5 * (edges[1:] + edges[:-1])
    widths = np.diff(edges)
    ok = np.isfinite(centers) & (widths > 0)
    total = counts[ok].sum()
    if total <= 0:
        return None
    return step, centers[ok], counts[ok] / (total * widths[ok])


def figure_spectrum(runs: Sequence[RunData], path: Path) -> Path | None:
    """Per run: λ_1 … λ_k over training with the 2/η line; the last eigenvalue density."""
    shown = [r for r in runs if _eigen_tags(r) or r.series("landscape/hessian/lambda_max") is not None]
    if not shown:
        return None
    fig = _new_figure(len(shown), 2, width=5.0, footer_lines=3)
    for row, run in enumerate(shown):
        ax = fig.add_subplot(len(shown), 2, 2 * row + 1)
        tags = _eigen_tags(run) or ["landscape/hessian/lambda_max"]
        banded = False
        for j, tag in enumerate(tags):
            s = run.series(tag)
            if s is not None:
                label = "λ_" + tag.rsplit("_", 1)[1] if tag[-1].isdigit() else "λ_max"
                ax.plot(s.steps, s.values, marker=".", color=_color(j), alpha=1.0 if j == 0 else 0.6, label=label)
                banded |= _band(ax, s, run.series(tag + "_stderr"), _color(j))
        thr = _threshold(run)
        if thr is not None:
            ax.plot(thr.steps, thr.values, "k--", lw=1.2, label=_threshold_label(run))
        lmin = run.series("landscape/hessian/lambda_min")
        if lmin is not None:
            ax.plot(lmin.steps, lmin.values, ":", color="0.4", label="λ_min")
        ax.set_title(f"{run.name}: top Hessian eigenvalues" + (" ± 2 stderr" if banded else ""), fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("eigenvalue")
        ax.legend(fontsize="x-small", ncol=2)
        ax2 = fig.add_subplot(len(shown), 2, 2 * row + 2)
        dens = _density_curve(run)
        if dens is not None:
            step, grid, d = dens
            floor = max(float(np.nanmax(d)) * 1e-6, 1e-300)
            ax2.semilogy(grid, np.clip(d, floor, None), color="C0")
            ax2.axvline(0.0, color="0.6", lw=0.8, ls=":")
            nm = run.series("landscape/density/negative_mass")
            title = f"eigenvalue density at step {step}"
            if nm is not None:
                title += f"\nnegative mass {_fmt(nm.at(step) if math.isfinite(nm.at(step)) else nm.last(), 3)}"
            ax2.set_title(title, fontsize=10)
            ax2.set_xlabel("eigenvalue")
        else:
            ax2.text(0.5, 0.5, "no eigenvalue density logged\n(attach HessianDensity)", ha="center", va="center")
            ax2.set_axis_off()
    fig.suptitle("Hessian spectrum over training")
    _footer(
        fig,
        [
            _probe_note(shown[0]) + "; eigenvalues of the Hessian of the mean probe loss (Lanczos, exact HVPs)",
            "2/η: stability threshold of gradient descent with step η ((2+2β)/η with heavy-ball momentum β)",
            "density: stochastic Lanczos quadrature, Gaussian-smoothed; negative mass = Σ_{λ<0}|λ| / Σ|λ|",
            BAND_NOTE if any(stderr_rows(r) for r in shown) else "",
        ],
    )
    return _save(fig, path)


def figure_metric_comparison(runs: Sequence[RunData], path: Path) -> Path | None:
    """Every geometry quantity over training, one line per run."""
    present = [m for m in METRICS if any(m.get(r) is not None for r in runs)]
    if not present:
        return None
    fig, rows, cols = _panel_figure(len(present), footer_lines=4)
    banded = False
    for k, m in enumerate(present):
        ax = fig.add_subplot(rows, cols, k + 1)
        for i, run in enumerate(runs):
            s = m.get(run)
            if s is not None:
                ax.plot(s.steps, s.values, marker=".", color=_color(i), label=run.name)
                if m.key in _STDERR_TAGS:
                    banded |= _band(ax, s, run.series(_STDERR_TAGS[m.key]), _color(i))
        if m.key == "lambda_over_threshold":
            ax.axhline(1.0, color="k", ls="--", lw=0.8)
        ax.set_title(m.label, fontsize=10)
        ax.set_xlabel("step")
        if k == 0:
            ax.legend(fontsize="x-small")
    fig.suptitle("Landscape metrics across runs")
    _footer(
        fig,
        [_probe_note(runs[0]) + "; " + _sharpness_note(runs[0])]
        + [f"{m.label}: {m.definition}" for m in present[:2]]
        + [BAND_NOTE if banded else ""],
    )
    return _save(fig, path)


def _raw_curve(run: RunData, name: str) -> tuple[int, dict[str, Any]] | None:
    curves = _raw_curves(run, name)
    return curves[-1] if curves else None


def _raw_curves(run: RunData, name: str) -> list[tuple[int, dict[str, Any]]]:
    """Raw curve data logged for handler ``name`` (JSON text under ``landscape/<name>/data``), oldest first."""
    for tag in (f"landscape/{name}/data", f"landscape/{name}/data/text_summary"):
        if tag in run.texts:
            out = []
            for step, text in run.texts[tag]:
                body = text.strip().strip("`").removeprefix("json").strip()
                try:
                    out.append((step, json.loads(body)))
                except json.JSONDecodeError:
                    logger.warning("%s: could not parse %s at step %d", run.name, tag, step)
            return out
    return []


def _slice2d(run: RunData) -> tuple[int, np.ndarray, np.ndarray, np.ndarray] | None:
    """The last 2D slice: ``(step, x, y, loss[i, j])`` with ``i`` along x."""
    raw = _raw_curve(run, "slice2d")
    if raw is not None:
        step, d = raw
        x, y = (np.asarray(c, dtype=np.float64) for c in d["coords"])
        return step, x, y, np.asarray(d["loss"], dtype=np.float64)
    return None


def figure_slice1d(runs: Sequence[RunData], path: Path) -> Path | None:
    """Per run: the 1D loss slices along the fixed direction, the last firing drawn over the earlier ones."""
    shown = [(r, _raw_curves(r, "slice1d")) for r in runs]
    shown = [(r, c) for r, c in shown if c]
    if not shown:
        return None
    fig, rows, cols = _panel_figure(len(shown), footer_lines=2)
    for k, (run, curves) in enumerate(shown):
        ax = fig.add_subplot(rows, cols, k + 1)
        n = len(curves)
        for i, (step, d) in enumerate(curves):
            last = i == n - 1
            ax.plot(
                np.asarray(d["coords"], dtype=np.float64).reshape(-1),
                finite_grid(np.asarray(d["loss"])),
                color="C3" if last else "C0",
                alpha=1.0 if last else 0.2 + 0.5 * i / max(n - 1, 1),
                lw=2 if last else 1,
                label=f"step {step}" if last or i == 0 else None,
            )
        ax.axvline(0.0, color="0.6", lw=0.8, ls=":")
        ax.set_title(f"{run.name}: 1D slice", fontsize=10)
        ax.set_xlabel("coordinate along the direction")
        ax.set_ylabel("probe loss")
        ax.legend(fontsize="x-small")
    fig.suptitle("Loss along a fixed random direction through the current weights")
    _footer(fig, [_probe_note(shown[0][0]), _slice_note(shown[0][0]) + "; the same direction at every firing"])
    return _save(fig, path)


def figure_contour(runs: Sequence[RunData], path: Path) -> Path | None:
    """Per run: filled contours of the last 2D slice (log loss when positive), current weights at ★."""
    shown = [(r, s) for r in runs if (s := _slice2d(r)) is not None]
    if not shown:
        return None
    fig, rows, cols = _panel_figure(len(shown), footer_lines=2, width=4.4, height=3.8)
    for k, (run, (step, x, y, z)) in enumerate(shown):
        ax = fig.add_subplot(rows, cols, k + 1)
        z = finite_grid(z)
        use_log = bool((z > 0).all())
        zz = np.log10(z) if use_log else z
        cs = ax.contourf(x, y, zz.T, levels=25, cmap="viridis")
        ax.contour(x, y, zz.T, levels=25, colors="k", linewidths=0.3, alpha=0.5)
        fig.colorbar(cs, ax=ax, label="log10 loss" if use_log else "loss")
        ax.plot([0.0], [0.0], marker="*", color="w", markeredgecolor="k", markersize=12)
        ax.set_title(f"{run.name}, step {step}", fontsize=10)
        ax.set_xlabel("direction 1")
        ax.set_ylabel("direction 2")
        ax.set_aspect("equal", adjustable="box")
    fig.suptitle("2D loss slice around the final weights")
    _footer(fig, [_probe_note(shown[0][0]), _slice_note(shown[0][0])])
    return _save(fig, path)


def _trajectory(run: RunData) -> tuple[int, Any] | None:
    """The last trajectory plane a run logged (any handler name), as an object the plotting code takes."""
    from types import SimpleNamespace

    for tag in sorted(run.texts):
        if not re.fullmatch(r"landscape/[^/]+/data(/text_summary)?", tag):
            continue
        curves = _raw_curves(run, tag.split("/")[1])
        if curves and curves[-1][1].get("kind") == "trajectory_plane":
            step, d = curves[-1]
            grid = SimpleNamespace(coords=[np.asarray(c, dtype=np.float64) for c in d["coords"]], loss=d["loss"])
            return step, SimpleNamespace(coords=d["path"], explained_variance=d["explained_variance"], slice=grid)
    return None


def figure_trajectory(runs: Sequence[RunData], path: Path) -> Path | None:
    """Per run: the training path projected on its top-2 PCA plane over the loss there (Li et al. 2018)."""
    from ignite_landscape.plots import draw_trajectory_plane

    shown = [(r, t) for r in runs if (t := _trajectory(r)) is not None]
    if not shown:
        return None
    fig, rows, cols = _panel_figure(len(shown), footer_lines=2, width=4.8, height=3.8)
    for k, (run, (step, result)) in enumerate(shown):
        ax = fig.add_subplot(rows, cols, k + 1)
        draw_trajectory_plane(fig, ax, result, levels=25)
        ax.set_title(f"{run.name}, step {step}", fontsize=10)
    fig.suptitle("Training path in the plane of its two principal directions (centre: the final weights)")
    _footer(
        fig,
        [
            _probe_note(shown[0][0]),
            "axes: weight-space distance along each unit PCA direction; the share of the path's variance in brackets",
        ],
    )
    return _save(fig, path)


def figure_surface(runs: Sequence[RunData], path: Path) -> Path | None:
    """Per run: the last 2D slice as a 3D surface."""
    shown = [(r, s) for r in runs if (s := _slice2d(r)) is not None]
    if not shown:
        return None
    fig, rows, cols = _panel_figure(len(shown), footer_lines=2, width=4.6, height=4.0)
    for k, (run, (step, x, y, z)) in enumerate(shown):
        ax = fig.add_subplot(rows, cols, k + 1, projection="3d")
        z = finite_grid(z)
        use_log = bool((z > 0).all())
        X, Y = np.meshgrid(x, y, indexing="ij")
        ax.plot_surface(X, Y, np.log10(z) if use_log else z, cmap="viridis", linewidth=0, antialiased=True)
        ax.set_title(f"{run.name}, step {step}", fontsize=10)
        ax.set_xlabel("dir. 1")
        ax.set_ylabel("dir. 2")
        ax.set_zlabel("log10 loss" if use_log else "loss")
    fig.suptitle("2D loss slice as a surface")
    _footer(fig, [_probe_note(shown[0][0]), _slice_note(shown[0][0])])
    return _save(fig, path)


def figure_connectivity(runs: Sequence[RunData], path: Path) -> Path | None:
    """Per run: loss along the linear path from the reference weights (α = 0) to the current ones (α = 1)."""
    shown = [(r, _raw_curves(r, "connectivity")) for r in runs]
    shown = [(r, c) for r, c in shown if c or r.series("landscape/connectivity/loss_barrier") is not None]
    if not shown:
        return None
    from matplotlib import colormaps

    fig, rows, cols = _panel_figure(len(shown), footer_lines=3)
    cmap = colormaps["viridis"]
    for k, (run, curves) in enumerate(shown):
        ax = fig.add_subplot(rows, cols, k + 1)
        if curves:
            for i, (step, d) in enumerate(curves):
                ax.plot(
                    d["alphas"],
                    finite_grid(np.asarray(d["loss"])),
                    color=cmap(i / max(len(curves) - 1, 1)),
                    label=f"step {step}" if i in (0, len(curves) - 1) else None,
                )
            ax.set_xlabel("α (0: reference, 1: current)")
            ax.set_ylabel("probe loss")
            ax.legend(fontsize="x-small")
        else:
            s = run.series("landscape/connectivity/loss_barrier")
            ax.plot(s.steps, s.values, marker=".", color="C0")
            ax.set_xlabel("step")
            ax.set_ylabel("loss barrier")
        ax.set_title(f"{run.name}: linear mode connectivity", fontsize=10)
    fig.suptitle("Linear interpolation between a reference and the current weights")
    _footer(
        fig,
        [
            _probe_note(shown[0][0]),
            "curve: probe loss at (1−α)·a + α·b, b = weights at the firing, " + _connectivity_note(shown[0][0]),
            "barrier = max over α of L(α) − [(1−α)·L(0) + α·L(1)] (0 for a curve below its chord)",
        ],
    )
    return _save(fig, path)


def figure_correlation(
    runs: Sequence[RunData], corrs: Sequence[Correlation], path: Path, accuracy_tag: str | None = None
) -> Path | None:
    """Per geometry quantity: test accuracy against it at every logged (epoch, run), with the coefficients."""
    panels = []
    for m in METRICS:
        pts = []
        for i, run in enumerate(runs):
            s, tag = m.get(run), _accuracy_tag(run, accuracy_tag)
            if s is None or tag is None:
                continue
            x, y = paired(run, s, run.scalars[tag])
            if x.size:
                pts.append((i, run, x, y))
        if pts:
            panels.append((m, pts))
    if not panels:
        return None
    fig, rows, cols = _panel_figure(len(panels), footer_lines=3, width=4.6, height=3.9)
    for k, (m, pts) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, k + 1)
        for i, run, x, y in pts:
            ax.plot(x, y, "-", color=_color(i), alpha=0.25, lw=0.8)
            ax.scatter(x, y, s=14, color=_color(i), label=run.name)
        mine = [c for c in corrs if c.metric == m.label]
        pooled = [c for c in mine if c.scope.startswith("pooled")]
        within = [c for c in mine if c.scope.startswith("within")]
        across = [c for c in mine if c.scope.startswith("across")]
        lines = []
        if pooled:
            lines.append("pooled: " + pooled[0].describe(short=True))
        elif within:
            lines.append("over epochs: " + within[0].describe(short=True))
        if across:
            lines.append("across runs: " + across[0].describe(short=True))
        ax.set_title(m.label + "\n" + "\n".join(lines), fontsize=7)
        ax.set_xlabel(m.label)
        ax.set_ylabel("test accuracy")
        if k == 0:
            ax.legend(fontsize="x-small")
    fig.suptitle("Geometry against test accuracy")
    _footer(
        fig,
        [
            "r: Pearson, τ: Kendall τ-b, [ ]: 95% percentile bootstrap interval over resampled points (seeded)",
            "pooled = every logged (epoch, run) pair; points of one run are one trajectory, not independent, "
            "so the interval is optimistic and time drives both axes",
            "across runs = final value of each run; needs ≥ 3 runs (two points always give r = ±1)",
        ],
    )
    return _save(fig, path)


SUMMARY_COLUMNS: tuple[tuple[str, str], ...] = (
    ("run", "run"),
    ("steps", "last step"),
    ("test_accuracy", "test acc."),
    ("best_test_accuracy", "best test acc."),
    ("train_loss", "train loss"),
    ("lambda_max", "λ_max"),
    ("threshold", "2/η"),
    ("lambda_over_threshold", "λ_max/(2/η)"),
    ("lambda_min_ratio", "|λ_min|/λ_max"),
    ("negative_mass", "neg. mass"),
    ("trace", "tr(H)"),
    ("sharpness", "sharpness"),
    ("loss_barrier", "loss barrier"),
    ("noise_scale", "B_simple"),
    ("landscape_seconds", "landscape s"),
)


def summary_rows(runs: Sequence[RunData], accuracy_tag: str | None = None) -> list[dict[str, Any]]:
    """Final values of each run (``None`` where a quantity was not logged)."""
    rows = []
    for run in runs:
        row: dict[str, Any] = {"run": run.name}
        tag = _accuracy_tag(run, accuracy_tag)
        acc = run.series(tag) if tag else None
        row["test_accuracy"] = acc.last() if acc is not None else None
        row["best_test_accuracy"] = float(np.nanmax(acc.values)) if acc is not None else None
        loss = run.series("train/loss") or run.series("training/loss")
        row["train_loss"] = loss.last() if loss is not None else None
        for m in METRICS:
            s = m.get(run)
            row[m.key] = s.last() if s is not None else None
        thr = _threshold(run)
        row["threshold"] = thr.last() if thr is not None else None
        secs = [run.scalars[t].values for t in run.scalars if t.startswith("landscape/") and t.endswith("/seconds")]
        row["landscape_seconds"] = float(sum(np.nansum(v) for v in secs)) if secs else None
        all_steps = [s.steps.max() for s in run.scalars.values() if s.steps.size]
        row["steps"] = int(max(all_steps)) if all_steps else None
        rows.append(row)
    return rows


def _cell(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, str):
        return v
    if isinstance(v, int):
        return str(v)
    return _fmt(float(v), 4)


def figure_summary_table(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """The final values of every run as a table image."""
    from matplotlib.figure import Figure

    cols = [(k, h) for k, h in SUMMARY_COLUMNS if any(r.get(k) is not None for r in rows)]
    # Transposed (quantities as rows) so many quantities and a few runs stay readable.
    cell_text = [[h] + [_cell(r.get(k)) for r in rows] for k, h in cols[1:]]
    fig = Figure(figsize=(2.2 + 1.9 * len(rows), 0.6 + 0.3 * len(cell_text)))
    ax = fig.add_subplot(1, 1, 1)
    ax.set_axis_off()
    table = ax.table(
        cellText=cell_text, colLabels=["quantity"] + [r["run"] for r in rows], loc="center", cellLoc="center"
    )
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.scale(1.0, 1.25)
    ax.set_title("Final values per run (— = not logged)", fontsize=10)
    return _save(fig, path)


def figure_overview(run: RunData, path: Path, accuracy_tag: str | None = None) -> Path | None:
    """One run on one page: accuracy and loss, top eigenvalues against 2/η, the 2D slice, sharpness/barrier."""
    tag = _accuracy_tag(run, accuracy_tag)
    if tag is None and not _eigen_tags(run):
        return None
    fig = _new_figure(1, 4, width=3.9, height=3.3, footer_lines=2)
    ax = fig.add_subplot(1, 4, 1)
    if tag is not None:
        s = run.scalars[tag]
        ax.plot(s.steps, s.values, marker=".", color="C2", label="test accuracy")
        ax.set_ylabel("test accuracy")
    loss = run.series("train/loss")
    if loss is not None:
        ax_b = ax.twinx()
        ax_b.plot(loss.steps, loss.values, color="C1", label="train loss")
        ax_b.set_ylabel("train loss", color="C1")
    ax.set_xlabel("epoch")
    ax.set_title("training", fontsize=10)
    ax = fig.add_subplot(1, 4, 2)
    for j, t in enumerate(_eigen_tags(run)):
        s = run.scalars[t]
        ax.plot(
            s.steps,
            s.values,
            marker=".",
            ms=3,
            color=_color(j),
            alpha=1.0 if j == 0 else 0.5,
            label="λ_" + t.rsplit("_", 1)[1],
        )
    thr = _threshold(run)
    if thr is not None:
        ax.plot(thr.steps, thr.values, "k--", label=_threshold_label(run))
    ax.set_xlabel("epoch")
    ax.set_title("top Hessian eigenvalues", fontsize=10)
    ax.legend(fontsize="x-small", ncol=2, loc="lower right")
    ax = fig.add_subplot(1, 4, 3)
    sl = _slice2d(run)
    if sl is not None:
        step, x, y, z = sl
        z = finite_grid(z)
        zz = np.log10(z) if (z > 0).all() else z
        ax.contourf(x, y, zz.T, levels=25, cmap="viridis")
        ax.plot([0.0], [0.0], marker="*", color="w", markeredgecolor="k", markersize=10)
        ax.set_aspect("equal", adjustable="box")
        ax.set_title(f"2D slice, epoch {step} (log10 loss)", fontsize=10)
    else:
        ax.set_axis_off()
    ax = fig.add_subplot(1, 4, 4)
    for j, (key, label) in enumerate((("sharpness", "sharpness"), ("loss_barrier", "loss barrier"))):
        m = next(mm for mm in METRICS if mm.key == key)
        s = m.get(run)
        if s is not None:
            ax.plot(s.steps, s.values, marker=".", color=_color(j + 3), label=label)
    ax.set_xlabel("epoch")
    ax.set_title("sharpness and barrier", fontsize=10)
    ax.legend(fontsize="x-small")
    fig.suptitle(f"{run.name}: the loss landscape during training")
    _footer(
        fig,
        [
            _probe_note(run) + "; " + _sharpness_note(run),
            "barrier: linear path from the reference (attach time, or the previous firing) to now; " + _slice_note(run),
        ],
    )
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------- driver


@dataclass
class Report:
    """What :func:`write_report` produced.

    Attributes:
        runs: the runs read.
        figures: figure name → PNG path, for every figure written.
        skipped: figure name → why it was not written (nothing of the kind was logged).
        summary: path of ``summary.md``.
        correlations: every correlation computed (or refused).
        rows: the summary table.
    """

    runs: list[RunData]
    figures: dict[str, Path]
    skipped: dict[str, str]
    summary: Path
    correlations: list[Correlation]
    rows: list[dict[str, Any]]


def figure_curvature(runs: Sequence[RunData], path: Path) -> Path | None:
    """The curvature instruments over training: gradient overlap with the top-k eigenspace (Gur-Ari et al.
    2018), batch sharpness and curvature along the gradient against 2/η (Andreyev & Beneventano 2024), and the
    top GGN eigenvalues of the last firing with the number of outliers (Papyan 2019)."""
    panels: list[str] = []
    if any(r.series("landscape/overlap/value") is not None for r in runs):
        panels.append("overlap")
    if any(r.series("landscape/batch_sharpness/value") or r.series("landscape/directional/value") for r in runs):
        panels.append("sharpness")
    if any(r.series("landscape/ggn/ggn_lambda_1") is not None for r in runs):
        panels.append("ggn")
    if not panels:
        return None
    fig, rows, cols = _panel_figure(len(panels), footer_lines=3)
    for k, panel in enumerate(panels):
        ax = fig.add_subplot(rows, cols, k + 1)
        for i, run in enumerate(runs):
            color = _color(i)
            if panel == "overlap" and (s := run.series("landscape/overlap/value")) is not None:
                ax.plot(s.steps, s.values, marker=".", color=color, label=run.name)
                ax.set_ylim(-0.02, 1.02)
                ax.set_ylabel("‖P_k g‖² / ‖g‖²")
                ax.set_title("gradient in the top-k eigenspace", fontsize=10)
            elif panel == "sharpness":
                for tag, style, label in (
                    ("landscape/batch_sharpness/value", "-", "batch sharpness"),
                    ("landscape/directional/value", "--", "gᵀHg/‖g‖² (full probe)"),
                    ("landscape/hessian/lambda_max", ":", "λ_max"),
                ):
                    if (s := run.series(tag)) is not None:
                        ax.plot(s.steps, s.values, style, marker=".", color=color, label=f"{run.name}: {label}")
                t = run.series("landscape/batch_sharpness/threshold") or run.series("landscape/directional/threshold")
                if t is not None:
                    ax.plot(t.steps, t.values, color="k", lw=0.8, label="2/η")
                ax.set_yscale("log")
                ax.set_title("curvature met by SGD", fontsize=10)
            elif panel == "ggn":
                tags = sorted(
                    (t for t in run.landscape_tags("ggn") if re.fullmatch(r"landscape/ggn/ggn_lambda_\d+", t)),
                    key=lambda t: int(t.rsplit("_", 1)[1]),
                )
                if not tags:
                    continue
                values = np.array([run.scalars[t].last() for t in tags])
                ax.semilogy(range(1, len(values) + 1), np.clip(values, 1e-12, None), "o", color=color, ms=4)
                n_out = run.series("landscape/ggn/num_outliers")
                n_cls = run.series("landscape/ggn/num_classes")
                if n_out is not None:
                    ax.axvline(n_out.last() + 0.5, color=color, lw=0.8, ls="--")
                    label = f"{run.name}: {n_out.last():.0f} outliers"
                    if n_cls is not None:
                        label += f", {n_cls.last():.0f} classes"
                    ax.plot([], [], "o", color=color, label=label)
                ax.set_xlabel("index")
                ax.set_ylabel("GGN eigenvalue")
                ax.set_title("top GGN eigenvalues, last firing", fontsize=10)
            if panel != "ggn":
                ax.set_xlabel("step")
        ax.legend(fontsize="x-small")
    fig.suptitle("Curvature instruments")
    _footer(
        fig,
        [
            _probe_note(runs[0]),
            "overlap: share of the probe gradient's squared norm in the span of the top-k Hessian eigenvectors; "
            "batch sharpness: mean over seeded probe mini-batches of g_Bᵀ H_B g_B / ‖g_B‖²",
            "GGN outliers: the deepest j with λ_j ≥ 2·λ_(j+1) among the computed top eigenvalues (dashed line)",
        ],
    )
    return _save(fig, path)


_SKIP_REASONS = {
    "training_curves": "no non-landscape scalars (attach an OutputHandler for the loss and test accuracy)",
    "spectrum": "no Hessian eigenvalues logged (attach HessianSpectrum)",
    "metric_comparison": "no landscape scalars logged",
    "connectivity": "no mode connectivity logged (attach ModeConnectivity)",
    "slice1d": "no 1D slice data logged (attach LossSlice(dims=1))",
    "contour": "no 2D slice data logged (attach LossSlice(dims=2))",
    "surface": "no 2D slice data logged (attach LossSlice(dims=2))",
    "trajectory": "no trajectory plane logged (attach TrajectoryPlane and log at Events.COMPLETED)",
    "correlation": "no test accuracy logged next to a geometry quantity (log test/accuracy at the same steps)",
    "overview": "neither test accuracy nor Hessian eigenvalues logged",
    "curvature": "no curvature instruments logged (attach GradientOverlap, BatchSharpness or GGNOutliers)",
}


def _unique_names(paths: Sequence[Path]) -> list[str]:
    names = [p.name or str(p) for p in paths]
    for i, p in enumerate(paths):
        if names.count(names[i]) > 1:
            names[i] = f"{p.parent.name}/{p.name}"
    return names


def write_report(
    run_dirs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    accuracy_tag: str | None = None,
    num_resamples: int = 2000,
    seed: int = 0,
) -> Report:
    """Read the runs, write every figure that has data and ``summary.md`` into ``out_dir``.

    Args:
        run_dirs: run folders (or folders of run folders).
        out_dir: created if needed.
        accuracy_tag: the scalar tag of test accuracy (default: ``test/accuracy`` or a tag that looks like it).
        num_resamples: bootstrap resamples per interval.
        seed: seed of the bootstrap's private generator.

    Raises:
        ReportError: no event files, or runs without any scalar.
    """
    paths = find_runs(run_dirs)
    runs = [load_run(p, name) for p, name in zip(paths, _unique_names(paths))]
    empty = [r.name for r in runs if not r.scalars]
    if len(empty) == len(runs):
        raise ReportError(f"the event files of {', '.join(empty)} hold no scalars; nothing to report")
    runs = [r for r in runs if r.scalars]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    corrs = correlations(runs, accuracy_tag=accuracy_tag, num_resamples=num_resamples, seed=seed)
    rows = summary_rows(runs, accuracy_tag)
    builders: dict[str, Callable[[], Path | None]] = {
        "training_curves": lambda: figure_training_curves(runs, out / "training_curves.png"),
        "spectrum": lambda: figure_spectrum(runs, out / "spectrum.png"),
        "metric_comparison": lambda: figure_metric_comparison(runs, out / "metric_comparison.png"),
        "connectivity": lambda: figure_connectivity(runs, out / "connectivity.png"),
        "curvature": lambda: figure_curvature(runs, out / "curvature.png"),
        "slice1d": lambda: figure_slice1d(runs, out / "slice1d.png"),
        "contour": lambda: figure_contour(runs, out / "contour.png"),
        "surface": lambda: figure_surface(runs, out / "surface.png"),
        "trajectory": lambda: figure_trajectory(runs, out / "trajectory.png"),
        "correlation": lambda: figure_correlation(runs, corrs, out / "correlation.png", accuracy_tag),
        "summary_table": lambda: figure_summary_table(rows, out / "summary_table.png"),
        "overview": lambda: figure_overview(runs[0], out / "overview.png", accuracy_tag),
    }
    figures: dict[str, Path] = {}
    skipped: dict[str, str] = {}
    for name, build in builders.items():
        path = build()
        if path is None:
            skipped[name] = _SKIP_REASONS.get(name, "nothing to plot")
        else:
            figures[name] = path
    summary = out / "summary.md"
    summary.write_text(_summary_markdown(runs, rows, corrs, figures, skipped, num_resamples, seed), encoding="utf-8")
    return Report(runs, figures, skipped, summary, corrs, rows)


def _summary_markdown(
    runs: Sequence[RunData],
    rows: Sequence[dict[str, Any]],
    corrs: Sequence[Correlation],
    figures: dict[str, Path],
    skipped: dict[str, str],
    num_resamples: int,
    seed: int,
) -> str:
    lines = ["# Loss-landscape report", ""]
    lines += ["## Runs", ""] + [f"- **{r.name}**: `{r.path}`" for r in runs] + [""]
    cols = [(k, h) for k, h in SUMMARY_COLUMNS if any(r.get(k) is not None for r in rows)]
    lines += ["## Final values", ""]
    lines += ["| quantity | " + " | ".join(r["run"] for r in rows) + " |", "|---|" + "---|" * len(rows)]
    lines += [f"| {_md(h)} | " + " | ".join(_cell(r.get(k)) for r in rows) + " |" for k, h in cols[1:]]
    lines += [
        "",
        "`—`: not logged by that run. No condition number is given: the Hessian is indefinite, so "
        "|λ_min|/λ_max and the negative spectral mass describe its negative part instead.",
        "",
    ]
    errs = [(r.name, row) for r in runs for row in stderr_rows(r)]
    if errs:
        lines += [
            "## Error bars",
            "",
            "Last logged value of each quantity with a standard error, and the interval value ± 2 stderr. "
            "*jackknife*: over chunks of the probe's samples (`uncertainty='jackknife'`: how much the number would "
            "move on another probe of the same size); *estimator*: the estimator's own (random vectors or draws).",
            "",
            "| run | quantity | value | stderr | value ± 2 stderr | kind |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {_md(name)} | {tag.removeprefix('landscape/')} | {_fmt(v)} | {_fmt(e, 3)} | "
            f"[{_fmt(v - INTERVAL_Z * e)}, {_fmt(v + INTERVAL_Z * e)}] | {kind} |"
            for name, (tag, v, e, kind) in errs
        ]
        lines.append("")
    lines += ["## Definitions", ""]
    for run in runs:
        lines.append(f"- {run.name}: {_probe_note(run)}; {_sharpness_note(run)}; {_slice_note(run)}")
    lines += [f"- {m.label}: {m.definition}" for m in METRICS if any(m.get(r) is not None for r in runs)]
    lines += ["", "## Correlation with test accuracy", ""]
    if not corrs:
        lines += ["No geometry quantity was logged at the same steps as a test accuracy; nothing to correlate.", ""]
    else:
        lines += [
            f"Pearson's r and Kendall's τ-b, each with a 95% percentile bootstrap interval ({num_resamples} "
            f"resamples of the points, numpy Generator seeded with {seed}). *Within* a run the points are its "
            "epochs; *pooled* uses every logged (epoch, run) pair of all runs — consecutive epochs of one run are "
            "not independent and training time drives both quantities, so pooled and within-run intervals are "
            "optimistic. *Across runs* uses one final value per run and needs at least 3 runs.",
            "",
            "| quantity | points | n | Pearson r | 95% CI | Kendall τ | 95% CI | note |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for c in corrs:
            if c.estimable:
                lines.append(
                    f"| {_md(c.metric)} | {_md(c.scope)} | {c.n} | {_fmt(c.pearson, 3)} | "
                    f"[{_fmt(c.pearson_ci[0], 3)}, {_fmt(c.pearson_ci[1], 3)}] | {_fmt(c.kendall, 3)} | "
                    f"[{_fmt(c.kendall_ci[0], 3)}, {_fmt(c.kendall_ci[1], 3)}] | {_md(c.note)} |"
                )
            else:
                lines.append(
                    f"| {_md(c.metric)} | {_md(c.scope)} | {c.n} | — | — | — | — | cannot be estimated: {_md(c.note)} |"
                )
        if len(runs) < MIN_POINTS:
            lines += [
                "",
                f"With {len(runs)} run{'s' if len(runs) != 1 else ''}, no correlation *across runs* can be "
                f"estimated (it needs at least {MIN_POINTS}; two points always give r = ±1).",
            ]
        lines.append("")
    lines += ["## Figures", ""] + [f"- [{name}]({p.name})" for name, p in figures.items()]
    lines += [f"- {name}: not written — {why}" for name, why in skipped.items()] + [""]
    return "\n".join(lines)


def _md(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return text.replace("|", "\\|")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ignite_landscape", description="ignite_landscape command line")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser(
        "report",
        help="figures and a markdown summary from TensorBoard event files",
        description="Read the TensorBoard event files of one or more runs and write PNG figures and summary.md.",
    )
    r.add_argument("runs", nargs="+", metavar="RUN_DIR", help="folder with event files (or a folder of run folders)")
    r.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (created)")
    r.add_argument("--accuracy-tag", default=None, help="scalar tag of test accuracy (default: test/accuracy)")
    r.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples per confidence interval")
    r.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m ignite_landscape`` and ``ignite-landscape``; returns the exit code.

    0 on success, 2 on bad input (no event files, nothing to report) with the reason on stderr.
    """
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    import matplotlib

    matplotlib.use("Agg", force=False)
    try:
        rep = write_report(
            args.runs, args.out, accuracy_tag=args.accuracy_tag, num_resamples=args.bootstrap, seed=args.seed
        )
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"Read {len(rep.runs)} run(s): {', '.join(r.name for r in rep.runs)}")
    for path in rep.figures.values():
        print(f"  wrote {path}")
    for name, why in rep.skipped.items():
        print(f"  skipped {name}: {why}")
    print(f"  wrote {rep.summary}")
    return 0
