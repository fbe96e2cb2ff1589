"""The summary quantities of a run, found by result kind: λ_max, 2/η, tr(H), sharpness, barrier, noise scale, ...

Each :class:`Metric` reads the handlers of one result kind, whatever the user named them
(``HessianSpectrum(..., name="curv")`` is a ``"spectrum"``). With several handlers of a kind, each gives
its own series (:meth:`Metric.all`, drawn one line each); the **first one in name order** that logged
the quantity fills the summary row and the correlations (:meth:`Metric.first`).

Example:
    >>> import numpy as np
    >>> from pathlib import Path
    >>> from ignite_landscape.report.events import RunData, Series
    >>> s = lambda v: Series(np.array([1, 2]), np.array(v))
    >>> run = RunData("r", Path("r"), scalars={"landscape/sam05/value": s([0.1, 0.3])},
    ...               texts={"landscape/sam05/record": [(1, '{"kind": "sharpness", "definitions": {}}')]})
    >>> metric("sharpness").first(run).last()
    0.3
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ignite_landscape.report.events import RunData, Series, paired
from ignite_landscape.report.statistics import Correlation, correlate

__all__ = [
    "Metric",
    "METRICS",
    "metric",
    "SUMMARY_COLUMNS",
    "summary_rows",
    "correlations",
    "stderr_rows",
    "accuracy_tag_of",
    "threshold",
    "threshold_tag",
    "threshold_definition",
    "threshold_label",
    "probe_note",
    "sharpness_note",
    "slice_note",
    "connectivity_note",
]


@dataclass(frozen=True)
class Metric:
    """A summary quantity read from the handlers of one result kind.

    Attributes:
        key: row key in :func:`summary_rows` (``"lambda_max"``).
        label: short label in figures and tables (``"λ_max"``).
        kind: the result kind of the handlers it reads.
        definition: what it is, when no handler's record defines it (derived quantities always use it).
        series: ``(run, handler name) → Series | None``.
        defined_by: the scalar key whose record definition replaces :attr:`definition` (``""``: none).
        stderr: the scalar key of its standard error, drawn as a band (``""``: none).
        fallback_kind: the kind read instead when a run has no handler of :attr:`kind`.
    """

    key: str
    label: str
    kind: str
    definition: str
    series: Callable[[RunData, str], Series | None]
    defined_by: str = ""
    stderr: str = ""
    fallback_kind: str = ""

    def all(self, run: RunData) -> list[tuple[str, Series]]:
        """``(handler name, series)`` of every handler of :attr:`kind` that logged it, in name order."""
        names = run.handlers(self.kind) or (run.handlers(self.fallback_kind) if self.fallback_kind else [])
        return [(n, s) for n in names if (s := self.series(run, n)) is not None]

    def first(self, run: RunData) -> Series | None:
        """The series of the first handler in name order that logged it (``None`` when none did)."""
        found = self.all(run)
        return found[0][1] if found else None

    def define(self, runs: Sequence[RunData]) -> str:
        """The first run's record definition of the quantity, else :attr:`definition`."""
        for run in runs:
            text = run.definition(self.kind, self.defined_by) if self.defined_by else None
            if text:
                return text
        return self.definition


def _tag(key: str) -> Callable[[RunData, str], Series | None]:
    return lambda run, name: run.series(f"landscape/{name}/{key}")


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


def threshold_tag(run: RunData, name: str) -> str | None:
    """The stability-threshold tag (2/η, or (2+2β)/η with momentum) spectrum handler ``name`` logged, if any."""
    for tag in run.landscape_tags(name):
        leaf = tag.rsplit("/", 1)[-1]
        if "threshold" in leaf and "precond" not in leaf and run.series(tag) is not None:
            return tag
    return None


def threshold(run: RunData, name: str) -> Series | None:
    """The stability threshold spectrum handler ``name`` logged next to its eigenvalues (``None`` if none)."""
    tag = threshold_tag(run, name)
    return run.series(tag) if tag else None


def threshold_definition(run: RunData, name: str) -> str:
    """Handler ``name``'s record sentence defining its stability threshold (``""`` when it logged none)."""
    tag = threshold_tag(run, name)
    return run.definitions(name).get(tag.rsplit("/", 1)[-1], "") if tag else ""


def threshold_label(run: RunData, name: str) -> str:
    """A legend label for handler ``name``'s stability threshold from its definition (``"2/η with η = 0.1"``)."""
    text = threshold_definition(run, name) or run.legacy_definition("stability threshold") or "stability threshold"
    # The legend takes the formula and its numbers ("(2+2β)/η with η = 0.05, β = 0.9"); the footer has the sentence.
    short = re.split(r":\s|,\sthe\s|\s\((?=[A-Z])", text, maxsplit=1)[0].strip()
    return short if len(short) <= 48 else short[:47] + "…"


