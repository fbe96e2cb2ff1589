"""The report's figures of quantities over training: training curves, spectrum, metrics, correlation, overview.

Handlers are found by result kind (:mod:`ignite_landscape.report.metrics`); the spectrum figure has one row
per spectrum handler of each run, with its own stability threshold labelled from its record. Curves
(the eigenvalue density, the 2D slice of the overview) are drawn by :mod:`ignite_landscape.plots`.

Example:
    >>> import numpy as np, tempfile
    >>> from pathlib import Path
    >>> from ignite_landscape.report.events import RunData, Series
    >>> run = RunData("r", Path("r"), scalars={"test/accuracy": Series(np.array([1, 2]), np.array([0.5, 0.6]))})
    >>> figure_training_curves([run], Path(tempfile.mkdtemp()) / "t.png").name
    't.png'
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ignite_landscape.report.events import RunData, Series, eigen_tags, paired
from ignite_landscape.report.layout import BAND_NOTE, band, color, footer, new_figure, panel_axes, panel_title, save
from ignite_landscape.report.metrics import (
    METRICS,
    SUMMARY_COLUMNS,
    accuracy_tag_of,
    metric,
    probe_note,
    sharpness_note,
    slice_note,
    threshold,
    threshold_definition,
    threshold_label,
)
from ignite_landscape.report.statistics import Correlation, format_number

__all__ = [
    "SpectrumPanel",
    "spectrum_panels",
    "figure_training_curves",
    "figure_spectrum",
    "figure_metric_comparison",
    "figure_correlation",
    "figure_summary_table",
    "figure_overview",
    "cell",
]


def _training_tags(runs: Sequence[RunData]) -> list[str]:
    tags = sorted({t for r in runs for t in r.scalars if not t.startswith("landscape/")})
    # Accuracy and loss first: the curves a reader looks for.
    return sorted(tags, key=lambda t: (0 if "acc" in t else 1 if "loss" in t else 2, t))


def figure_training_curves(runs: Sequence[RunData], path: Path) -> Path | None:
    """One panel per logged training/evaluation scalar, one line per run."""
    tags = [t for t in _training_tags(runs) if any(r.series(t) is not None for r in runs)][:6]
    if not tags:
        return None
    fig, axes = panel_axes(len(tags), footer_lines=1)
    for k, (tag, ax) in enumerate(zip(tags, axes)):
        for i, run in enumerate(runs):
            s = run.series(tag)
            if s is not None:
                ax.plot(s.steps, s.values, marker="." if s.steps.size < 60 else None, color=color(i), label=run.name)
        ax.set_title(tag, fontsize=10)
        ax.set_xlabel("step (as logged)")
        if "loss" in tag and all((r.series(tag) is None or (r.scalars[tag].values > 0).all()) for r in runs):
            ax.set_yscale("log")
        if k == 0:
            ax.legend(fontsize="small")
    fig.suptitle("Training curves")
    footer(fig, ["test/* is measured on the held-out test set after each epoch; train/loss is the epoch mean"])
    return save(fig, path)


@dataclass
class SpectrumPanel:
    """What the spectrum figure draws for one spectrum handler of one run.

    Attributes:
        run: the run.
        name: the handler's name.
        eigenvalues: ``(label, series, stderr series or None)`` of λ_1 … λ_k (or λ_max alone).
        threshold: the stability threshold the handler logged (``None`` if none).
        threshold_label: its legend label, from the handler's definition (``"2/η with η = 0.1"``).
        threshold_definition: the whole sentence, for the footer (``""`` when the run did not define it).
        lambda_min: λ_min when the handler asked for both ends.
    """

    run: RunData
    name: str
    eigenvalues: list[tuple[str, Series, Series | None]]
    threshold: Series | None
    threshold_label: str
    threshold_definition: str
    lambda_min: Series | None


def spectrum_panels(runs: Sequence[RunData]) -> list[SpectrumPanel]:
    """One :class:`SpectrumPanel` per handler of kind ``"spectrum"`` of each run that logged eigenvalues."""
    out = []
    for run in runs:
        for name in run.handlers("spectrum"):
            tags = eigen_tags(run, name) or [f"landscape/{name}/lambda_max"]
            values = []
            for tag in tags:
                s = run.series(tag)
                if s is not None:
                    label = "λ_" + tag.rsplit("_", 1)[1] if tag[-1].isdigit() else "λ_max"
                    values.append((label, s, run.series(tag + "_stderr")))
            if not values:
                continue
            thr, label, text = threshold(run, name), threshold_label(run, name), threshold_definition(run, name)
            lmin = run.series(f"landscape/{name}/lambda_min")
            out.append(SpectrumPanel(run, name, values, thr, label, text, lmin))
    return out


def _density(run: RunData) -> tuple[int, Any, float] | None:
    """The last eigenvalue density of the run's first density handler: ``(step, curve, negative mass)``."""
    found = run.curve_history("density", "density")
    if not found:
        return None
    name, history = found[0]
    step, curve = history[-1]
    nm = run.series(f"landscape/{name}/negative_mass")
    mass = math.nan if nm is None else (nm.at(step) if math.isfinite(nm.at(step)) else nm.last())
    return step, curve, mass


