"""Landscape results for Ignite's other experiment loggers (MLflow here; TensorBoard has its own handler).

Every landscape scalar already sits in ``engine.state.metrics`` under ``landscape/<name>/<quantity>``,
so each of Ignite's loggers (MLflow, Weights & Biases, ClearML, Neptune, Visdom, Polyaxon, Aim) logs
them with its own ``OutputHandler``, attached on the same event as the landscape handlers::

    logger.attach_output_handler(trainer, event_name=Events.EPOCH_COMPLETED, tag="train", metric_names="all")

That repeats the latest values whenever the logger's event fires without a fresh result (a firing the
:class:`~ignite_landscape.Budget` skipped, a landscape handler on a sparser event). The
:class:`LandscapeArtifactHandler` below writes only fresh results, each at its own step, and sends a
figure of every curve a result has (drawn as in TensorBoard: the 1D slice with earlier slices under it,
2D contours and surface, ...), the curves themselves and each handler's record (kind and definitions) as
JSON, and a markdown summary, as artifacts of the run. Like the TensorBoard writers it reads only the
result protocol (:mod:`ignite_landscape.results`).

Example:
    >>> import tempfile, torch
    >>> from ignite.engine import Engine, Events
    >>> from ignite.handlers import MLflowLogger  # doctest: +SKIP
    >>> from ignite_landscape import LandscapeArtifactHandler, Probe, Sharpness
    >>> model = torch.nn.Linear(4, 3)
    >>> probe = Probe((torch.randn(16, 4), torch.randint(0, 3, (16,))), torch.nn.functional.cross_entropy)
    >>> trainer = Engine(lambda engine, batch: None)
    >>> _ = Sharpness(model, probe).attach(trainer)
    >>> mlflow_logger = MLflowLogger(tracking_uri="sqlite:///" + tempfile.mkdtemp() + "/mlflow.db")  # doctest: +SKIP
    >>> _ = mlflow_logger.attach(trainer, LandscapeArtifactHandler(), Events.EPOCH_COMPLETED)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from ignite.engine import Engine
from ignite.handlers.base_logger import BaseHandler

from ignite_landscape.handlers.base import Firing
from ignite_landscape.tensorboard.common import (
    CurveHistory,
    Fresh,
    check_writer_options,
    default_step,
    firing_label,
    fresh_at_step,
    latest_firings,
    summary_table,
)
from ignite_landscape.tensorboard.figures import curve_figure
from ignite_landscape.tensorboard.text import curve_data, firing_record

__all__ = ["LandscapeArtifactHandler", "SUPPORTED_LOGGERS"]

_log = logging.getLogger(__name__)

SUPPORTED_LOGGERS = ("MLflowLogger",)
"""Ignite loggers :class:`LandscapeArtifactHandler` can send figures and artifacts to."""


class _MLflowSink:
    """Writes through Ignite's ``MLflowLogger`` (which forwards attribute access to the ``mlflow`` module)."""

    def __init__(self, logger: Any) -> None:
        self.logger = logger

    def metrics(self, values: dict[str, float], step: int) -> None:
        self.logger.log_metrics(values, step=step)

    def figure(self, fig: Any, path: str) -> None:
        self.logger.log_figure(fig, path)

    def text(self, text: str, path: str) -> None:
        self.logger.log_text(text, path)

    def json(self, data: dict[str, Any], path: str) -> None:
        self.logger.log_dict(data, path)


def _sink_for(logger: Any) -> _MLflowSink:
    try:
        from ignite.handlers.mlflow_logger import MLflowLogger
    except ImportError:  # pragma: no cover - every supported Ignite version has it
        MLflowLogger = ()  # noqa: N806
    if MLflowLogger and isinstance(logger, MLflowLogger):
        return _MLflowSink(logger)
    raise TypeError(
        f"LandscapeArtifactHandler supports {', '.join(SUPPORTED_LOGGERS)}, got {type(logger).__name__}; "
        "for other loggers attach their OutputHandler with metric_names='all' (see the module docstring)"
    )