def _lambda_min_ratio(run: RunData, name: str) -> Series | None:
    # Lanczos' λ_min when the spectrum handler asked for both ends (or a density handler's extreme Ritz
    # values, which it logs under the same keys); else the first density handler's.
    lmin, lmax = run.series(f"landscape/{name}/lambda_min"), run.series(f"landscape/{name}/lambda_max")
    if lmin is not None and lmax is not None:
        return _ratio(lmin, lmax, absolute=True)
    for dens in run.handlers("density"):
        found = _ratio(run.series(f"landscape/{dens}/lambda_min"), run.series(f"landscape/{dens}/lambda_max"), True)
        if found is not None:
            return found
    return None


def _lambda_over_threshold(run: RunData, name: str) -> Series | None:
    return _ratio(run.series(f"landscape/{name}/lambda_max"), threshold(run, name))


METRICS: tuple[Metric, ...] = (
    Metric(
        "lambda_max",
        "λ_max",
        "spectrum",
        "largest Hessian eigenvalue of the probe loss (Lanczos, exact HVPs)",
        _tag("lambda_max"),
        defined_by="lambda_max",
        stderr="lambda_max_stderr",
    ),
    Metric(
        "lambda_over_threshold",
        "λ_max / (2/η)",
        "spectrum",
        "λ_max over the stability threshold 2/η ((2+2β)/η with "
        "momentum β); ≥ 1 means gradient descent on a quadratic would diverge along the top direction",
        _lambda_over_threshold,
    ),
    Metric(
        "trace",
        "tr(H)",
        "trace",
        "Hessian trace (Hutch++ / Hutchinson with Rademacher vectors)",
        _tag("value"),
        defined_by="value",
        stderr="stderr",
    ),
    Metric(
        "negative_mass",
        "negative mass",
        "density",
        "share of the absolute spectral mass at negative eigenvalues, Σ_{λ<0}|λ| / Σ|λ| (Lanczos quadrature)",
        _tag("negative_mass"),
        defined_by="negative_mass",
    ),
    Metric(
        "lambda_min_ratio",
        "|λ_min|/λ_max",
        "spectrum",
        "size of the most negative eigenvalue relative to the largest "
        "(the Hessian is indefinite, so no condition number)",
        _lambda_min_ratio,
        fallback_kind="density",  # a density handler logs its extreme Ritz values too
    ),
    Metric(
        "sharpness",
        "sharpness",
        "sharpness",
        "L(θ+ε) − L(θ) with ‖ε‖ ≤ ρ (see the sharpness definition)",
        _tag("value"),
        defined_by="value",
        stderr="stderr",
    ),
    Metric(
        "loss_barrier",
        "loss barrier",
        "connectivity",
        "max over α of L((1−α)a+αb) − [(1−α)L(a)+αL(b)] (chord barrier, Entezari et al. 2022) from the "
        "reference a (weights at attach, or at the previous firing with reference='previous') to the current b",
        _tag("loss_barrier"),
        defined_by="loss_barrier",
    ),
    Metric(
        "noise_scale",
        "B_simple",
        "noise_scale",
        "gradient noise scale tr(Σ)/‖G‖² (McCandlish et al. 2018), in samples; ‖G‖² with the "
        "finite-population correction for the probe's share of the data set",
        _tag("b_simple"),
        defined_by="b_simple",
    ),
)


def metric(key: str) -> Metric:
    """The metric of ``key`` (``"lambda_max"``, ``"sharpness"``, ...).

    Raises:
        KeyError: for an unknown key.
    """
    for m in METRICS:
        if m.key == key:
            return m
    raise KeyError(f"no metric {key!r}; known: {[m.key for m in METRICS]}")


def accuracy_tag_of(run: RunData, requested: str | None) -> str | None:
    """The test-accuracy tag: ``requested`` if logged, else ``test/accuracy`` or a tag that looks like it."""
    if requested is not None:
        return requested if run.series(requested) is not None else None
    candidates = [t for t in run.scalars if re.search(r"(^|/)(test|val|valid|validation|eval)[/_-]?acc(uracy)?$", t)]
    preferred = [t for t in candidates if t.startswith("test")]
    pick = (preferred or candidates or [None])[0]
    return pick if pick is not None and run.series(pick) is not None else None


