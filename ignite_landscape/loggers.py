"""Landscape results for Ignite's other experiment loggers (MLflow here; TensorBoard has its own handler).

Every landscape scalar already sits in ``engine.state.metrics`` under ``landscape/<name>/<quantity>``,
so each of Ignite's loggers (MLflow, Weights & Biases, ClearML, Neptune, Visdom, Polyaxon, Aim) logs
them with its own ``OutputHandler``, attached on the same event as the landscape handlers::

    logger.attach_output_handler(trainer, event_name=Events.EPOCH_COMPLETED, tag="train", metric_names="all")

That repeats the latest values whenever the logger's event fires without a fresh result (a firing the
:class:`~ignite_landscape.Budget` skipped, a landscape handler on a sparser event). The
:class:`LandscapeArtifactHandler` below writes only fresh results, each at its own step, and sends the
figures too (the 1D slice with earlier slices under it, the 2D contours and surface, the SLQ density,
the interpolation path), plus the raw curves as JSON and a markdown summary, as artifacts of the run.

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

import ignite.distributed as idist
from ignite.engine import Engine
from ignite.handlers.base_logger import BaseHandler

from ignite_landscape.handlers.base import Firing
from ignite_landscape.measures.connectivity import Interpolation
from ignite_landscape.measures.slices import LossSliceResult
from ignite_landscape.measures.spectrum import HessianDensityResult
from ignite_landscape.tensorboard import (
    _curve_data,
    _default_step,
    check_writer_options,
    firing_step,
    fresh_firings,
    summary_table,
)

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
    * figures ``landscape/<name>/<kind>/step_<step>.png`` (``slice``, ``contour``, ``surface``,
      ``density``, ``interpolation``),
    * the raw curves ``landscape/<name>/data/step_<step>.json`` and the summary
      ``landscape/summary/step_<step>.md``.

    Only rank 0 writes under ``ignite.distributed``.

    Args:
        names: only these handler names (default: all).
        global_step_transform: ``f(engine, event_name) -> int`` (default: the engine's iteration).
        figures: send figures.
        data: send the curves behind the figures as JSON.
        text: send the markdown summary table.
        max_slice_curves: how many earlier 1D slices the slice figure keeps under the current one.
        log_scale: draw 2D slices in ``log(loss)``.

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
        self.global_step_transform = global_step_transform or _default_step
        self.figures = figures
        self.data = data
        self.text = text
        self.max_slice_curves = max_slice_curves
        self.log_scale = log_scale
        self._logged: dict[str, Firing] = {}
        self._slices: dict[str, list[tuple[str, Any]]] = {}

    def __call__(self, engine: Engine, logger: Any, event_name: Any) -> None:
        sink = _sink_for(logger)
        if idist.get_rank() != 0:
            return
        firings: dict[str, Firing] = getattr(engine.state, "landscape_firings", None) or {}
        fresh = fresh_firings(engine, self.names, self._logged)
        if not fresh:
            return
        step = firing_step(self.global_step_transform, engine, event_name)
        results = getattr(engine.state, "landscape", {}) or {}
        metrics: dict[str, float] = {}
        for name, f in fresh:
            self._logged[name] = f
            metrics.update({f"landscape/{name}/{k}": float(v) for k, v in f.scalars.items()})
        sink.metrics(metrics, step)
        for name, f in fresh:
            result = results.get(name, f.result) if f.result is not None else None
            if result is None:
                continue
            try:
                self._send_result(sink, name, f, result, step)
            except Exception as exc:  # a drawing problem must not stop training
                _log.warning("LandscapeArtifactHandler: could not send %r (%s: %s)", name, type(exc).__name__, exc)
        if self.text and any(not f.skipped for _, f in fresh):
            sink.text(summary_table(firings), f"landscape/summary/step_{step:09d}.md")

    def _send_result(self, sink: _MLflowSink, name: str, firing: Firing, result: Any, step: int) -> None:
        from ignite_landscape import plots  # matplotlib is imported only when a figure is drawn

        figures: list[tuple[str, Any]] = []
        if isinstance(result, LossSliceResult) and result.dims == 1:
            history = self._slices.setdefault(name, [])
            history.append((f"epoch {firing.epoch}", result))
            del history[: -self.max_slice_curves]
            if self.figures:
                labels, items = zip(*history)
                figures.append(
                    ("slice", plots.slice_1d_figure(list(items), list(labels), title=f"{name}: 1D loss slice"))
                )
        elif isinstance(result, LossSliceResult) and result.dims == 2 and self.figures:
            title = f"{name}: epoch {firing.epoch}"
            figures.append(("contour", plots.slice_2d_contour_figure(result, title=title, log_scale=self.log_scale)))
            figures.append(("surface", plots.slice_2d_surface_figure(result, title=title, log_scale=self.log_scale)))
        elif isinstance(result, HessianDensityResult) and self.figures:
            figures.append(("density", plots.density_figure(result)))
        elif isinstance(result, Interpolation) and self.figures:
            figures.append(("interpolation", plots.interpolation_figure(result)))
        import matplotlib.pyplot as plt

        for kind, fig in figures:
            try:
                sink.figure(fig, f"landscape/{name}/{kind}/step_{step:09d}.png")
            finally:
                plt.close(fig)
        curve = _curve_data(result)
        if curve is not None and self.data:
            sink.json(curve, f"landscape/{name}/data/step_{step:09d}.json")
