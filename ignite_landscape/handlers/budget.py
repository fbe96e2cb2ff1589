"""A shared overhead budget: landscape handlers skip firings that would cost more than a fraction of training.

A :class:`Budget` holds two running totals: the time the landscape handlers attached with it have
spent computing, and the *training* time, the wall time while its engines run minus that landscape
time. Before a firing, a handler asks the budget whether its expected cost (the median of its own last
:data:`COST_WINDOW` measured firings) still fits::

    landscape_seconds + expected_cost <= fraction * training_seconds

and skips the firing when it does not. A handler's first firing always runs (there is nothing to
expect from yet), and so does every firing on ``Events.COMPLETED`` (the final state of a run is always
measured).

Several handlers may share one budget. First come, first served would starve the expensive handlers
(cheap ones would take every second that frees up, before it adds up to an expensive firing), so a
handler that fits still yields when running would leave too little for a handler that is waiting
(was skipped since its last run) and has run fewer times: the budget goes first to whoever has been
measured least often, and a cheap handler fills the gaps only while that leaves room for the waiting
ones. Handlers sharing a budget therefore fire about equally often (each at most as often as its
own event asks), and their firings slow down together as the budget tightens.

The budget's state (both totals) is part of every handler's ``state_dict`` that uses it, so resuming
from an Ignite ``Checkpoint`` continues with the same totals.

Example:
    >>> import torch
    >>> from ignite.engine import Engine, Events
    >>> from ignite_landscape import Budget, HessianTrace, Probe, Sharpness
    >>> model = torch.nn.Linear(4, 3)
    >>> probe = Probe((torch.randn(16, 4), torch.randint(0, 3, (16,))), torch.nn.functional.cross_entropy)
    >>> trainer = Engine(lambda engine, batch: None)
    >>> budget = Budget(0.25)  # the landscape may cost at most a quarter of the training time
    >>> handlers = [HessianTrace(model, probe, num_hvps=9), Sharpness(model, probe)]
    >>> for h in handlers:
    ...     _ = h.attach(trainer, Events.ITERATION_COMPLETED(every=10), budget=budget)
    >>> _ = trainer.run([0] * 100, max_epochs=1)
    >>> # This "training" does nothing at all: after their first firing, the handlers mostly skip.
    >>> all(h.skipped > 0 and len(h.history) + h.skipped == 10 for h in handlers)
    True
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ignite.engine import Engine, Events

__all__ = ["Budget", "COST_WINDOW"]

COST_WINDOW = 5
"""How many of a handler's latest firings its expected cost is the median of."""

_STOP_EVENTS = (Events.COMPLETED, Events.TERMINATE, Events.INTERRUPT, Events.EXCEPTION_RAISED)


