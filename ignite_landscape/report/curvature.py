"""The report's curvature-instruments figure: gradient overlap, batch sharpness and directional curvature, GGN.

Handlers are found by kind (``"overlap"``, ``"batch_sharpness"``, ``"directional"``, ``"ggn"``, ``"spectrum"``),
one line per handler of each run.

Example:
    >>> import tempfile, numpy as np
    >>> from ignite_landscape.report.events import RunData, Series
    >>> overlap = {"landscape/overlap/value": Series(np.array([1, 2]), np.array([0.9, 0.7]))}
    >>> out = Path(tempfile.mkdtemp())
    >>> figure_curvature([RunData("r", out, scalars=overlap)], out / "curvature.png").exists()
    True
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ignite_landscape.report.events import RunData, Series
from ignite_landscape.report.layout import color, footer, panel_axes, panel_title, save
from ignite_landscape.report.metrics import probe_note

__all__ = ["figure_curvature"]


def _by_kind(run: RunData, kind: str, key: str) -> list[tuple[str, Series]]:
    return [(n, s) for n in run.handlers(kind) if (s := run.series(f"landscape/{n}/{key}")) is not None]


def figure_curvature(runs: Sequence[RunData], path: Path) -> Path | None:
    """The curvature instruments over training.

    Gradient overlap with the top-k eigenspace (Gur-Ari et al. 2018), batch sharpness and curvature along
    the gradient against 2/η (Andreyev & Beneventano 2024), and the top GGN eigenvalues of the last firing
    with the number of outliers (Papyan 2019).
    """
    panels: list[str] = []
    if any(_by_kind(r, "overlap", "value") for r in runs):
        panels.append("overlap")
    if any(_by_kind(r, "batch_sharpness", "value") or _by_kind(r, "directional", "value") for r in runs):
        panels.append("sharpness")
    if any(_by_kind(r, "ggn", "ggn_lambda_1") for r in runs):
        panels.append("ggn")
    if not panels:
        return None
    fig, axes = panel_axes(len(panels), footer_lines=3)
    for panel, ax in zip(panels, axes):
        for i, run in enumerate(runs):
            if panel == "overlap":
                for name, s in _by_kind(run, "overlap", "value"):
                    ax.plot(s.steps, s.values, marker=".", color=color(i), label=panel_title(run.name, name))
                ax.set_ylim(-0.02, 1.02)
                ax.set_ylabel("‖P_k g‖² / ‖g‖²")
                ax.set_title("gradient in the top-k eigenspace", fontsize=10)
            elif panel == "sharpness":
                _draw_sharpness(ax, run, color(i))
            else:
                _draw_ggn(ax, run, color(i))
            if panel != "ggn":
                ax.set_xlabel("step")
        ax.legend(fontsize="x-small")
    fig.suptitle("Curvature instruments")
    footer(
        fig,
        [
            probe_note(runs[0]),
            "overlap: share of the probe gradient's squared norm in the span of the top-k Hessian eigenvectors; "
            "batch sharpness: mean over seeded probe mini-batches of g_Bᵀ H_B g_B / ‖g_B‖²",
            "GGN outliers: the deepest j with λ_j ≥ 2·λ_(j+1) among the computed top eigenvalues (dashed line)",
        ],
    )
    return save(fig, path)


def _draw_sharpness(ax: Any, run: RunData, colour: str) -> None:
    lines = [
        (_by_kind(run, "batch_sharpness", "value"), "-", "batch sharpness"),
        (_by_kind(run, "directional", "value"), "--", "gᵀHg/‖g‖² (full probe)"),
        (_by_kind(run, "spectrum", "lambda_max")[:1], ":", "λ_max"),
    ]
    for found, style, label in lines:
        for name, s in found:
            ax.plot(s.steps, s.values, style, marker=".", color=colour, label=f"{panel_title(run.name, name)}: {label}")
    thresholds = _by_kind(run, "batch_sharpness", "threshold") or _by_kind(run, "directional", "threshold")
    if thresholds:
        t = thresholds[0][1]
        ax.plot(t.steps, t.values, color="k", lw=0.8, label="2/η")
    ax.set_yscale("log")
    ax.set_title("curvature met by SGD", fontsize=10)


def _draw_ggn(ax: Any, run: RunData, colour: str) -> None:
    for name in run.handlers("ggn"):
        pattern = re.compile(rf"landscape/{re.escape(name)}/ggn_lambda_\d+")
        tags = sorted(
            (t for t in run.landscape_tags(name) if pattern.fullmatch(t)), key=lambda t: int(t.rsplit("_", 1)[1])
        )
        if not tags:
            continue
        values = np.array([run.scalars[t].last() for t in tags])
        ax.semilogy(range(1, len(values) + 1), np.clip(values, 1e-12, None), "o", color=colour, ms=4)
        n_out = run.series(f"landscape/{name}/num_outliers")
        n_cls = run.series(f"landscape/{name}/num_classes")
        if n_out is not None:
            ax.axvline(n_out.last() + 0.5, color=colour, lw=0.8, ls="--")
            label = f"{panel_title(run.name, name)}: {n_out.last():.0f} outliers"
            if n_cls is not None:
                label += f", {n_cls.last():.0f} classes"
            ax.plot([], [], "o", color=colour, label=label)
    ax.set_xlabel("index")
    ax.set_ylabel("GGN eigenvalue")
    ax.set_title("top GGN eigenvalues, last firing", fontsize=10)
