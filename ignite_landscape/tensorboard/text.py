"""Text: each handler's record (kind and definitions), each firing's curves as data, and the summary table.

* ``landscape/<name>/record``: JSON ``{"kind", "definitions"}`` at a handler's first firing with a kind and
  whenever it changes;
* ``landscape/<name>/data``: JSON ``{curve_key: Curve.to_plain()}`` at each firing with curves (a figure cannot
  be re-plotted; ``python -m ignite_landscape report`` redraws these);
* ``landscape/summary``: the markdown table of every handler's latest scalars, at each call with a firing
  that ran (a skipped firing logs its count only).

Example:
    >>> from ignite_landscape.results import Curve
    >>> curve_data({"slice": Curve("line", x=[0.0, 1.0], y=[2.0, 3.0])})["slice"]["y"]
    [2.0, 3.0]
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ignite.engine import Engine

from ignite_landscape.handlers.base import Firing
from ignite_landscape.results import Curve
from ignite_landscape.tensorboard.base import LandscapeWriter
from ignite_landscape.tensorboard.common import Fresh, latest_firings, summary_table

__all__ = ["TextWriter", "SUMMARY_TAG", "curve_data", "firing_record"]

SUMMARY_TAG = "landscape/summary"


def curve_data(curves: Mapping[str, Curve]) -> dict[str, Any]:
    """``{key: curve.to_plain()}``: the JSON-ready data of a result's curves."""
    return {key: curve.to_plain() for key, curve in curves.items()}


def firing_record(firing: Firing) -> dict[str, Any] | None:
    """``{"kind", "definitions"}`` of a firing (``None`` when it has neither: a skipped firing, a first failure)."""
    if firing.skipped or not (firing.kind or firing.definitions):
        return None
    return {"kind": firing.kind, "definitions": dict(sorted(firing.definitions.items()))}


class TextWriter(LandscapeWriter):
    """Writes records, curve data and the summary table (see the module docstring for the tags).

    Takes the options of :class:`~ignite_landscape.tensorboard.LandscapeWriter`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # The options are LandscapeWriter's, validated there; only this writer's state is added.
        super().__init__(*args, **kwargs)
        self._records: dict[tuple[int, str], dict[str, Any]] = {}

    def write(self, writer: Any, engine: Engine, fresh: list[Fresh], step: int) -> None:
        """Add the changed records, the data of each firing with curves and the summary at ``step``."""
        for f in fresh:
            record = firing_record(f.firing)
            if record is not None and self._records.get((id(writer), f.name)) != record:
                writer.add_text(f"landscape/{f.name}/record", json.dumps(record), step)
                self._records[(id(writer), f.name)] = record
            if f.curves:
                writer.add_text(f"landscape/{f.name}/data", json.dumps(curve_data(f.curves)), step)
        if any(not f.firing.skipped for f in fresh):
            writer.add_text(SUMMARY_TAG, summary_table(latest_firings(engine, self.names)), step)
