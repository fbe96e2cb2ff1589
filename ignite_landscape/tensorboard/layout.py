"""The custom-scalars layout: one chart per family of landscape scalars, keyed by result kind, and margin charts.

A chart lists the exact tags of every handler whose firings are of its kinds, whatever the handler is
named (``HessianSpectrum(..., name="curv")`` lands on the eigenvalue chart because its kind is
``"spectrum"``). A quantity ``q`` logged with ``q_lo`` and ``q_hi`` (the error bars of
``uncertainty="jackknife"``) gets a *margin* chart, the curve inside its band. The layout is written again
whenever a firing brings a tag it did not list (TensorBoard shows the last layout written).

Example:
    >>> layout = custom_scalars_layout({"curv": ("spectrum", ["lambda_1", "lambda_2", "stability_threshold"])})
    >>> layout["landscape"]["Hessian eigenvalues and stability threshold"]
    ['Multiline', ['landscape/curv/lambda_1', 'landscape/curv/lambda_2', 'landscape/curv/stability_threshold']]
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ignite.engine import Engine

from ignite_landscape.measures.jackknife import INTERVAL_Z
from ignite_landscape.tensorboard.base import LandscapeWriter
from ignite_landscape.tensorboard.common import Fresh

__all__ = ["CHARTS", "LayoutWriter", "custom_scalars_layout", "margin_tags"]

# (chart title, {result kind: regex of the scalar keys it shows}); kind "*" is any handler.
CHARTS: tuple[tuple[str, Mapping[str, str]], ...] = (
    ("Hessian eigenvalues and stability threshold", {"spectrum": r"lambda_\d+|stability_threshold"}),
    (
        "Preconditioned sharpness (Adam) and its threshold",
        {"spectrum": r"preconditioned_lambda_max|preconditioned_threshold"},
    ),
    ("Sharpness variants", {"sharpness": r"value"}),
    ("Hessian trace", {"trace": r"value", "density": r"trace"}),
    ("Mode connectivity barriers", {"connectivity": r"loss_barrier|error_barrier"}),
    ("Gradient noise scale", {"noise_scale": r"b_simple"}),
    ("Slice centre loss", {"slice1d": r"center_loss", "slice2d": r"center_loss", "trajectory": r"center_loss"}),
    ("Seconds per firing", {"*": r"seconds"}),
)


def _natural(tag: str) -> list[Any]:
    # lambda_2 before lambda_10
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", tag)]


def margin_tags(name: str, scalars: Iterable[str]) -> list[tuple[str, str, str]]:
    """``(value, lower, upper)`` tags of every quantity ``q`` whose scalars hold ``q``, ``q_lo`` and ``q_hi``.

    Example:
        >>> margin_tags("trace", {"value": 3.0, "stderr": 0.5, "value_lo": 2.0, "value_hi": 4.0})
        [('landscape/trace/value', 'landscape/trace/value_lo', 'landscape/trace/value_hi')]
    """
    keys = set(scalars)
    out = []
    for key in sorted(keys, key=_natural):
        if key.endswith("_lo") and key[:-3] in keys and key[:-3] + "_hi" in keys:
            q = f"landscape/{name}/{key[:-3]}"
            out.append((q, q + "_lo", q + "_hi"))
    return out


def custom_scalars_layout(
    handlers: Mapping[str, tuple[str, Iterable[str]]], margins: Sequence[tuple[str, str, str]] = ()
) -> dict[str, Any]:
    """The custom-scalars layout of ``handlers`` (``{name: (kind, scalar keys)}``) for ``add_custom_scalars``.

    Args:
        handlers: each handler's result kind and the scalar keys it logged.
        margins: ``(value, lower, upper)`` tags (:func:`margin_tags`), each drawn as the value in its band
            under the ``landscape error bars`` category.

    Charts without a tag are left out.
    """
    charts: dict[str, Any] = {}
    for title, keys_by_kind in CHARTS:
        tags = [
            f"landscape/{name}/{key}"
            for name, (kind, keys) in handlers.items()
            for key in keys
            if (pattern := keys_by_kind.get(kind, keys_by_kind.get("*"))) and re.fullmatch(pattern, key)
        ]
        if tags:
            charts[title] = ["Multiline", sorted(tags, key=_natural)]
    layout: dict[str, Any] = {"landscape": charts} if charts else {}
    if margins:
        layout["landscape error bars"] = {
            f"{value.removeprefix('landscape/')} ± {INTERVAL_Z:g} stderr": ["Margin", [value, lo, hi]]
            for value, lo, hi in margins
        }
    return layout


class LayoutWriter(LandscapeWriter):
    """Writes :func:`custom_scalars_layout` of every handler seen so far, once per writer and again when it grows.

    Takes the options of :class:`~ignite_landscape.tensorboard.LandscapeWriter`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # The options are LandscapeWriter's, validated there; only this writer's state is added.
        super().__init__(*args, **kwargs)
        self._handlers: dict[str, tuple[str, set[str]]] = {}
        self._written: dict[int, dict[str, Any]] = {}

    def write(self, writer: Any, engine: Engine, fresh: list[Fresh], step: int) -> None:
        """Add the layout when it differs from the last one this writer got."""
        for f in fresh:
            kind, keys = self._handlers.get(f.name, ("", set()))
            self._handlers[f.name] = (f.firing.kind or kind, keys | set(f.firing.scalars))
        margins = [t for name, (_, keys) in sorted(self._handlers.items()) for t in margin_tags(name, keys)]
        layout = custom_scalars_layout(self._handlers, margins)
        if layout and self._written.get(id(writer)) != layout:
            writer.add_custom_scalars(layout)
            self._written[id(writer)] = layout
