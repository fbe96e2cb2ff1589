"""Scalars: ``landscape/<name>/<key>`` for every scalar of every fresh firing, and ``landscape/epoch``.

Example:
    >>> ScalarsWriter().names is None
    True
"""

from __future__ import annotations

from typing import Any

from ignite.engine import Engine

from ignite_landscape.tensorboard.base import LandscapeWriter
from ignite_landscape.tensorboard.common import EPOCH_TAG, Fresh

__all__ = ["ScalarsWriter"]


class ScalarsWriter(LandscapeWriter):
    """Writes each firing's scalars (those in ``engine.state.metrics``) and the trainer's epoch at the step.

    ``landscape/epoch`` lets a reader pair results logged at iterations with metrics an evaluator logged at
    epochs. Takes the options of :class:`~ignite_landscape.tensorboard.LandscapeWriter`.
    """

    def write(self, writer: Any, engine: Engine, fresh: list[Fresh], step: int) -> None:
        """Write the epoch and every scalar of ``fresh`` at ``step``."""
        writer.add_scalar(EPOCH_TAG, float(engine.state.epoch), step)
        for f in fresh:
            for key, value in f.firing.scalars.items():
                writer.add_scalar(f"landscape/{f.name}/{key}", float(value), step)
