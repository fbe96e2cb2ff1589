"""``LandscapeLogHandler``: every landscape writer in one Ignite log handler, with one option per part.

Example:
    >>> handler = LandscapeLogHandler(mesh=False, max_slice_curves=4)
    >>> [type(p).__name__ for p in handler.parts]
    ['LayoutWriter', 'ScalarsWriter', 'TextWriter', 'HistogramsWriter', 'FiguresWriter']
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ignite.engine import Engine

from ignite_landscape.tensorboard.base import LandscapeWriter
from ignite_landscape.tensorboard.common import Fresh
from ignite_landscape.tensorboard.figures import FiguresWriter, HistogramsWriter
from ignite_landscape.tensorboard.layout import LayoutWriter
from ignite_landscape.tensorboard.mesh import MeshWriter
from ignite_landscape.tensorboard.scalars import ScalarsWriter
from ignite_landscape.tensorboard.text import TextWriter

__all__ = ["LandscapeLogHandler"]


class LandscapeLogHandler(LandscapeWriter):
    """Ignite log handler that writes landscape results to a ``TensorboardLogger``.

    Attach it after the landscape handlers, on the same event:
    ``tb_logger.attach(trainer, log_handler=LandscapeLogHandler(), event_name=Events.EPOCH_COMPLETED)``.
    It reads only the protocol every result implements (``firing.scalars``, ``firing.kind``,
    ``firing.definitions``, ``result.curves()``), so a measure of one's own is written like the package's.

    Args:
        names: only these handler names (default: all).
        global_step_transform: ``f(engine, event_name) -> int`` giving the step. Default: the engine's
            iteration (the trainer's), for every event, so one handler fired by any mix of iteration,
            epoch and ``COMPLETED`` events is logged at strictly increasing steps. To put landscape
            scalars on an epoch axis next to per-epoch evaluation metrics, pass
            ``global_step_from_engine(trainer, Events.EPOCH_COMPLETED)`` (with epoch events only).
        histograms: write ``histogram`` curves (eigenvalues, the SLQ spectral measure, gradient norms).
        figures: write ``line``, ``grid``, ``path`` and ``bars`` curves as figures.
        mesh: write ``grid`` curves (the 2D slice) as 3D meshes.
        text: write the records, the curve data and the summary table (the ``report`` command needs
            the records and data).
        custom_scalars: write the custom-scalars layout.
        max_mesh_faces: triangle budget of a mesh.
        max_slice_curves: how many firings of an overlay line (the 1D slice) one figure shows.
        log_scale: colour grids (contours, mesh height) by ``log10(loss)`` when every loss is positive.

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
        super().__init__(names, global_step_transform=global_step_transform)
        self.histograms, self.figures, self.mesh, self.text = histograms, figures, mesh, text
        self.custom_scalars = custom_scalars
        self.max_mesh_faces, self.max_slice_curves, self.log_scale = max_mesh_faces, max_slice_curves, log_scale
        # This handler selects the firings and the step once; the parts only write them. Every part is built,
        # on or off, so its constructor validates its options (max_slice_curves, max_mesh_faces).
        parts: list[tuple[bool, LandscapeWriter]] = [
            (custom_scalars, LayoutWriter(self.names)),
            (True, ScalarsWriter(self.names)),
            (text, TextWriter(self.names)),
            (histograms, HistogramsWriter(self.names)),
            (figures, FiguresWriter(self.names, max_slice_curves=max_slice_curves, log_scale=log_scale)),
            (mesh, MeshWriter(self.names, max_mesh_faces=max_mesh_faces, log_scale=log_scale)),
        ]
        self.parts = [part for on, part in parts if on]

    def write(self, writer: Any, engine: Engine, fresh: list[Fresh], step: int) -> None:
        """Hand the fresh firings to every part, in order."""
        for part in self.parts:
            part.write(writer, engine, fresh, step)
