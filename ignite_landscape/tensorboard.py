"""Stream landscape results to TensorBoard through Ignite's ``TensorboardLogger``.

:class:`LandscapeLogHandler` is a log handler in Ignite's sense: attach it to the trainer with
``tb_logger.attach(trainer, log_handler=LandscapeLogHandler(), event_name=...)`` *after* the landscape
handlers (Ignite calls handlers of one event in the order they were attached). At each call it
writes every result computed since its previous call, at the trainer's iteration (whatever event
fired it; ``global_step_transform=`` chooses another step):

* scalars ``landscape/<name>/<quantity>`` (the values in ``engine.state.metrics``),
* histograms of the Hessian eigenvalues, of the SLQ spectral density and of any distribution a result
  exposes through a ``histograms()`` method (the per-sample gradient norms of the gradient statistics),
* figures: the 1D slice (current over earlier ones, shared axes), the 2D slice as filled contours,
  the SLQ density, the interpolation path and the training path over its PCA plane,
* the 2D slice as a 3D mesh (``add_mesh``): vertex colours by loss, a camera that frames the whole
  surface, at most ``max_mesh_faces`` triangles,
* a custom-scalars layout (λ_1 … λ_k with the stability threshold on one chart, sharpness variants
  on another, …), once per writer, and a *margin* chart (the curve in its band) for every quantity ``q``
  whose result logs ``q_lo`` and ``q_hi`` next to it (the error bars of ``uncertainty="jackknife"``); the
  layout is written again when a later firing brings a new band,
* a text summary table of the latest values.

Event-file contract (what :func:`ignite_landscape.report` reads; every tag is written at the step of the
firing, the trainer's iteration unless ``global_step_transform`` says otherwise):

* scalar ``landscape/<name>/<key>`` for every key of ``firing.scalars`` (``engine.state.metrics`` without the
  prefix) and scalar ``landscape/epoch``: the trainer's epoch at each step written;
* text ``landscape/<name>/record``: JSON ``{"kind": firing.kind, "definitions": {key: sentence, ...}}``
  (:func:`~ignite_landscape.results.record_of`), at a handler's first logged firing that has a kind and again
  whenever it changes; a reader finds a handler's results by this kind (:data:`~ignite_landscape.results.KINDS`),
  whatever the handler is named;
* text ``landscape/<name>/data``: JSON ``{curve_key: Curve.to_plain(), ...}`` of ``result.curves()`` at each
  firing whose result has curves (read back with :meth:`~ignite_landscape.results.Curve.from_plain`);
* ``landscape/<name>/<curve_key>``: an image per ``line`` (overlay lines: the last ``max_slice_curves``
  firings under the current one), ``grid`` (filled contours), ``path`` (the path over its plane's contours) and
  ``bars`` curve (a labels × firings heatmap of every firing so far), a histogram per ``histogram`` curve
  (weighted ones through ``add_histogram_raw``); a ``grid`` curve's 3D mesh at ``landscape/<name>/<curve_key>_surface``;
* text ``landscape/summary``: a markdown table of every handler's latest scalars;
* the custom-scalars layout (``custom_scalars__config__``), charts keyed by ``firing.kind``.

Text is stored as written (raw JSON, no markdown fence); tensorboardX stores a text tag ``T`` as
``T/text_summary``, torch's ``SummaryWriter`` as ``T``. (This contract holds from the ``tensorboard/``
package on; the module below still writes the older ad-hoc ``data`` dicts.)

It works with either writer Ignite picks (tensorboardX if installed, else ``torch.utils.tensorboard``)
and writes only on rank 0 under ``ignite.distributed``.

Example:
    >>> import tempfile, torch
    >>> from ignite.engine import Engine, Events
    >>> from ignite.handlers import TensorboardLogger
    >>> from ignite_landscape import HessianSpectrum, Probe
    >>> model = torch.nn.Linear(4, 3)
    >>> probe = Probe((torch.randn(16, 4), torch.randint(0, 3, (16,))), torch.nn.functional.cross_entropy)
    >>> trainer = Engine(lambda engine, batch: None)
    >>> _ = HessianSpectrum(model, probe, k=2).attach(trainer)
    >>> tb_logger = TensorboardLogger(log_dir=tempfile.mkdtemp())
    >>> _ = tb_logger.attach(trainer, log_handler=LandscapeLogHandler(), event_name=Events.EPOCH_COMPLETED)
    >>> _ = trainer.run([0], max_epochs=2)
    >>> tb_logger.close()
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine
from ignite.handlers.base_logger import BaseHandler
from ignite.handlers.tensorboard_logger import TensorboardLogger

from ignite_landscape.handlers.base import Firing
from ignite_landscape.measures.connectivity import Interpolation
from ignite_landscape.measures.jackknife import INTERVAL_Z
from ignite_landscape.measures.layerwise import LAYER_QUANTITIES, LayerwiseCurvatureResult
from ignite_landscape.measures.sharpness import SharpnessResult
from ignite_landscape.measures.slices import LossSliceResult
from ignite_landscape.measures.spectrum import HessianDensityResult, HessianEigenvalues, HessianTraceResult
from ignite_landscape.measures.trajectory import TrajectoryPlaneResult

__all__ = ["LandscapeLogHandler", "slice_mesh", "custom_scalars_layout", "margin_tags", "summary_table"]

EPOCH_TAG = "landscape/epoch"

# Not named `logger`: __call__ receives Ignite's TensorboardLogger under that name.
_log = logging.getLogger(__name__)

# The mesh viewer stores face indices as 16-bit integers, so a mesh must have fewer than 65536 vertices.
MAX_MESH_VERTICES = 65535


def slice_mesh(
    result: LossSliceResult, *, max_faces: int = 20000, log_scale: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
    """A 2D loss slice as a triangle mesh for ``SummaryWriter.add_mesh``.

    The plane is drawn on ``[-1, 1]²`` (x: direction 1, z: direction 2) and the loss as height ``y``
    in ``[0, 1]`` (``log(loss)`` when every loss is positive and ``log_scale``), so the bounding box is
    2 × 1 × 2 whatever the numbers; the colours (viridis) carry the loss. The grid is subsampled when
    it would need more than ``max_faces`` triangles.

    Returns:
        ``(vertices (1, N, 3) float32, colors (1, N, 3) uint8, faces (1, F, 3) int32, config_dict)``.

    Raises:
        ValueError: if ``result`` is not a 2D slice or ``max_faces < 2``.

    Example:
        >>> from types import SimpleNamespace
        >>> c = torch.linspace(-1, 1, 5)
        >>> res = SimpleNamespace(dims=2, coords=[c, c], loss=1 + c[:, None] ** 2 + c[None, :] ** 2)
        >>> v, col, f, cfg = slice_mesh(res)
        >>> v.shape, f.shape, cfg["camera"]["cls"]
        (torch.Size([1, 25, 3]), torch.Size([1, 32, 3]), 'PerspectiveCamera')
    """
    from ignite_landscape import plots

    if getattr(result, "dims", None) != 2:
        raise ValueError("slice_mesh needs a 2D slice result")
    if max_faces < 2:
        raise ValueError(f"max_faces must be at least 2, got {max_faces}")
    z = plots.finite_grid(result.loss)
    x, y = plots._np(result.coords[0]), plots._np(result.coords[1])
    nx, ny = z.shape
    # Largest grid within the face budget: (sx - 1)(sy - 1) cells, two triangles each.
    cells = max(1, int(math.floor(math.sqrt(max_faces / 2))))
    cells = min(cells, int(math.sqrt(MAX_MESH_VERTICES)) - 1)
    ix = np.unique(np.linspace(0, nx - 1, min(nx, cells + 1)).round().astype(int))
    iy = np.unique(np.linspace(0, ny - 1, min(ny, cells + 1)).round().astype(int))
    z, x, y = z[np.ix_(ix, iy)], x[ix], y[iy]
    sx, sy = len(ix), len(iy)
    h = np.log(z) if log_scale and bool((z > 0).all()) else z
    lo, hi = float(h.min()), float(h.max())
    height = (h - lo) / (hi - lo) if hi > lo else np.zeros_like(h)

    def unit(c: np.ndarray) -> np.ndarray:
        return 2 * (c - c[0]) / (c[-1] - c[0]) - 1 if c[-1] > c[0] else np.zeros_like(c)

    X, Y = np.meshgrid(unit(x), unit(y), indexing="ij")
    # three.js is y-up: the plane is x-z and the loss is the height.
    vertices = np.stack([X.ravel(), height.ravel(), Y.ravel()], axis=1).astype(np.float32)
    import matplotlib

    colors = (matplotlib.colormaps["viridis"](height.ravel())[:, :3] * 255).round().astype(np.uint8)
    idx = np.arange(sx * sy).reshape(sx, sy)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[1:, :-1].ravel(), idx[:-1, 1:].ravel(), idx[1:, 1:].ravel()
    faces = np.concatenate([np.stack([a, c, b], 1), np.stack([b, c, d], 1)]).astype(np.int32)
    config = {
        # The viewer centres the geometry at the origin; look at it from above one corner, far enough
        # that the whole 2 × 1 × 2 box is in view (the default camera is a top-down close-up).
        "camera": {
            "cls": "PerspectiveCamera",
            "fov": 50,
            "near": 0.01,
            "far": 100,
            "position": [2.4, 1.9, 2.4],
            "lookAt": [0.0, -0.15, 0.0],
        },
        "lights": [
            {"cls": "AmbientLight", "color": "#ffffff", "intensity": 0.7},
            {"cls": "DirectionalLight", "color": "#ffffff", "intensity": 0.6, "position": [2, 4, 3]},
        ],
        # side=2 is THREE.DoubleSide: the surface stays visible from below.
        "material": {"cls": "MeshStandardMaterial", "color": "#ffffff", "roughness": 1, "metalness": 0, "side": 2},
    }
    return (
        torch.from_numpy(vertices)[None],
        torch.from_numpy(colors)[None],
        torch.from_numpy(faces)[None],
        config,
    )


def margin_tags(name: str, scalars: Mapping[str, float]) -> list[tuple[str, str, str]]:
    """``(value, lower, upper)`` tags of every quantity ``q`` whose scalars hold ``q``, ``q_lo`` and ``q_hi``.

    Example:
        >>> margin_tags("trace", {"value": 3.0, "stderr": 0.5, "value_lo": 2.0, "value_hi": 4.0})
        [('landscape/trace/value', 'landscape/trace/value_lo', 'landscape/trace/value_hi')]
    """
    out = []
    for key in scalars:
        if key.endswith("_lo") and key[:-3] in scalars and key[:-3] + "_hi" in scalars:
            q = f"landscape/{name}/{key[:-3]}"
            out.append((q, q + "_lo", q + "_hi"))
    return out


def custom_scalars_layout(
    sharpness_names: Sequence[str] = (),
    trace_names: Sequence[str] = (),
    margins: Sequence[tuple[str, str, str]] = (),
) -> dict[str, Any]:
    """The custom-scalars layout: one chart per family of landscape scalars (tags are regexes), and a margin
    chart per band.

    Args:
        sharpness_names: names of sharpness handlers beyond the default ``sharpness*`` pattern.
        trace_names: names of trace handlers beyond ``trace*``.
        margins: ``(value, lower, upper)`` scalar tags (exact tags, not regexes: TensorBoard's margin charts
            take no pattern), each drawn as the value in its band under the ``landscape error bars`` category.
    """

    def alternatives(default: str, names: Sequence[str]) -> str:
        return "(" + "|".join([default] + [_re_escape(n) for n in names]) + ")"

    layout: dict[str, Any] = {
        "landscape": {
            "Hessian eigenvalues and stability threshold": [
                "Multiline",
                [r"landscape/[^/]+/lambda_\d+$", r"landscape/[^/]+/stability_threshold$"],
            ],
            "Preconditioned sharpness (Adam) and its threshold": [
                "Multiline",
                [r"landscape/[^/]+/preconditioned_lambda_max$", r"landscape/[^/]+/preconditioned_threshold$"],
            ],
            "Sharpness variants": ["Multiline", [rf"landscape/{alternatives('sharp[^/]*', sharpness_names)}/value$"]],
            "Hessian trace": [
                "Multiline",
                [rf"landscape/{alternatives('trace[^/]*', trace_names)}/value$", r"landscape/density[^/]*/trace$"],
            ],
            "Mode connectivity barriers": [
                "Multiline",
                [r"landscape/[^/]+/loss_barrier$", r"landscape/[^/]+/error_barrier$"],
            ],
            "Gradient noise scale": ["Multiline", [r"landscape/[^/]+/b_simple$"]],
            "Slice centre loss": ["Multiline", [r"landscape/[^/]+/center_loss$"]],
            "Seconds per firing": ["Multiline", [r"landscape/[^/]+/seconds$"]],
        }
    }
    if margins:
        layout["landscape error bars"] = {
            f"{value.removeprefix('landscape/')} ± {INTERVAL_Z:g} stderr": ["Margin", [value, lo, hi]]
            for value, lo, hi in margins
        }
    return layout


def _re_escape(name: str) -> str:
    import re

    return re.escape(name)


def summary_table(firings: dict[str, Firing]) -> str:
    """A markdown table of the latest scalars of every handler (TensorBoard renders it in the Text tab)."""
    lines = ["| handler | epoch | iteration | quantity | value |", "|---|---:|---:|---|---:|"]
    for name in sorted(firings):
        f = firings[name]
        status = f" (failed: {f.error})" if f.failed else ""
        for key in sorted(f.scalars):
            lines.append(f"| {name}{status} | {f.epoch} | {f.iteration} | {key} | {f.scalars[key]:.6g} |")
    return "\n".join(lines)


def _default_step(engine: Engine, event_name: Any) -> int:
    # The iteration, whatever the event: an epoch or COMPLETED event's own counter (the epoch) would put
    # a firing of `ITERATION_COMPLETED(every=k) | COMPLETED` far behind the iteration firings before it.
    return int(engine.state.iteration)


def check_writer_options(names: Any, global_step_transform: Any, max_slice_curves: Any) -> list[str] | None:
    """Validate the options every landscape log handler shares; returns ``names`` as a list (or ``None``)."""
    if names is not None:
        if isinstance(names, str) or not all(isinstance(n, str) for n in names):
            raise TypeError("names must be a sequence of handler names (strings)")
        names = list(names)
    if global_step_transform is not None and not callable(global_step_transform):
        raise TypeError(f"global_step_transform must be callable, got {type(global_step_transform).__name__}")
    if isinstance(max_slice_curves, bool) or not isinstance(max_slice_curves, int) or max_slice_curves < 1:
        raise ValueError(f"max_slice_curves must be a positive int, got {max_slice_curves!r}")
    return names


def fresh_firings(engine: Engine, names: list[str] | None, logged: dict[str, Firing]) -> list[tuple[str, Firing]]:
    """The ``(name, firing)`` pairs of ``engine`` not yet in ``logged`` (restricted to ``names``)."""
    firings: dict[str, Firing] = getattr(engine.state, "landscape_firings", None) or {}
    return [(n, f) for n, f in firings.items() if (names is None or n in names) and logged.get(n) is not f]


def firing_step(transform: Callable[[Engine, Any], int], engine: Engine, event_name: Any) -> int:
    """The step to log at, checked to be an int."""
    step = transform(engine, event_name)
    if not isinstance(step, int):
        raise TypeError(f"global_step must be an int, got {type(step).__name__}: check global_step_transform")
    return step


class LandscapeLogHandler(BaseHandler):
    """Ignite log handler that writes landscape results to a ``TensorboardLogger``.

    Args:
        names: only these handler names (default: all).
        global_step_transform: ``f(engine, event_name) -> int`` giving the step. Default: the engine's
            iteration (the trainer's), for every event, so one handler fired by any mix of iteration,
            epoch and ``COMPLETED`` events is logged at strictly increasing steps. To put landscape
            scalars on an epoch axis next to per-epoch evaluation metrics, pass
            ``global_step_from_engine(trainer, Events.EPOCH_COMPLETED)`` (with epoch events only).
        histograms: write eigenvalue and SLQ density histograms.
        figures: write matplotlib figures (1D slice, 2D contours, density, interpolation).
        mesh: write the 2D slice as a 3D mesh.
        text: write the summary table.
        custom_scalars: write the custom-scalars layout (once per writer).
        max_mesh_faces: triangle budget of the mesh.
        max_slice_curves: how many earlier 1D slices the figure keeps under the current one.
        log_scale: draw 2D slices (contours, mesh height) in ``log(loss)``.

    Raises:
        TypeError: on a non-callable ``global_step_transform`` or ``names`` that are not strings.
        ValueError: on ``max_mesh_faces < 2`` or ``max_slice_curves < 1``.
    """

    def __init__(
        self,
        names: Sequence[str] | None = None,
        *,
        global_step_transform: Callable[[Engine, Any], int] | None = None,
        histograms: bool = True,
        figures: bool = True,
        mesh: bool = True,
        text: bool = True,
        custom_scalars: bool = True,
        max_mesh_faces: int = 20000,
        max_slice_curves: int = 8,
        log_scale: bool = True,
    ) -> None:
        names = check_writer_options(names, global_step_transform, max_slice_curves)
        if isinstance(max_mesh_faces, bool) or not isinstance(max_mesh_faces, int) or max_mesh_faces < 2:
            raise ValueError(f"max_mesh_faces must be an int of at least 2, got {max_mesh_faces!r}")
        self.names = names
        self.global_step_transform = global_step_transform or _default_step
        self.histograms = histograms
        self.figures = figures
        self.mesh = mesh
        self.text = text
        self.custom_scalars = custom_scalars
        self.max_mesh_faces = max_mesh_faces
        self.max_slice_curves = max_slice_curves
        self.log_scale = log_scale
        self._logged: dict[str, Firing] = {}
        self._slices: dict[str, list[tuple[str, Any]]] = {}
        self._layers: dict[str, list[tuple[str, LayerwiseCurvatureResult]]] = {}
        self._layout_writers: set[int] = set()
        self._margins: dict[int, list[tuple[str, str, str]]] = {}
        self._warned_order = False

    def __call__(self, engine: Engine, logger: TensorboardLogger, event_name: Any) -> None:
        if not isinstance(logger, TensorboardLogger):
            raise RuntimeError("LandscapeLogHandler works only with ignite's TensorboardLogger")
        if idist.get_rank() != 0:
            return
        firings: dict[str, Firing] = getattr(engine.state, "landscape_firings", None) or {}
        fresh = fresh_firings(engine, self.names, self._logged)
        if not fresh:
            return
        step = firing_step(self.global_step_transform, engine, event_name)
        writer = logger.writer
        if self.custom_scalars:
            # Margin charts name exact tags, so the layout learns each band from the firings that log one and
            # is written again (TensorBoard shows the last layout) when a later firing brings a new one.
            margins = self._margins.setdefault(id(writer), [])
            new = [t for name, f in fresh for t in margin_tags(name, f.scalars) if t not in margins]
            margins.extend(new)
            if id(writer) not in self._layout_writers or new:
                results = getattr(engine.state, "landscape", {}) or {}
                sharp = [n for n, r in results.items() if isinstance(r, SharpnessResult)]
                trace = [n for n, r in results.items() if isinstance(r, HessianTraceResult)]
                writer.add_custom_scalars(custom_scalars_layout(sharp, trace, margins))
                self._layout_writers.add(id(writer))
        if not self._warned_order and any(f.iteration != engine.state.iteration for _, f in fresh):
            _log.warning(
                "LandscapeLogHandler: logging results computed at an earlier iteration; attach it after the "
                "landscape handlers (same event) so each result is written at its own step"
            )
            self._warned_order = True
        results = getattr(engine.state, "landscape", {}) or {}
        # The trainer's epoch at this step: the report pairs results logged at iterations with metrics an
        # evaluator logged at epochs through it.
        writer.add_scalar(EPOCH_TAG, float(engine.state.epoch), step)
        for name, f in fresh:
            self._logged[name] = f
            for key, value in f.scalars.items():
                writer.add_scalar(f"landscape/{name}/{key}", float(value), step)
            result = results.get(name, f.result) if f.result is not None else None
            if result is not None:
                try:
                    self._write_result(writer, name, f, result, step)
                except Exception as exc:  # a drawing problem must not stop training
                    _log.warning("LandscapeLogHandler: could not write %r (%s: %s)", name, type(exc).__name__, exc)
        if self.text and any(not f.skipped for _, f in fresh):  # a skipped firing logs its count only
            writer.add_text("landscape/summary", summary_table(firings), step)

    # -- per result type ------------------------------------------------------------------------
    def _write_result(self, writer: Any, name: str, firing: Firing, result: Any, step: int) -> None:
        from ignite_landscape import plots  # matplotlib is imported only when a figure is drawn

        tag = f"landscape/{name}"
        if isinstance(result, HessianEigenvalues):
            values = result.eigenvalues.detach().cpu().double().numpy()
            values = values[np.isfinite(values)]
            if self.histograms and values.size:
                writer.add_histogram(f"{tag}/eigenvalues", values, step)
        elif isinstance(result, HessianDensityResult):
            if self.histograms:
                self._density_histogram(writer, f"{tag}/spectrum", result, step)
            if self.figures:
                writer.add_figure(f"{tag}/density", plots.density_figure(result), step, close=True)
        elif isinstance(result, LossSliceResult) and result.dims == 1:
            history = self._slices.setdefault(name, [])
            history.append((f"epoch {firing.epoch}", result))
            del history[: -self.max_slice_curves]
            if self.figures:
                labels, items = zip(*history)
                fig = plots.slice_1d_figure(list(items), list(labels), title=f"{name}: 1D loss slice")
                writer.add_figure(f"{tag}/slice", fig, step, close=True)
        elif isinstance(result, LossSliceResult) and result.dims == 2:
            if self.figures:
                fig = plots.slice_2d_contour_figure(
                    result, title=f"{name}: epoch {firing.epoch}", log_scale=self.log_scale
                )
                writer.add_figure(f"{tag}/contour", fig, step, close=True)
            if self.mesh:
                vertices, colors, faces, config = slice_mesh(
                    result, max_faces=self.max_mesh_faces, log_scale=self.log_scale
                )
                writer.add_mesh(
                    f"{tag}/surface",
                    vertices=vertices,
                    colors=colors,
                    faces=faces,
                    config_dict=config,
                    global_step=step,
                )
        elif isinstance(result, TrajectoryPlaneResult):
            if self.figures:
                fig = plots.trajectory_plane_figure(
                    result, title=f"{name}: path at iteration {firing.iteration}", log_scale=self.log_scale
                )
                writer.add_figure(f"{tag}/plane", fig, step, close=True)
        elif isinstance(result, Interpolation):
            if self.figures:
                writer.add_figure(f"{tag}/interpolation", plots.interpolation_figure(result), step, close=True)
        elif isinstance(result, LayerwiseCurvatureResult):
            # Layers × firings: the log handler keeps the per-layer values of every firing it wrote.
            history = self._layers.setdefault(name, [])
            history.append((f"epoch {firing.epoch}", result))
            if self.figures:
                labels = history[-1][1].labels()
                columns = [(c, r) for c, r in history if r.labels() == labels]
                for quantity in LAYER_QUANTITIES:
                    fig = plots.layer_heatmap_figure(
                        labels,
                        [c for c, _ in columns],
                        [r.values(quantity) for _, r in columns],
                        quantity=quantity,
                        title=f"{name}: {quantity} per layer",
                    )
                    writer.add_figure(f"{tag}/{quantity}_heatmap", fig, step, close=True)
        extra = getattr(result, "histograms", None)
        if self.histograms and callable(extra):
            # A result that exposes distributions (per-sample gradient norms) gets one histogram each.
            for key, values in extra().items():
                values = torch.as_tensor(values).detach().cpu().double().numpy()
                values = values[np.isfinite(values)]
                if values.size:
                    writer.add_histogram(f"{tag}/{key}", values, step)
        data = _curve_data(result)
        if data is not None and self.text:
            # The raw curve, so `python -m ignite_landscape report` can redraw it (a figure cannot be re-plotted).
            writer.add_text(f"{tag}/data", "```json\n" + json.dumps(data) + "\n```", step)

    @staticmethod
    def _density_histogram(writer: Any, tag: str, result: HessianDensityResult, step: int, bins: int = 64) -> None:
        # The SLQ quadrature is a discrete spectral measure: node θ carries mass τ/runs of the P eigenvalues.
        nodes = result.nodes.detach().cpu().double().numpy().ravel()
        mass = (result.weights.detach().cpu().double() / result.weights.shape[0]).numpy().ravel()
        keep = np.isfinite(nodes) & np.isfinite(mass)
        if getattr(result, "mask", None) is not None:  # padded nodes of runs that ended early are no eigenvalues
            keep &= result.mask.detach().cpu().numpy().ravel()
        nodes, mass = nodes[keep], mass[keep]
        if nodes.size == 0:
            return
        count = mass * result.num_params
        lo, hi = float(nodes.min()), float(nodes.max())
        if hi <= lo:
            hi = lo + 1e-12 * max(1.0, abs(lo))
        edges = np.linspace(lo, hi, bins + 1)
        counts, _ = np.histogram(nodes, edges, weights=count)
        writer.add_histogram_raw(
            tag,
            min=lo,
            max=hi,
            num=float(count.sum()),
            sum=float((count * nodes).sum()),
            sum_squares=float((count * nodes**2).sum()),
            bucket_limits=edges[1:].tolist(),
            bucket_counts=counts.tolist(),
            global_step=step,
        )


def _rounded(t: Any) -> Any:
    """A tensor/array as nested lists of floats with 8 significant digits (NaN/inf kept)."""
    arr = t.detach().cpu().double().numpy() if isinstance(t, torch.Tensor) else np.asarray(t, dtype=np.float64)
    return np.vectorize(lambda v: float(f"{v:.8g}"), otypes=[float])(arr).tolist() if arr.size else arr.tolist()


def _curve_data(result: Any) -> dict[str, Any] | None:
    """The raw numbers behind a slice, interpolation or density figure (``None`` for other results)."""
    if isinstance(result, LossSliceResult):
        return {
            "dims": result.dims,
            "coords": [_rounded(c) for c in result.coords],
            "loss": _rounded(result.loss),
            "accuracy": None if result.accuracy is None else _rounded(result.accuracy),
        }
    if isinstance(result, Interpolation):
        return {
            "alphas": _rounded(result.alphas),
            "loss": _rounded(result.loss),
            "error": None if result.error is None else _rounded(result.error),
            "loss_barrier": result.loss_barrier,
            "bn_recalibrated": bool(result.bn_recalibrated),
        }
    if isinstance(result, HessianDensityResult):
        return {"grid": _rounded(result.grid), "density": _rounded(result.density), "sigma": result.sigma}
    if isinstance(result, TrajectoryPlaneResult):
        return {
            "kind": "trajectory_plane",
            "path": _rounded(result.coords),
            "explained_variance": _rounded(result.explained_variance),
            "iterations": result.iterations,
            "coords": [_rounded(c) for c in result.slice.coords],
            "loss": _rounded(result.slice.loss),
        }
    return None