class Budget:
    """Cap the landscape handlers' time at ``fraction`` × the training time spent so far.

    Args:
        fraction: the largest ratio of landscape time to training time (``0.25``: the handlers may add
            at most 25 % to the run's wall time). Any positive number; above 1 the landscape may take
            longer than the training.
        clock: a monotonic clock in seconds: ``time.perf_counter`` (wall time), ``time.process_time``
            (CPU time, steadier on a machine shared with other jobs) or a fake one in tests. The
            handlers attached with the budget time their firings (``landscape/<name>/seconds``) on it.

    Attributes:
        fraction: as given.
        landscape_seconds: time spent in the firings that ran, over every handler sharing the budget.
        max_firing_seconds: the longest single firing so far (how far one firing can overshoot).

    Raises:
        TypeError: if ``fraction`` is not a number or ``clock`` is not callable.
        ValueError: if ``fraction`` is not positive and finite.
    """

    def __init__(self, fraction: float, *, clock: Callable[[], float] = time.perf_counter) -> None:
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
            raise TypeError(f"fraction must be a number, got {type(fraction).__name__}")
        if not (math.isfinite(fraction) and fraction > 0):
            raise ValueError(f"fraction must be a positive finite number, got {fraction}")
        if not callable(clock):
            raise TypeError(f"clock must be callable, got {type(clock).__name__}")
        self.fraction = float(fraction)
        self.clock = clock
        self.landscape_seconds = 0.0
        self.max_firing_seconds = 0.0
        # Wall time of finished stretches (earlier runs, a resumed checkpoint) and of the current one.
        self._wall_before = 0.0
        self._origin: float | None = None
        self._running: set[int] = set()
        self._engines: set[int] = set()
        # Per handler name: firings that ran, and the expected cost of those waiting for a turn.
        self._runs: dict[str, int] = {}
        self._waiting: dict[str, float] = {}

    # -- the clock runs while an attached engine runs -----------------------------------------------
    def attach(self, engine: Engine) -> None:
        """Run the training clock while ``engine`` runs (called by ``handler.attach(..., budget=)``)."""
        if id(engine) in self._engines:
            return
        self._engines.add(id(engine))
        engine.add_event_handler(Events.STARTED, self._started)
        for event in _STOP_EVENTS:
            engine.add_event_handler(event, self._stopped)

    def _started(self, engine: Engine) -> None:
        if not self._running and self._origin is None:
            self._origin = self.clock()
        self._running.add(id(engine))

    def _stopped(self, engine: Engine, *args: Any) -> None:
        self._running.discard(id(engine))
        if not self._running and self._origin is not None:
            self._wall_before += self.clock() - self._origin
            self._origin = None

    @property
    def wall_seconds(self) -> float:
        """Wall time while the attached engines ran (landscape included), resumed totals included."""
        running = 0.0 if self._origin is None else self.clock() - self._origin
        return self._wall_before + running

    @property
    def training_seconds(self) -> float:
        """Wall time outside the landscape handlers while the engines ran."""
        return max(0.0, self.wall_seconds - self.landscape_seconds)

    @property
    def allowance(self) -> float:
        """Landscape seconds still available now: ``fraction × training − landscape`` (may be negative)."""
        return self.fraction * self.training_seconds - self.landscape_seconds

    # -- decisions ----------------------------------------------------------------------------------
    @staticmethod
    def expected_cost(seconds: Sequence[float]) -> float:
        """Expected cost of the next firing: the median of the last :data:`COST_WINDOW` measured costs."""
        recent = [s for s in seconds[-COST_WINDOW:] if math.isfinite(s)]
        return statistics.median(recent) if recent else 0.0

    def allows(self, name: str, seconds: Sequence[float]) -> bool:
        """Whether handler ``name``, whose earlier firings cost ``seconds``, may fire now.

        It may when its expected cost fits, and running it still leaves room for every waiting handler
        that has run fewer times (it always may without history: nothing to expect from yet).
        """
        if not seconds:
            return True
        if self._origin is None and not self._running:
            # Fired outside a run of an attached engine (or before STARTED reached us): start the clock.
            self._origin = self.clock()
        limit = self.fraction * self.training_seconds
        after = self.landscape_seconds + self.expected_cost(seconds)
        if after > limit:
            return False
        mine = self._runs.get(name, 0)
        return all(
            after + cost <= limit
            for other, cost in self._waiting.items()
            if other != name and self._runs.get(other, 0) < mine
        )

    def skip(self, name: str, seconds: Sequence[float]) -> None:
        """Record that handler ``name`` (earlier costs ``seconds``) was skipped and waits for a turn."""
        self._waiting[name] = self.expected_cost(seconds)

    def spend(self, name: str, seconds: float) -> None:
        """Account a firing of handler ``name`` that ran for ``seconds``."""
        self._waiting.pop(name, None)
        self._runs[name] = self._runs.get(name, 0) + 1
        if math.isfinite(seconds) and seconds > 0:
            self.landscape_seconds += seconds
            if self._origin is None:
                # Ran while the clock stood (on COMPLETED, after the budget stopped it): the wall time
                # must still contain it, or the training time (wall − landscape) would lose it.
                self._wall_before += seconds
            self.max_firing_seconds = max(self.max_firing_seconds, seconds)

    # -- checkpointing --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The totals and per-handler accounts (plain floats and dicts), for a checkpoint."""
        return {
            "fraction": self.fraction,
            "wall_seconds": self.wall_seconds,
            "landscape_seconds": self.landscape_seconds,
            "max_firing_seconds": self.max_firing_seconds,
            "runs": dict(self._runs),
            "waiting": dict(self._waiting),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Continue from saved totals (the fraction stays the one this budget was built with).

        Raises:
            TypeError: if ``state_dict`` is not a mapping.
            ValueError: if it lacks the totals.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
        missing = [k for k in ("wall_seconds", "landscape_seconds") if k not in state_dict]
        if missing:
            raise ValueError(f"state_dict lacks keys {missing}: not a Budget state")
        self._wall_before = float(state_dict["wall_seconds"])
        self._origin = self.clock() if self._running else None
        self.landscape_seconds = float(state_dict["landscape_seconds"])
        self.max_firing_seconds = float(state_dict.get("max_firing_seconds", 0.0))
        self._runs = {str(k): int(v) for k, v in state_dict.get("runs", {}).items()}
        self._waiting = {str(k): float(v) for k, v in state_dict.get("waiting", {}).items()}

    def __repr__(self) -> str:
        """The fraction and the landscape and training seconds so far."""
        return (
            f"Budget(fraction={self.fraction}, landscape_seconds={self.landscape_seconds:.3f}, "
            f"training_seconds={self.training_seconds:.3f})"
        )