class LandscapeArtifactHandler(BaseHandler):
    """Ignite log handler: fresh landscape scalars, figures and curve data to an experiment logger.

    Attach it after the landscape handlers, on the same event:
    ``mlflow_logger.attach(trainer, log_handler=LandscapeArtifactHandler(), event_name=Events.EPOCH_COMPLETED)``.
    Each call writes every result computed since the previous call, at the trainer's iteration:

    * metrics ``landscape/<name>/<quantity>`` (a firing skipped by a budget writes only ``skipped``),
    * a figure per curve ``landscape/<name>/<curve_key>/step_<step>.png`` (a ``grid`` curve also as a 3D
      surface, ``<curve_key>_surface``),
    * the curves ``landscape/<name>/data/step_<step>.json`` (``{curve_key: Curve.to_plain()}``), the
      handler's record ``landscape/<name>/record/step_<step>.json`` (``{"kind", "definitions"}``, when it
      changes) and the summary ``landscape/summary/step_<step>.md``.

    Only rank 0 writes under ``ignite.distributed``.

    Args:
        names: only these handler names (default: all).
        global_step_transform: ``f(engine, event_name) -> int`` (default: the engine's iteration).
        figures: send figures.
        data: send the curves behind the figures and the records as JSON.
        text: send the markdown summary table.
        max_slice_curves: how many earlier 1D slices the slice figure keeps under the current one.
        log_scale: colour grids (contours, surfaces) by ``log10(loss)`` when every loss is positive.

    Raises:
        TypeError: if ``names`` are not strings or ``global_step_transform`` is not callable; at the first
            call, if the logger is not one of :data:`SUPPORTED_LOGGERS`.
        ValueError: if ``max_slice_curves < 1``.
    """

    def __init__(
        self,
        names: Sequence[str] | None = None,
        *,
        global_step_transform: Callable[[Engine, Any], int] | None = None,
        figures: bool = True,
        data: bool = True,
        text: bool = True,
        max_slice_curves: int = 8,
        log_scale: bool = True,
    ) -> None:
        names = check_writer_options(names, global_step_transform, max_slice_curves)
        self.names = names
        self.global_step_transform = global_step_transform or default_step
        self.figures = figures
        self.data = data
        self.text = text
        self.max_slice_curves = max_slice_curves
        self.log_scale = log_scale
        self._logged: dict[str, Firing] = {}
        self._history = CurveHistory(max_slice_curves)
        self._records: dict[str, dict[str, Any]] = {}

    def __call__(self, engine: Engine, logger: Any, event_name: Any) -> None:
        """Send the fresh firings' scalars, records, curves and figures to the logger (rank 0 only)."""
        sink = _sink_for(logger)
        who = type(self).__name__
        fresh, step = fresh_at_step(engine, event_name, self.names, self._logged, self.global_step_transform, who)
        if not fresh:
            return
        metrics = {f"landscape/{f.name}/{k}": float(v) for f in fresh for k, v in f.firing.scalars.items()}
        sink.metrics(metrics, step)
        for f in fresh:
            try:
                self._send(sink, f, step)
            except Exception as exc:  # noqa: BLE001 - a drawing problem must not stop training
                _log.warning("LandscapeArtifactHandler: could not send %r (%s: %s)", f.name, type(exc).__name__, exc)
        if self.text and any(not f.firing.skipped for f in fresh):
            sink.text(summary_table(latest_firings(engine, self.names)), f"landscape/summary/step_{step:09d}.md")

    def _send(self, sink: _MLflowSink, f: Fresh, step: int) -> None:
        record = firing_record(f.firing)
        if self.data and record is not None and self._records.get(f.name) != record:
            sink.json(record, f"landscape/{f.name}/record/step_{step:09d}.json")
            self._records[f.name] = record
        if self.data and f.curves:
            sink.json(curve_data(f.curves), f"landscape/{f.name}/data/step_{step:09d}.json")
        if not self.figures:
            return  # the curve history serves the figures only
        for key, curve in f.curves.items():
            from ignite_landscape import plots  # matplotlib is imported only when a figure is drawn

            shown = self._history.add(f.name, key, firing_label(f.firing), curve)
            figures = [(key, curve_figure(f.name, key, shown, log_scale=self.log_scale))]
            if curve.kind == "grid":
                title = f"{f.name}: {key} ({firing_label(f.firing)})"
                figures.append(
                    (f"{key}_surface", plots.grid_surface_figure(curve, title=title, log_scale=self.log_scale))
                )
            for path, fig in figures:
                sink.figure(fig, f"landscape/{f.name}/{path}/step_{step:09d}.png")
