"""What every landscape log handler shares (TensorBoard's and MLflow's): options, fresh firings, steps, history.

A log handler is called by an Ignite logger on some event; it writes each firing of the landscape handlers
once (:func:`fresh_firings`), at the trainer's iteration (:func:`default_step`), with the result's curves
computed once per firing (:class:`Fresh`). :class:`CurveHistory` keeps what a figure needs from earlier
firings: the last overlay lines and every ``bars`` column.

Example:
    >>> from ignite_landscape.handlers.base import Firing
    >>> firing = Firing(epoch=2, iteration=20, result=None, seconds=0.1, scalars={"value": 0.5})
    >>> print(summary_table({"sharpness": firing}))
    | handler | epoch | iteration | quantity | value |
    |---|---:|---:|---|---:|
    | sharpness | 2 | 20 | value | 0.5 |
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import ignite.distributed as idist
from ignite.engine import Engine

from ignite_landscape.handlers.base import Firing
from ignite_landscape.results import Curve

__all__ = [
    "EPOCH_TAG",
    "Fresh",
    "CurveHistory",
    "check_writer_options",
    "default_step",
    "firing_step",
    "latest_firings",
    "fresh_firings",
    "collect_fresh",
    "fresh_at_step",
    "firing_label",
    "summary_table",
]

EPOCH_TAG = "landscape/epoch"

_log = logging.getLogger(__name__)


@dataclass
class Fresh:
    """A firing not written yet, with its result and the result's curves (computed once for every writer).

    Attributes:
        name: the landscape handler's name.
        firing: its :class:`~ignite_landscape.handlers.base.Firing`.
        result: the latest result (``engine.state.landscape[name]``), ``None`` for a failed or skipped firing.
        curves: ``result.curves()`` (empty when there is no result or it has no curves).
    """

    name: str
    firing: Firing
    result: Any = None
    curves: dict[str, Curve] = field(default_factory=dict)


def default_step(engine: Engine, event_name: Any) -> int:
    """The trainer's iteration, whatever the event.

    An epoch or ``COMPLETED`` event's own counter (the epoch) would put a firing of
    ``ITERATION_COMPLETED(every=k) | COMPLETED`` far behind the iteration firings before it.
    """
    return int(engine.state.iteration)


def check_writer_options(names: Any, global_step_transform: Any, max_slice_curves: Any) -> list[str] | None:
    """Validate the options every landscape log handler shares; returns ``names`` as a list (or ``None``).

    Raises:
        TypeError: if ``names`` is not a sequence of strings or ``global_step_transform`` is not callable.
        ValueError: if ``max_slice_curves`` is not a positive int.
    """
    if names is not None:
        if isinstance(names, str) or not all(isinstance(n, str) for n in names):
            raise TypeError("names must be a sequence of handler names (strings)")
        names = list(names)
    if global_step_transform is not None and not callable(global_step_transform):
        raise TypeError(f"global_step_transform must be callable, got {type(global_step_transform).__name__}")
    if isinstance(max_slice_curves, bool) or not isinstance(max_slice_curves, int) or max_slice_curves < 1:
        raise ValueError(f"max_slice_curves must be a positive int, got {max_slice_curves!r}")
    return names


def latest_firings(engine: Engine, names: list[str] | None) -> dict[str, Firing]:
    """The latest firing of every landscape handler of ``engine`` (restricted to ``names``)."""
    firings: dict[str, Firing] = getattr(engine.state, "landscape_firings", None) or {}
    return {n: f for n, f in firings.items() if names is None or n in names}


def fresh_firings(engine: Engine, names: list[str] | None, logged: dict[str, Firing]) -> list[tuple[str, Firing]]:
    """The ``(name, firing)`` pairs of ``engine`` not yet in ``logged`` (restricted to ``names``)."""
    return [(n, f) for n, f in latest_firings(engine, names).items() if logged.get(n) is not f]


def collect_fresh(engine: Engine, names: list[str] | None, logged: dict[str, Firing], who: str) -> list[Fresh]:
    """The fresh firings of ``engine`` with their results and curves; marks them logged in ``logged``.

    A result whose ``curves()`` raises is written without curves (``who`` names the log handler in the
    warning): a drawing problem must not stop training.
    """
    results = getattr(engine.state, "landscape", None) or {}
    out = []
    for name, firing in fresh_firings(engine, names, logged):
        logged[name] = firing
        # The live result keeps what the history copy drops (eigenvectors); curves never need more.
        result = results.get(name, firing.result) if firing.result is not None else None
        curves: dict[str, Curve] = {}
        if result is not None and callable(getattr(result, "curves", None)):
            try:
                curves = dict(result.curves())
            except Exception as exc:  # noqa: BLE001 - a drawing problem must not stop training
                _log.warning("%s: could not get the curves of %r (%s: %s)", who, name, type(exc).__name__, exc)
        out.append(Fresh(name, firing, result, curves))
    return out


def firing_step(transform: Callable[[Engine, Any], int], engine: Engine, event_name: Any) -> int:
    """The step to log at, checked to be an int.

    Raises:
        TypeError: if ``transform`` returns anything but an int.
    """
    step = transform(engine, event_name)
    if not isinstance(step, int):
        raise TypeError(f"global_step must be an int, got {type(step).__name__}: check global_step_transform")
    return step


def fresh_at_step(
    engine: Engine,
    event_name: Any,
    names: list[str] | None,
    logged: dict[str, Firing],
    transform: Callable[[Engine, Any], int],
    who: str,
) -> tuple[list[Fresh], int]:
    """What a log handler writes at a call: the fresh firings (:func:`collect_fresh`) and their step.

    Nothing (and no step) off rank 0 or when no firing is fresh: under ``ignite.distributed`` only rank 0 writes.
    """
    if idist.get_rank() != 0:
        return [], 0
    fresh = collect_fresh(engine, names, logged, who)
    return (fresh, firing_step(transform, engine, event_name)) if fresh else ([], 0)


def firing_label(firing: Firing) -> str:
    """How a firing is named in a figure's legend or a heatmap's columns."""
    return f"epoch {firing.epoch}"


def summary_table(firings: Mapping[str, Firing]) -> str:
    """A markdown table of the latest scalars of every handler (TensorBoard renders it in the Text tab)."""
    lines = ["| handler | epoch | iteration | quantity | value |", "|---|---:|---:|---|---:|"]
    for name in sorted(firings):
        f = firings[name]
        status = f" (failed: {f.error})" if f.failed else ""
        for key in sorted(f.scalars):
            lines.append(f"| {name}{status} | {f.epoch} | {f.iteration} | {key} | {f.scalars[key]:.6g} |")
    return "\n".join(lines)


class CurveHistory:
    """The earlier firings a figure draws: the last ``max_lines`` overlay lines and every ``bars`` column.

    Keyed by ``(handler name, curve key)``; holds curves (compact arrays), never results.

    Args:
        max_lines: how many overlay lines (the current one included) a line figure shows.

    Example:
        >>> h = CurveHistory(max_lines=2)
        >>> for i in range(3):
        ...     shown = h.add("slice1d", "slice", f"epoch {i}", Curve("line", x=[0, 1], y=[i, i], overlay=True))
        >>> [label for label, _ in shown]
        ['epoch 1', 'epoch 2']
    """

    def __init__(self, max_lines: int) -> None:
        self.max_lines = max_lines
        self._curves: dict[tuple[str, str], list[tuple[str, Curve]]] = {}

    def add(self, name: str, key: str, label: str, curve: Curve) -> list[tuple[str, Curve]]:
        """Record ``curve`` and return what its figure shows, oldest first (the curve alone unless it accumulates)."""
        if curve.kind == "bars" or (curve.kind == "line" and curve.overlay):
            shown = self._curves.setdefault((name, key), [])
            shown.append((label, curve))
            if curve.kind == "line":
                del shown[: -self.max_lines]
            return list(shown)
        return [(label, curve)]
