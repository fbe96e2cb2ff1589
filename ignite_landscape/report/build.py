""":func:`write_report`: read the runs, write every figure that has data and ``summary.md``.

Example:
    >>> import tempfile
    >>> try:
    ...     write_report([tempfile.mkdtemp()], tempfile.mkdtemp())
    ... except ReportError as err:
    ...     print(str(err)[:26])
    no TensorBoard event files
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ignite_landscape.report import curvature, figures, generic, geometry
from ignite_landscape.report.events import ReportError, RunData, find_runs, load_run
from ignite_landscape.report.markdown import summary_markdown
from ignite_landscape.report.metrics import correlations, summary_rows
from ignite_landscape.report.statistics import Correlation

__all__ = ["Report", "write_report", "SKIP_REASONS"]


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


SKIP_REASONS = {
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

    Handlers are found by the kind of their results (the records :class:`~ignite_landscape.LandscapeLogHandler`
    writes), whatever they were named; with several handlers of one kind, every figure shows each of them
    and the summary row holds the first in name order.

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
        "training_curves": lambda: figures.figure_training_curves(runs, out / "training_curves.png"),
        "spectrum": lambda: figures.figure_spectrum(runs, out / "spectrum.png"),
        "metric_comparison": lambda: figures.figure_metric_comparison(runs, out / "metric_comparison.png"),
        "connectivity": lambda: geometry.figure_connectivity(runs, out / "connectivity.png"),
        "curvature": lambda: curvature.figure_curvature(runs, out / "curvature.png"),
        "slice1d": lambda: geometry.figure_slice1d(runs, out / "slice1d.png"),
        "contour": lambda: geometry.figure_contour(runs, out / "contour.png"),
        "surface": lambda: geometry.figure_surface(runs, out / "surface.png"),
        "trajectory": lambda: geometry.figure_trajectory(runs, out / "trajectory.png"),
        "correlation": lambda: figures.figure_correlation(runs, corrs, out / "correlation.png", accuracy_tag),
        "summary_table": lambda: figures.figure_summary_table(rows, out / "summary_table.png"),
        "overview": lambda: figures.figure_overview(runs[0], out / "overview.png", accuracy_tag),
    }
    written: dict[str, Path] = {}
    skipped: dict[str, str] = {}
    for name, build in builders.items():
        path = build()
        if path is None:
            skipped[name] = SKIP_REASONS.get(name, "nothing to plot")
        else:
            written[name] = path
    # Kinds without a figure of their own (a measure added in its own module): every curve, drawn by its kind.
    written.update(generic.figure_other_curves(runs, out))
    summary = out / "summary.md"
    text = summary_markdown(runs, rows, corrs, written, skipped, num_resamples, seed)
    summary.write_text(text, encoding="utf-8")
    return Report(runs, written, skipped, summary, corrs, rows)
