"""The ``report`` command: figures and a markdown summary from the TensorBoard event files of runs.

``python -m ignite_landscape report RUN_DIR [RUN_DIR ...] --out DIR`` reads every run (a folder that
holds ``events.out.tfevents.*`` files; a folder of such folders is expanded), and writes

- ``training_curves.png``: training loss, test loss and test accuracy per epoch;
- ``spectrum.png``: per spectrum handler, λ_1 … λ_k over training with its stability threshold (2/η, labelled
  from the handler's definition), and the final SLQ density; a band of ±2 standard errors around each
  eigenvalue whose run logged ``lambda_i_stderr`` (``uncertainty="jackknife"``), likewise around tr(H) and
  sharpness in ``metric_comparison.png``;
- ``metric_comparison.png``: every geometry quantity over training, one line per run and handler;
- ``connectivity.png``: loss along the linear path from the connectivity reference to the current weights;
- ``slice1d.png``, ``contour.png``, ``surface.png``: the 1D slices and the last 2D slice of each handler;
- ``trajectory.png``: the training path over the loss in its top-2 PCA plane, with the explained variance;
- ``curvature.png``: gradient overlap, batch sharpness and curvature along the gradient, GGN outliers;
- ``correlation.png``: geometry against test accuracy, with n, Pearson r, Kendall τ and bootstrap CIs;
- ``summary_table.png`` and ``summary.md``: the final numbers of every run, every handler's quantities with
  their definitions, and the correlation table.

Handlers are found by the **kind** of their results, from the records ``landscape/<name>/record`` that
:class:`~ignite_landscape.LandscapeLogHandler` writes, so a handler named ``"curv"`` reports like one named
``"hessian"``; the curves come from ``landscape/<name>/data`` and the definitions in footers and
``summary.md`` from the records. With several handlers of one kind, figures show each of them and a summary
row holds the first in name order. Runs written before the records existed are read too (by the default
handler names and their older raw-data format).

Correlations are stated honestly: every coefficient comes with its n, both Pearson's r and Kendall's
τ-b, and a seeded bootstrap percentile interval; below 3 points (e.g. a correlation *across* two runs,
which always gives r = ±1) the command says the correlation cannot be estimated. Pooled correlations
use every logged (epoch, run) pair and say so: pairs from one run are consecutive points of one
trajectory, not independent samples, so the interval is optimistic. No condition number is reported
for an indefinite Hessian: |λ_min|/λ_max and the negative spectral mass instead.

The package, by concept: :mod:`~ignite_landscape.report.events` (loading runs, handlers by kind),
:mod:`~ignite_landscape.report.statistics`, :mod:`~ignite_landscape.report.metrics` (the summary
quantities), :mod:`~ignite_landscape.report.figures`, :mod:`~ignite_landscape.report.geometry` and
:mod:`~ignite_landscape.report.curvature` (figures, drawn by :mod:`ignite_landscape.plots`),
:mod:`~ignite_landscape.report.markdown`, :mod:`~ignite_landscape.report.build` (:func:`write_report`)
and :mod:`~ignite_landscape.report.cli`.

Example:
    >>> import tempfile
    >>> main(["report", tempfile.mkdtemp(), "--out", tempfile.mkdtemp()])  # a folder without event files
    2
"""

from __future__ import annotations

from ignite_landscape.report.build import Report, write_report
from ignite_landscape.report.cli import main
from ignite_landscape.report.curvature import figure_curvature
from ignite_landscape.report.events import ReportError, RunData, Series, find_runs, load_run, paired
from ignite_landscape.report.figures import (
    figure_correlation,
    figure_metric_comparison,
    figure_overview,
    figure_spectrum,
    figure_summary_table,
    figure_training_curves,
    spectrum_panels,
)
from ignite_landscape.report.geometry import (
    figure_connectivity,
    figure_contour,
    figure_slice1d,
    figure_surface,
    figure_trajectory,
)
from ignite_landscape.report.metrics import METRICS, SUMMARY_COLUMNS, correlations, stderr_rows, summary_rows
from ignite_landscape.report.statistics import Correlation, bootstrap_ci, correlate, kendall_tau, pearson

__all__ = [
    "ReportError",
    "Series",
    "RunData",
    "Correlation",
    "Report",
    "METRICS",
    "SUMMARY_COLUMNS",
    "find_runs",
    "load_run",
    "pearson",
    "kendall_tau",
    "bootstrap_ci",
    "correlate",
    "correlations",
    "paired",
    "summary_rows",
    "stderr_rows",
    "spectrum_panels",
    "figure_training_curves",
    "figure_spectrum",
    "figure_metric_comparison",
    "figure_connectivity",
    "figure_curvature",
    "figure_slice1d",
    "figure_contour",
    "figure_surface",
    "figure_trajectory",
    "figure_correlation",
    "figure_summary_table",
    "figure_overview",
    "write_report",
    "main",
]
