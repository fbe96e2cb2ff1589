"""The common Ignite shell of every landscape handler: validate, attach, fire, record, serialise.

A handler decides *when* a measure runs and *where* its result goes; the measure itself (a plain
function of :mod:`ignite_landscape.measures`) does the math. On each firing the handler

* skips if it already computed at this moment (``EPOCH_COMPLETED | COMPLETED`` on the last epoch),
* runs the measure inside :func:`~ignite_landscape.restore.preserved_state` (the probe session
  restores the model already; this second guard covers the handler's own code too),
* on an exception logs a warning with the cause, records NaN and lets training continue (or
  re-raises with ``on_error="raise"``),
* stores the result in ``engine.state.landscape[name]`` and its scalars in
  ``engine.state.metrics["landscape/<name>/<quantity>"]``, plus its own wall time under
  ``"landscape/<name>/seconds"``,
* appends a :class:`Firing` to :attr:`LandscapeHandler.history`.

``state_dict()`` holds only tensors, numbers, strings and containers, so Ignite's ``Checkpoint``
(which loads with ``torch.load(..., weights_only=True)``) can save and restore handlers.

Example:
    >>> import torch
    >>> from ignite.engine import Engine, Events
    >>> from ignite_landscape import Probe
    >>> from ignite_landscape.handlers import HessianTrace
    >>> model = torch.nn.Linear(4, 3)
    >>> probe = Probe((torch.randn(16, 4), torch.randint(0, 3, (16,))), torch.nn.functional.cross_entropy)
    >>> trainer = Engine(lambda engine, batch: None)
    >>> _ = HessianTrace(model, probe, num_hvps=9).attach(trainer, Events.EPOCH_COMPLETED)
    >>> _ = trainer.run([0, 1], max_epochs=2)
    >>> sorted(k for k in trainer.state.metrics if k.endswith("/value"))
    ['landscape/trace/value']
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import math
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from ignite.engine import Engine, Events, EventsList
from ignite.engine.events import CallableEventWithFilter, RemovableEventHandle
from torch import nn

from ignite_landscape import distributed
from ignite_landscape.handlers.budget import Budget
from ignite_landscape.params import ParamsArg, ParamSpace, model_device, unwrap_model
from ignite_landscape.probe import Probe
from ignite_landscape.restore import preserved_state
from ignite_landscape.results import record_of
from ignite_landscape.validation import check_choice, check_int, check_nonnegative

__all__ = ["Firing", "LandscapeHandler", "ON_ERROR", "to_plain", "from_plain"]

logger = logging.getLogger(__name__)

ON_ERROR = ("warn", "raise")
_STATE_VERSION = 1
# Distinct definition dicts a handler remembers to share between firings (they change rarely and come back).
_DEFINITIONS_KEPT = 8


@dataclass
class Firing:
    """One firing of a handler.

    Attributes:
        epoch: ``engine.state.epoch`` when it fired.
        iteration: ``engine.state.iteration`` when it fired.
        result: the measure's result object (``None`` when it failed). Large tensors that only serve
            the next firing (eigenvectors) are dropped from the history copy.
        seconds: wall time of the computation.
        scalars: the scalars written to ``engine.state.metrics`` (without the ``landscape/<name>/`` prefix).
        error: ``"ExceptionType: message"`` when the computation failed, else ``None``.
        skipped: True for a firing that a :class:`~ignite_landscape.Budget` skipped (its only scalar
            is the running count ``skipped``; it is never appended to the history).
        kind: the result's :attr:`~ignite_landscape.results.Result.kind` (that of the last successful
            firing when this one failed).
        definitions: one sentence per scalar key: the result's definitions and the handler's own.
    """

    epoch: int
    iteration: int
    result: Any
    seconds: float
    scalars: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    skipped: bool = False
    kind: str = ""
    definitions: dict[str, str] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        """True when the computation raised."""
        return self.error is not None


# -- serialisation --------------------------------------------------------------------------------
# Ignite's Checkpoint loads with weights_only=True, which refuses arbitrary classes. Result
# dataclasses are therefore stored as tagged dicts of plain data and rebuilt on load; only classes
# defined inside this package are ever rebuilt.
_TAG = "__dataclass__"


def to_plain(obj: Any) -> Any:
    """``obj`` as nested dicts/lists/tuples of tensors (on the CPU), numbers, strings and ``None``.

    Dataclasses become ``{"__dataclass__": "module:QualName", "fields": {...}}``; ``torch.Size``
    becomes a tuple.
    """
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        cls = type(obj)
        return {
            _TAG: f"{cls.__module__}:{cls.__qualname__}",
            "fields": {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)},
        }
    if isinstance(obj, torch.Size):
        return tuple(int(s) for s in obj)
    if isinstance(obj, Mapping):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(to_plain(v) for v in obj)
    if isinstance(obj, list):
        return [to_plain(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store an object of type {type(obj).__name__} in a handler state_dict")


def from_plain(obj: Any) -> Any:
    """Inverse of :func:`to_plain` (dataclasses of ``ignite_landscape`` only)."""
    if isinstance(obj, Mapping):
        if _TAG in obj:
            module_name, _, qualname = str(obj[_TAG]).partition(":")
            if not (module_name == "ignite_landscape" or module_name.startswith("ignite_landscape.")):
                raise ValueError(f"refusing to rebuild {obj[_TAG]!r}: not an ignite_landscape result class")
            cls: Any = importlib.import_module(module_name)
            for part in qualname.split("."):
                cls = getattr(cls, part)
            if not dataclasses.is_dataclass(cls):
                raise ValueError(f"{obj[_TAG]!r} is not a dataclass")
            values = {k: from_plain(v) for k, v in obj["fields"].items()}
            fields = {f.name: f for f in dataclasses.fields(cls)}
            out = cls(**{k: v for k, v in values.items() if k in fields and fields[k].init})
            for k, v in values.items():
                if k in fields and not fields[k].init:
                    object.__setattr__(out, k, v)
            return out
        return {k: from_plain(v) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(from_plain(v) for v in obj)
    if isinstance(obj, list):
        return [from_plain(v) for v in obj]
    return obj


# -- progress -------------------------------------------------------------------------------------
@contextmanager
def _progress(enabled: bool, desc: str, after: float) -> Iterator[None]:
    """Show an elapsed-time bar when a computation runs longer than ``after`` seconds.

    The measures report no intermediate progress, so the bar tells the user that a long probe is
    alive and how long it has been running. It runs in a thread that only redraws; it draws no
    random numbers and touches no tensor.
    """
    if not enabled:
        yield
        return
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional
        yield
        return
    stop = threading.Event()

    def show() -> None:
        if stop.wait(after):
            return
        bar = tqdm(total=None, desc=desc, bar_format="{desc}: running for {elapsed}", leave=False)
        while not stop.wait(0.5):
            bar.refresh()
        bar.close()

    thread = threading.Thread(target=show, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _interactive() -> bool:
    # One bar per job: under ignite.distributed only rank 0 draws it.
    if distributed.rank() != 0:
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class LandscapeHandler:
    """Base class of the Ignite handlers: one measure, run on events, results into ``engine.state``.

    Subclasses set :attr:`default_name` and implement :meth:`compute` (call one measure function and
    return its result); they may extend :meth:`scalars_of`, :meth:`expected_keys`,
    :meth:`_extra_state` / :meth:`_load_extra_state` and :meth:`_on_attach`.

    Args:
        model: the trained model (DDP/DataParallel wrappers are looked through). It is never modified.
        probe: the fixed samples the measure runs on; its device type must match the model's.
        name: the key in ``engine.state.landscape`` and the ``landscape/<name>/`` metric prefix.
        params: restrict the measure to some parameters (see :class:`~ignite_landscape.ParamSpace`).
        seed: seed of every random draw of the measure (the same at every firing, so estimates
            at different epochs use the same random vectors).
        on_error: ``"warn"`` (log, record NaN, continue training) or ``"raise"``.
        progress: show an elapsed-time bar for computations longer than ``progress_after`` seconds;
            ``None`` shows it only when stderr is a terminal, and only on rank 0.
        progress_after: seconds before the bar appears.
        guard: also wrap each firing in :func:`~ignite_landscape.restore.preserved_state` (the probe
            sessions of the measures restore the model already; this covers everything else at the
            price of one copy of the weights and buffers during the firing; ``False`` saves that copy
            for very large models).

    Raises:
        TypeError: if ``model`` is not a module, ``probe`` not a :class:`Probe` or ``name`` not a string.
        ValueError: if the model has no trainable parameters, ``params`` selects none, the probe
            lives on another device type than the model, ``name`` is empty or holds ``"/"``, or
            ``on_error`` is unknown.
    """

    default_name: ClassVar[str] = ""

    def __init__(
        self,
        model: nn.Module,
        probe: Probe,
        *,
        name: str | None = None,
        params: ParamsArg = None,
        seed: int = 0,
        on_error: str = "warn",
        progress: bool | None = None,
        progress_after: float = 3.0,
        guard: bool = True,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(probe, Probe):
            raise TypeError(f"probe must be an ignite_landscape.Probe, got {type(probe).__name__}")
        name = self.default_name if name is None else name
        if not isinstance(name, str):
            raise TypeError(f"name must be a string, got {type(name).__name__}")
        if not name or "/" in name or name != name.strip():
            raise ValueError(f"name must be a non-empty string without '/' or surrounding spaces, got {name!r}")
        check_choice("on_error", on_error, ON_ERROR)
        check_int("seed", seed, 0)
        if progress is not None and not isinstance(progress, bool):
            raise TypeError(f"progress must be a bool or None, got {type(progress).__name__}")
        check_nonnegative("progress_after", progress_after, allow_inf=True, unit=" of seconds")
        # ParamSpace raises ValueError for a model without trainable parameters and for a selection
        # that names parameters the model does not have.
        self.space = ParamSpace.from_model(model, params)
        device = model_device(model)  # raises for a model spread over several devices
        if probe.device is not None and probe.device.type != device.type:
            raise ValueError(
                f"probe: its samples are on {probe.device} but the model is on {device}; "
                "build the Probe with device= matching the model"
            )
        self.model = model
        self.probe = probe
        # An undeclared loss_fn is checked to be a per-row mean now, so a loss the probe cannot compute
        # exactly is refused at construction instead of failing at every firing.
        probe.check_objective(model)
        self.name = name
        self.params = params
        self.seed = seed
        self.on_error = on_error
        self.progress = _interactive() if progress is None else progress
        self.progress_after = float(progress_after)
        if not isinstance(guard, bool):
            raise TypeError(f"guard must be a bool, got {type(guard).__name__}")
        self.guard = guard
        self.history: list[Firing] = []
        self._definitions_seen: list[dict[str, str]] = []
        self.budget: Budget | None = None
        self.skipped = 0
        self._pending_budget_state: Mapping[str, Any] | None = None
        self._last_skipped = False
        self._last_key: tuple[int, int, int, int] | None = None
        self._run_count = 0

    # -- to implement ------------------------------------------------------------------------------
    def compute(self, engine: Engine) -> Any:
        """Run the measure on the current weights and return its result object."""
        raise NotImplementedError

    def scalars_of(self, engine: Engine, result: Any) -> dict[str, float]:
        """Scalars of ``result`` to put into ``engine.state.metrics`` (default: ``result.scalars()``)."""
        return {k: float(v) for k, v in result.scalars().items()}

    def expected_keys(self) -> list[str]:
        """Scalar keys recorded as NaN when the very first computation fails."""
        return []

    def definitions(self) -> dict[str, str]:
        """Definitions of the scalars the handler adds to its result's (``seconds``, thresholds, ...)."""
        return {
            "seconds": "wall time of the firing, in seconds",
            "skipped": "firings the budget skipped so far",
            "probe": self._probe_definition(self.probe),
        }

    @staticmethod
    def _probe_definition(probe: Probe) -> str:
        # The report prints it under each figure: what the numbers were measured on.
        return (
            f"{probe.num_samples} fixed samples, model in {probe.model_mode} mode, "
            f"objective {probe.decomposition.description}"
        )

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        pass

    def _on_attach(self, engine: Engine) -> None:
        pass

    def _history_copy(self, result: Any) -> Any:
        """The version of ``result`` kept in :attr:`history` (subclasses drop bulky fields)."""
        return result

    # -- Ignite -------------------------------------------------------------------------------------
    def attach(
        self,
        engine: Engine,
        event: Any = Events.EPOCH_COMPLETED,
        *,
        every: int | None = None,
        budget: Budget | float | None = None,
    ) -> RemovableEventHandle:
        """Run this handler on ``event`` of ``engine``.

        Args:
            engine: usually the trainer.
            event: any Ignite event, filtered event (``Events.EPOCH_COMPLETED(every=5)``,
                ``Events.ITERATION_COMPLETED(once=[10, 100])``) or ``|``-combination of them.
            every: shorthand for ``event(every=every)``.
            budget: a :class:`~ignite_landscape.Budget`, possibly shared with other handlers, or a
                fraction (a budget of this handler's own): a firing whose expected cost would push the
                landscape time above that fraction of the training time so far is skipped (counted in
                :attr:`skipped`, logged as ``landscape/<name>/skipped``). The first firing and firings
                on ``Events.COMPLETED`` always run.

        Returns:
            The handle of the registration (``handle.remove()`` detaches it).

        Raises:
            TypeError: if ``engine`` is not an Ignite ``Engine`` or ``event`` not an Ignite event.
            ValueError: if ``every`` is not a positive int or the engine does not know the event, or
                a fractional ``budget`` is not positive.
        """
        if budget is not None and not isinstance(budget, Budget):
            if isinstance(budget, bool) or not isinstance(budget, (int, float)):
                raise TypeError(f"budget must be an ignite_landscape.Budget or a fraction, got {type(budget).__name__}")
            budget = Budget(budget)
        if not isinstance(engine, Engine):
            raise TypeError(f"engine must be an ignite.engine.Engine, got {type(engine).__name__}")
        if every is not None:
            if isinstance(every, bool) or not isinstance(every, int) or every < 1:
                raise ValueError(f"every must be a positive int (fire every N events), got {every!r}")
            if not isinstance(event, CallableEventWithFilter) or event.filter is not None:
                raise ValueError("every= needs a plain event such as Events.EPOCH_COMPLETED, not a filtered one")
            event = event(every=every)
        events = list(event) if isinstance(event, EventsList) else [event]
        for e in events:
            if not isinstance(e, (CallableEventWithFilter, str)):
                raise TypeError(
                    f"event must be an Ignite event such as Events.EPOCH_COMPLETED(every=5), got {type(e).__name__}"
                )
        self._on_attach(engine)
        if budget is not None:
            self.budget = budget
            budget.attach(engine)
            if self._pending_budget_state is not None:
                budget.load_state_dict(self._pending_budget_state)
                self._pending_budget_state = None
        handle = engine.add_event_handler(event, self)
        if not engine.has_event_handler(self._on_started, Events.STARTED):
            engine.add_event_handler(Events.STARTED, self._on_started)
        return handle

    def _on_started(self, engine: Engine) -> None:
        # A new run of the engine: (epoch, iteration) pairs may repeat (evaluators restart at 0).
        self._run_count += 1

    def __call__(self, engine: Engine) -> None:
        """Compute once per moment of ``engine``, record the result, never kill training (by default)."""
        state = engine.state
        key = (id(engine), self._run_count, state.epoch, state.iteration)
        # A moment the budget skipped still runs on COMPLETED (the final state is always measured).
        if key == self._last_key and not (self._last_skipped and engine.last_event_name == Events.COMPLETED):
            logger.debug("%s: already handled epoch %d, iteration %d", self.name, state.epoch, state.iteration)
            return
        self._last_key = key
        self._last_skipped = False
        if getattr(state, "landscape", None) is None:
            state.landscape = {}
        if getattr(state, "landscape_firings", None) is None:
            state.landscape_firings = {}
        if self.budget is not None and not self._budget_allows(engine):
            self._last_skipped = True
            self._skip(state)
            return
        clock = time.perf_counter if self.budget is None else self.budget.clock
        start = clock()
        error = None
        try:
            with (
                preserved_state(unwrap_model(self.model)) if self.guard else nullcontext(),
                _progress(self.progress, f"landscape/{self.name}", self.progress_after),
            ):
                result = self.compute(engine)
                scalars = self.scalars_of(engine, result)
                # Inside the guard: a definition that cannot be written must not stop training either.
                record = record_of(result, self.definitions())
        except Exception as exc:
            if self.on_error == "raise":
                raise
            error = f"{type(exc).__name__}: {exc}"
            logger.warning(
                "landscape handler %r failed at epoch %d, iteration %d (%s); the model is restored, NaN is "
                "recorded and training continues",
                self.name,
                state.epoch,
                state.iteration,
                error,
                exc_info=logger.isEnabledFor(logging.DEBUG),
            )
            result = None
            scalars = {k: math.nan for k in self._nan_keys()}
        seconds = clock() - start
        if self.budget is not None:
            self.budget.spend(self.name, seconds)
        if error is None:
            bad = [k for k, v in scalars.items() if not math.isfinite(v)]
            # Every rank holds the same scalars: one warning per job. (Failures above differ by rank: all log.)
            if bad and distributed.rank() == 0:
                logger.warning(
                    "landscape handler %r: non-finite %s at epoch %d, iteration %d",
                    self.name,
                    ", ".join(bad),
                    state.epoch,
                    state.iteration,
                )
        scalars["seconds"] = seconds
        if result is None:  # a failed firing reads like the last one that worked
            before = next((f for f in reversed(self.history) if not f.failed), None)
            record = {"kind": before.kind, "definitions": before.definitions} if before else record_of(None)
        state.landscape[self.name] = result
        for k, v in scalars.items():
            state.metrics[f"landscape/{self.name}/{k}"] = v
        firing = Firing(
            epoch=int(state.epoch),
            iteration=int(state.iteration),
            result=None if result is None else self._history_copy(result),
            seconds=seconds,
            scalars=dict(scalars),
            error=error,
            kind=record["kind"],
            definitions=self._shared_definitions(record["definitions"]),
        )
        self.history.append(firing)
        state.landscape_firings[self.name] = firing

    def _shared_definitions(self, definitions: Mapping[str, str]) -> dict[str, str]:
        # Definitions say what a number means, not its value: they rarely change, and when they do they tend to
        # come back (firings before and after a plane can be fitted). Every firing shares one dict per distinct
        # content, so a long history holds its scalars, not thousands of copies of the same sentences.
        for seen in self._definitions_seen:
            if seen == definitions:
                return seen
        fresh = dict(definitions)
        self._definitions_seen = [fresh, *self._definitions_seen[: _DEFINITIONS_KEPT - 1]]
        return fresh

    def _budget_allows(self, engine: Engine) -> bool:
        if engine.last_event_name == Events.COMPLETED or not self.history:
            return True
        costs = [f.seconds for f in self.history]
        # Every rank must take the same decision: a skipped firing on one rank would leave the others
        # waiting in the measure's collectives.
        if distributed.all_agree(self.budget.allows(self.name, costs)):
            return True
        self.budget.skip(self.name, costs)
        return False

    def _skip(self, state: Any) -> None:
        # Only the count is published: the latest result and scalars stay those of the last firing that ran.
        self.skipped += 1
        state.metrics[f"landscape/{self.name}/skipped"] = float(self.skipped)
        state.landscape_firings[self.name] = Firing(
            epoch=int(state.epoch),
            iteration=int(state.iteration),
            result=None,
            seconds=0.0,
            scalars={"skipped": float(self.skipped)},
            skipped=True,
        )
        logger.debug("%s: skipped at iteration %d to stay within %r", self.name, state.iteration, self.budget)

    def _nan_keys(self) -> list[str]:
        for firing in reversed(self.history):
            if not firing.failed:
                return [k for k in firing.scalars if k != "seconds"]
        return self.expected_keys()

    @property
    def last(self) -> Firing | None:
        """The latest firing, or ``None``."""
        return self.history[-1] if self.history else None

    # -- serialisation --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """History, seed, skip count, budget totals and handler-specific state (directions, eigenvectors...)."""
        return {
            "version": _STATE_VERSION,
            "class": type(self).__name__,
            "name": self.name,
            "seed": self.seed,
            "history": [_firing_to_plain(f) for f in self.history],
            "extra": to_plain(self._extra_state()),
            "skipped": self.skipped,
            "budget": None if self.budget is None else self.budget.state_dict(),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (the handler must be built with the same class)."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
        missing = [k for k in ("version", "class", "history", "extra") if k not in state_dict]
        if missing:
            raise ValueError(f"state_dict lacks keys {missing}: not a landscape handler state")
        if state_dict["class"] != type(self).__name__:
            raise ValueError(f"state_dict belongs to a {state_dict['class']}, not a {type(self).__name__}")
        if int(state_dict["version"]) > _STATE_VERSION:
            raise ValueError(f"state_dict version {state_dict['version']} is newer than this library's")
        if state_dict.get("seed", self.seed) != self.seed:
            logger.info("%s: using the saved seed %s instead of %s", self.name, state_dict["seed"], self.seed)
            self.seed = int(state_dict["seed"])
        self._definitions_seen = []
        self.history = [_firing_from_plain(f) for f in state_dict["history"]]
        for firing in self.history:
            firing.definitions = self._shared_definitions(firing.definitions)
        self.skipped = int(state_dict.get("skipped", 0))
        budget_state = state_dict.get("budget")
        if budget_state is not None:
            # Before attach (the usual order with Checkpoint.load_objects) the budget is not known yet.
            if self.budget is not None:
                self.budget.load_state_dict(budget_state)
            else:
                self._pending_budget_state = budget_state
        self._load_extra_state(from_plain(state_dict["extra"]))

    def __repr__(self) -> str:
        """The handler's class, name and number of firings."""
        return f"{type(self).__name__}(name={self.name!r}, firings={len(self.history)})"


def _firing_to_plain(f: Firing) -> dict[str, Any]:
    return {
        "epoch": f.epoch,
        "iteration": f.iteration,
        "result": to_plain(f.result),
        "seconds": f.seconds,
        "scalars": dict(f.scalars),
        "error": f.error,
        "kind": f.kind,
        "definitions": dict(f.definitions),
    }


def _firing_from_plain(d: Mapping[str, Any]) -> Firing:
    return Firing(
        epoch=int(d["epoch"]),
        iteration=int(d["iteration"]),
        result=from_plain(d["result"]),
        seconds=float(d["seconds"]),
        scalars={k: float(v) for k, v in d["scalars"].items()},
        error=d["error"],
        kind=str(d.get("kind", "")),
        definitions={str(k): str(v) for k, v in dict(d.get("definitions", {})).items()},
    )
