"""Stream landscape results to TensorBoard through Ignite's ``TensorboardLogger``.

:class:`LandscapeLogHandler` is a log handler in Ignite's sense: attach it to the trainer with
``tb_logger.attach(trainer, log_handler=LandscapeLogHandler(), event_name=...)`` *after* the landscape
handlers (Ignite calls handlers of one event in the order they were attached). At each call it writes
every firing since its previous call, at the trainer's iteration (whatever event fired it;
``global_step_transform=`` chooses another step). It is made of small writers, each an Ignite log handler
of its own that can be attached alone, and none of which knows a result type: they read the protocol of
:mod:`ignite_landscape.results` (``firing.scalars``, ``firing.kind``, ``firing.definitions``,
``result.curves()``) and dispatch on ``Curve.kind`` only:

* :class:`ScalarsWriter` (``scalars.py``): the scalars and ``landscape/epoch``;
* :class:`FiguresWriter` and :class:`HistogramsWriter` (``figures.py``): curves as figures (drawn by
  :mod:`ignite_landscape.plots`) and histograms;
* :class:`MeshWriter` (``mesh.py``): grid curves as 3D meshes;
* :class:`LayoutWriter` (``layout.py``): the custom-scalars layout, charts keyed by result kind, and margin
  charts for ``q_lo``/``q_hi`` bands;
* :class:`TextWriter` (``text.py``): records, curve data and the summary table;
* ``common.py``: what the MLflow handler (:mod:`ignite_landscape.loggers`) shares with these.

It works with either writer Ignite picks (tensorboardX if installed, else ``torch.utils.tensorboard``)
and writes only on rank 0 under ``ignite.distributed``.

Event-file contract (what :mod:`ignite_landscape.report` reads; every tag is written at the step of the
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
``T/text_summary``, torch's ``SummaryWriter`` as ``T``.

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

from ignite_landscape.tensorboard.base import LandscapeWriter
from ignite_landscape.tensorboard.common import EPOCH_TAG, CurveHistory, summary_table
from ignite_landscape.tensorboard.figures import FiguresWriter, HistogramsWriter, curve_figure, write_histogram
from ignite_landscape.tensorboard.handler import LandscapeLogHandler
from ignite_landscape.tensorboard.layout import LayoutWriter, custom_scalars_layout, margin_tags
from ignite_landscape.tensorboard.mesh import MAX_MESH_VERTICES, MeshWriter, grid_mesh, slice_mesh
from ignite_landscape.tensorboard.scalars import ScalarsWriter
from ignite_landscape.tensorboard.text import TextWriter, curve_data

__all__ = [
    "LandscapeLogHandler",
    "LandscapeWriter",
    "ScalarsWriter",
    "FiguresWriter",
    "HistogramsWriter",
    "MeshWriter",
    "LayoutWriter",
    "TextWriter",
    "CurveHistory",
    "EPOCH_TAG",
    "MAX_MESH_VERTICES",
    "curve_data",
    "curve_figure",
    "custom_scalars_layout",
    "grid_mesh",
    "margin_tags",
    "slice_mesh",
    "summary_table",
    "write_histogram",
]