def figure_spectrum(runs: Sequence[RunData], path: Path) -> Path | None:
    """Per spectrum handler of each run: λ_1 … λ_k over training with its stability threshold; the last density."""
    from ignite_landscape import plots

    shown = spectrum_panels(runs)
    if not shown:
        return None
    fig = new_figure(len(shown), 2, width=5.0, footer_lines=7)
    banded_any = False
    for row, p in enumerate(shown):
        ax = fig.add_subplot(len(shown), 2, 2 * row + 1)
        banded = False
        for j, (label, s, err) in enumerate(p.eigenvalues):
            ax.plot(s.steps, s.values, marker=".", color=color(j), alpha=1.0 if j == 0 else 0.6, label=label)
            banded |= band(ax, s, err, color(j))
        if p.threshold is not None:
            ax.plot(p.threshold.steps, p.threshold.values, "k--", lw=1.2, label=p.threshold_label)
        if p.lambda_min is not None:
            ax.plot(p.lambda_min.steps, p.lambda_min.values, ":", color="0.4", label="λ_min")
        banded_any |= banded
        title = f"{panel_title(p.run.name, p.name)}: top Hessian eigenvalues" + (" ± 2 stderr" if banded else "")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("eigenvalue")
        ax.legend(fontsize="x-small", ncol=2)
        ax2 = fig.add_subplot(len(shown), 2, 2 * row + 2)
        dens = _density(p.run)
        if dens is not None:
            step, curve, mass = dens
            plots.draw_line(ax2, [("", curve)])
            ax2.set_title(f"eigenvalue density at step {step}\nnegative mass {format_number(mass, 3)}", fontsize=10)
            ax2.set_xlabel("eigenvalue")
        else:
            ax2.text(0.5, 0.5, "no eigenvalue density logged\n(attach HessianDensity)", ha="center", va="center")
            ax2.set_axis_off()
    fig.suptitle("Hessian spectrum over training")
    first = shown[0]
    thr_text = next((f"stability threshold: {p.threshold_definition}" for p in shown if p.threshold_definition), "")
    lam_text = first.run.definitions(first.name).get("lambda_max") or (
        "eigenvalues of the Hessian of the mean probe loss (Lanczos, exact HVPs)"
    )
    dens_text = first.run.definition("density", "density") or (
        "stochastic Lanczos quadrature, Gaussian-smoothed; negative mass = Σ_{λ<0}|λ| / Σ|λ|"
    )
    footer(
        fig,
        [
            probe_note(first.run),
            f"λ_max: {lam_text}",
            thr_text
            or "2/η: stability threshold of gradient descent with step η ((2+2β)/η with heavy-ball momentum β)",
            f"density: {dens_text}",
            BAND_NOTE if banded_any else "",
        ],
    )
    return save(fig, path)


def figure_metric_comparison(runs: Sequence[RunData], path: Path) -> Path | None:
    """Every geometry quantity over training: one line per (run, handler of the quantity's kind)."""
    present = [m for m in METRICS if any(m.all(r) for r in runs)]
    if not present:
        return None
    fig, axes = panel_axes(len(present), footer_lines=4)
    banded = False
    for m, ax in zip(present, axes):
        i = 0
        for run in runs:
            found = m.all(run)
            for name, s in found:
                label = run.name if len(found) == 1 else panel_title(run.name, name)
                ax.plot(s.steps, s.values, marker=".", color=color(i), label=label)
                if m.stderr:
                    banded |= band(ax, s, run.series(f"landscape/{name}/{m.stderr}"), color(i))
                i += 1
        if m.key == "lambda_over_threshold":
            ax.axhline(1.0, color="k", ls="--", lw=0.8)
        ax.set_title(m.label, fontsize=10)
        ax.set_xlabel("step")
        ax.legend(fontsize="x-small")
    fig.suptitle("Landscape metrics across runs")
    footer(
        fig,
        [probe_note(runs[0]) + "; " + sharpness_note(runs[0])]
        + [f"{m.label}: {m.define(runs)}" for m in present[:2]]
        + [BAND_NOTE if banded else ""],
    )
    return save(fig, path)