def stderr_rows(run: RunData) -> list[tuple[str, float, float, str]]:
    """``(quantity tag, last value, its standard error, "jackknife" | "estimator")`` per quantity with a stderr.

    Every landscape tag ``q`` logged with ``q_stderr`` (or ``…/value`` with ``…/stderr``) gives a row, at the
    last step both were logged.
    """
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
        rows.append((base, s.at(int(steps[-1])), e.at(int(steps[-1])), "jackknife" if jackknife else "estimator"))
    return rows


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

    Each run contributes its first handler (name order) of the metric's kind.
    """
    out: list[Correlation] = []
    kw: dict[str, Any] = {"num_resamples": num_resamples, "seed": seed}
    for m in METRICS:
        pooled_x: list[float] = []
        pooled_y: list[float] = []
        final_x: list[float] = []
        final_y: list[float] = []
        seen = False
        for run in runs:
            found = m.all(run)
            acc_tag = accuracy_tag_of(run, accuracy_tag)
            if not found or acc_tag is None:
                continue
            seen = True
            x, y = paired(run, found[0][1], run.scalars[acc_tag])
            out.append(correlate(x, y, metric=m.label, scope=f"within {run.name}", unit="epochs", **kw))
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
                correlate(pooled_x, pooled_y, metric=m.label, scope="pooled (epoch, run) pairs", unit="pairs", **kw)
            )
        out.append(correlate(final_x, final_y, metric=m.label, scope="across runs (final values)", unit="runs", **kw))
    return out


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
    """Final values of each run (``None`` where a quantity was not logged).

    Row keys are :data:`SUMMARY_COLUMNS`; with several handlers of one kind, the first one in name order
    that logged the quantity fills its row.
    """
    rows = []
    for run in runs:
        row: dict[str, Any] = {"run": run.name}
        tag = accuracy_tag_of(run, accuracy_tag)
        acc = run.series(tag) if tag else None
        row["test_accuracy"] = acc.last() if acc is not None else None
        row["best_test_accuracy"] = float(np.nanmax(acc.values)) if acc is not None else None
        loss = run.series("train/loss") or run.series("training/loss")
        row["train_loss"] = loss.last() if loss is not None else None
        for m in METRICS:
            found = m.all(run)
            row[m.key] = found[0][1].last() if found else None
        thresholds = [s for n in run.handlers("spectrum") if (s := threshold(run, n)) is not None]
        row["threshold"] = thresholds[0].last() if thresholds else None
        secs = [run.scalars[t].values for t in run.scalars if t.startswith("landscape/") and t.endswith("/seconds")]
        row["landscape_seconds"] = float(sum(np.nansum(v) for v in secs)) if secs else None
        all_steps = [s.steps.max() for s in run.scalars.values() if s.steps.size]
        row["steps"] = int(max(all_steps)) if all_steps else None
        rows.append(row)
    return rows


def _any_definition(run: RunData, key: str) -> str | None:
    for name in run.handler_names():
        text = run.definitions(name).get(key)
        if text:
            return text
    return None


def probe_note(run: RunData) -> str:
    """The probe the run's handlers measured on, from their records (or the older definitions table)."""
    text = _any_definition(run, "probe")
    if text:
        return f"probe: {text}"
    n = run.legacy_definition("probe samples")
    return f"probe: {n} fixed training samples" if n else "probe size: not logged"


def sharpness_note(run: RunData) -> str:
    """What the run's (first) sharpness handler measured: its definition of ``value``, ρ at least."""
    text = run.definition("sharpness", "value") or run.legacy_definition("sharpness")
    if text:
        return f"sharpness: {text}"
    names = run.handlers("sharpness")
    rho = run.series(f"landscape/{names[0]}/rho") if names else None
    rho_txt = f"ρ = {rho.last():.3g}" if rho is not None and math.isfinite(rho.last()) else "ρ not logged"
    return f"sharpness = L(θ+ε) − L(θ), ‖ε‖ ≤ ρ, {rho_txt}"


def slice_note(run: RunData, kind: str = "slice2d") -> str:
    """How the run's slice directions were drawn and normalised, and the grid (from the slice handler's record)."""
    parts = [run.definition(kind, "directions"), run.definition(kind, "slice")]
    text = "; ".join(p for p in parts if p) or run.legacy_definition("slice directions")
    return f"slice: {text}" if text else "slice directions: normalization not logged"


def connectivity_note(run: RunData) -> str:
    """Which weights the connectivity path runs between (from the connectivity handler's record)."""
    ref = run.definition("connectivity", "reference")
    if ref:
        return ref
    ref = run.legacy_definition("connectivity reference")
    return f"a = {ref}" if ref else "a = the handler's reference weights (not logged)"