def figure_correlation(
    runs: Sequence[RunData], corrs: Sequence[Correlation], path: Path, accuracy_tag: str | None = None
) -> Path | None:
    """Per geometry quantity: test accuracy against it at every logged (epoch, run), with the coefficients."""
    panels = []
    for m in METRICS:
        pts = []
        for i, run in enumerate(runs):
            s, tag = m.first(run), accuracy_tag_of(run, accuracy_tag)
            if s is None or tag is None:
                continue
            x, y = paired(run, s, run.scalars[tag])
            if x.size:
                pts.append((i, run, x, y))
        if pts:
            panels.append((m, pts))
    if not panels:
        return None
    fig, axes = panel_axes(len(panels), footer_lines=3, width=4.6, height=3.9)
    for k, ((m, pts), ax) in enumerate(zip(panels, axes)):
        for i, run, x, y in pts:
            ax.plot(x, y, "-", color=color(i), alpha=0.25, lw=0.8)
            ax.scatter(x, y, s=14, color=color(i), label=run.name)
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
    footer(
        fig,
        [
            "r: Pearson, τ: Kendall τ-b, [ ]: 95% percentile bootstrap interval over resampled points (seeded)",
            "pooled = every logged (epoch, run) pair; points of one run are one trajectory, not independent, "
            "so the interval is optimistic and time drives both axes",
            "across runs = final value of each run; needs ≥ 3 runs (two points always give r = ±1)",
        ],
    )
    return save(fig, path)


def cell(v: Any) -> str:
    """A summary value as table text (``—`` for not logged)."""
    if v is None:
        return "—"
    if isinstance(v, str):
        return v
    if isinstance(v, int):
        return str(v)
    return format_number(float(v), 4)


def figure_summary_table(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """The final values of every run as a table image."""
    from matplotlib.figure import Figure

    cols = [(k, h) for k, h in SUMMARY_COLUMNS if any(r.get(k) is not None for r in rows)]
    # Transposed (quantities as rows) so many quantities and a few runs stay readable.
    cell_text = [[h] + [cell(r.get(k)) for r in rows] for k, h in cols[1:]]
    fig = Figure(figsize=(2.2 + 1.9 * len(rows), 0.6 + 0.3 * len(cell_text)))
    ax = fig.add_subplot(1, 1, 1)
    ax.set_axis_off()
    labels = ["quantity"] + [r["run"] for r in rows]
    table = ax.table(cellText=cell_text, colLabels=labels, loc="center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.scale(1.0, 1.25)
    ax.set_title("Final values per run (— = not logged)", fontsize=10)
    return save(fig, path)


def figure_overview(run: RunData, path: Path, accuracy_tag: str | None = None) -> Path | None:
    """One run on one page: accuracy and loss, top eigenvalues against 2/η, the 2D slice, sharpness/barrier."""
    from ignite_landscape import plots

    tag = accuracy_tag_of(run, accuracy_tag)
    spectra = spectrum_panels([run])
    if tag is None and not spectra:
        return None
    fig = new_figure(1, 4, width=3.9, height=3.3, footer_lines=2)
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
    if spectra:
        p = spectra[0]
        for j, (label, s, _) in enumerate(p.eigenvalues):
            ax.plot(s.steps, s.values, marker=".", ms=3, color=color(j), alpha=1.0 if j == 0 else 0.5, label=label)
        if p.threshold is not None:
            ax.plot(p.threshold.steps, p.threshold.values, "k--", label=p.threshold_label)
        ax.legend(fontsize="x-small", ncol=2, loc="lower right")
    ax.set_xlabel("epoch")
    ax.set_title("top Hessian eigenvalues", fontsize=10)
    ax = fig.add_subplot(1, 4, 3)
    grids = run.curve_history("slice2d", "slice")
    if grids:
        step, curve = grids[0][1][-1]
        plots.draw_grid_contour(fig, ax, curve, levels=25)
        ax.set_aspect("equal", adjustable="box")
        ax.set_title(f"2D slice, step {step}", fontsize=10)
    else:
        ax.set_axis_off()
    ax = fig.add_subplot(1, 4, 4)
    for j, key in enumerate(("sharpness", "loss_barrier")):
        s = metric(key).first(run)
        if s is not None:
            ax.plot(s.steps, s.values, marker=".", color=color(j + 3), label=metric(key).label)
    ax.set_xlabel("epoch")
    ax.set_title("sharpness and barrier", fontsize=10)
    ax.legend(fontsize="x-small")
    fig.suptitle(f"{run.name}: the loss landscape during training")
    footer(fig, [probe_note(run) + "; " + sharpness_note(run), slice_note(run)])
    return save(fig, path)
