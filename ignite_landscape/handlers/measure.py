"""The generic handler: one measure run on engine events with its options, declared once.

A measure is a frozen options dataclass (validated once, in ``__post_init__``) and a plain function
``measure(model, probe, options, seed, params) -> Result``. :class:`MeasureHandler` runs any such pair:
a subclass names them in two class attributes and inherits a constructor that takes the options'
keywords without re-declaring them, a ``__signature__`` and an ``Args`` section generated from the
options (so ``help()`` lists every option with its default), read-only attributes ``handler.<option>``
and the ``probe`` definition every firing records. :class:`Measure` runs a measure function with an options
object directly, with no class to write.

Example:
    >>> import dataclasses, torch
    >>> from ignite.engine import Engine
    >>> from ignite_landscape import Probe
    >>> from ignite_landscape.results import Result
    >>> @dataclasses.dataclass(frozen=True)
    ... class NormOptions:
    ...     '''Attributes:
    ...         power: the norm's exponent.'''
    ...     power: float = 2.0
    >>> @dataclasses.dataclass
    ... class Norm(Result):
    ...     value: float
    ...     def scalars(self): return {"value": self.value}
    ...     def definitions(self): return {"value": "the weights' norm"}
    >>> class WeightNorm(MeasureHandler):
    ...     '''The norm of the weights.'''
    ...     default_name = "norm"
    ...     options_type = NormOptions
    ...     measure = staticmethod(lambda model, probe, o, seed, params: Norm(
    ...         float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm(o.power))))
    >>> model = torch.nn.Linear(2, 1)
    >>> probe = Probe((torch.randn(4, 2), torch.randn(4, 1)), torch.nn.functional.mse_loss)
    >>> handler = WeightNorm(model, probe, power=1.0)
    >>> handler.power, str(inspect.signature(WeightNorm)).split(", *")[0]
    (1.0, '(model: torch.nn.modules.module.Module, probe: ignite_landscape.probe.Probe')
    >>> trainer = Engine(lambda engine, batch: None)
    >>> _ = handler.attach(trainer)
    >>> _ = trainer.run([0], max_epochs=1)
    >>> sorted(handler.last.definitions)
    ['probe', 'seconds', 'skipped', 'value']
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import re
import typing
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from ignite.engine import Engine
from torch import nn

from ignite_landscape.handlers.base import LandscapeHandler
from ignite_landscape.params import ParamSpace, unwrap_model
from ignite_landscape.probe import Probe

__all__ = ["Measure", "MeasureHandler", "copy_weights", "option_docs", "bulky_fields"]

logger = logging.getLogger(__name__)

# Below this many numbers a field costs too little per firing to be worth a warning, even on a tiny model.
_BULKY_MIN = 1024

# The keywords LandscapeHandler.__init__ takes itself (everything after model and probe).
_BASE = [p for p in inspect.signature(LandscapeHandler.__init__).parameters.values() if p.kind is p.KEYWORD_ONLY]
BASE_KEYWORDS = tuple(p.name for p in _BASE)


def bulky_fields(result: Any, size: int) -> list[str]:
    """The attributes of ``result`` that hold at least ``size`` numbers, counted through lists, tuples and dicts.

    What counts is what the field adds to a history: a parameter-sized tensor, but also a long Python list of
    floats or many small tensors.

    Example:
        >>> class R:
        ...     def __init__(self):
        ...         self.value, self.direction, self.parts = 1.0, torch.zeros(100), [torch.zeros(3), torch.zeros(200)]
        ...         self.curve, self.pieces = [0.5] * 150, {"a": [torch.zeros(60)] * 2}
        >>> bulky_fields(R(), 100)
        ['curve', 'direction', 'parts', 'pieces']
    """
    attributes = vars(result) if hasattr(result, "__dict__") else {}

    def count(value: Any) -> int:
        if isinstance(value, (bool, int, float, complex)):
            return 1
        if isinstance(value, (list, tuple)):
            return sum(count(v) for v in value)
        if isinstance(value, dict):
            return sum(count(v) for v in value.values())
        numbers = value.numel() if isinstance(value, torch.Tensor) else getattr(value, "size", None)
        return numbers if isinstance(numbers, int) else 0

    return sorted(name for name, value in attributes.items() if count(value) >= size)


def copy_weights(buffers: list[torch.Tensor] | None, space: ParamSpace, model: nn.Module) -> list[torch.Tensor]:
    """The selected weights of ``model`` copied into ``buffers`` in place (fresh copies when ``None``).

    One parameter-sized buffer, overwritten at each call (at ``ITERATION_STARTED``), so a firing after
    the optimizer's step knows the step it took; nothing else is touched.
    """
    params = space.tensors(unwrap_model(model))
    with torch.no_grad():
        if buffers is None:
            return [p.detach().clone() for p in params]
        for b, p in zip(buffers, params):
            b.copy_(p)
    return buffers


def option_docs(options_type: type, section: str = "Attributes") -> dict[str, str]:
    """``{name: description}`` from the ``section`` of the docstrings of ``options_type`` and its bases."""
    out: dict[str, str] = {}
    for cls in reversed(options_type.__mro__):
        doc = inspect.cleandoc(cls.__dict__.get("__doc__") or "")
        match = re.search(rf"^{section}:\n((?:[ \t]+.*\n?|\n)+)", doc, flags=re.M)
        if not match:
            continue
        name = None
        for line in match.group(1).splitlines():
            entry = re.match(r"^ {4}(\w+):\s*(.*)$", line)
            if entry:
                name = entry.group(1)
                out[name] = entry.group(2)
            elif name and line.strip():
                out[name] += " " + line.strip()
    return out


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return inspect.Parameter.empty


def _signature(cls: type[MeasureHandler]) -> inspect.Signature:
    options_type = cls.options_type
    assert options_type is not None
    try:
        hints = typing.get_type_hints(options_type)
    except Exception:  # an annotation that cannot be resolved shows as text
        hints = {}
    fields = {f.name: f for f in dataclasses.fields(options_type) if f.init}
    unknown = [n for n in cls.positional if n not in fields]
    if unknown:
        raise TypeError(f"{cls.__name__}.positional names {unknown}, which {options_type.__name__} does not have")
    order = [*cls.positional, *(n for n in fields if n not in cls.positional)]
    P = inspect.Parameter
    params = [
        P("model", P.POSITIONAL_OR_KEYWORD, annotation=nn.Module),
        P("probe", P.POSITIONAL_OR_KEYWORD, annotation=Probe),
    ]
    for n in order:
        kind = P.POSITIONAL_OR_KEYWORD if n in cls.positional else P.KEYWORD_ONLY
        params.append(P(n, kind, default=_default(fields[n]), annotation=hints.get(n, fields[n].type)))
    params += [p.replace(annotation=P.empty) for p in _BASE]
    return inspect.Signature(params)


def _document(cls: type[MeasureHandler], signature: inspect.Signature) -> str:
    """The class docstring with an ``Args:`` section generated from the options."""
    doc = inspect.cleandoc(cls.__dict__.get("__doc__") or "")
    descriptions = option_docs(cls.options_type)  # type: ignore[arg-type]
    lines = ["Args:", "    model: the trained model (never modified).", "    probe: the fixed samples."]
    for p in list(signature.parameters.values())[2:]:
        if p.name in BASE_KEYWORDS:
            continue
        text = descriptions.get(p.name, "see the options.")
        lines.append(f"    {p.name}: {text} Default: ``{p.default!r}``.")
    # The base handler's own keywords, described where they are declared.
    base = option_docs(LandscapeHandler, "Args")
    default_name = cls.__dict__.get("default_name")
    for p in _BASE:
        default = default_name if p.name == "name" and isinstance(default_name, str) else p.default
        lines.append(f"    {p.name}: {base.get(p.name, 'see LandscapeHandler.')} Default: ``{default!r}``.")
    section = "\n".join(lines)
    # Before Raises/Example, where Google-style readers expect the arguments.
    match = re.search(r"^(Raises|Examples?):$", doc, flags=re.M)
    if match:
        return doc[: match.start()] + section + "\n\n" + doc[match.start() :]
    return doc + "\n\n" + section


class _ClassSignature:
    """The constructor's signature on the class; nothing on instances, whose signature is ``__call__``'s.

    Ignite inspects an instance's signature when a handler is added to an engine.
    """

    def __init__(self, signature: inspect.Signature) -> None:
        self.signature = signature

    def __get__(self, obj: Any, owner: type | None = None) -> inspect.Signature | None:
        return self.signature if obj is None else None


class MeasureHandler(LandscapeHandler):
    """A handler that runs one measure with its options on engine events.

    Subclasses set :attr:`options_type` (a frozen dataclass validated in ``__post_init__``; its
    ``Attributes:`` docstring section documents each option), :attr:`measure` (``f(model, probe, options,
    seed, params)``, a ``staticmethod``), :attr:`default_name` and, for options that may be given by
    position, :attr:`positional`. The constructor splits its keywords into the options' fields and the
    base handler's own (``name``, ``params``, ``seed``, ...), builds the options once (``handler.options``;
    each field also reads as ``handler.<field>``), then calls ``options.check_probe(probe)`` and
    ``options.check_space(space)`` where the options define them. Handlers with state of their own
    override :meth:`compute`.

    Raises:
        TypeError: for an unknown keyword or an option of the wrong type (naming it).
        ValueError: for an option that cannot work (naming it).
    """

    options_type: ClassVar[type | None] = None
    measure: ClassVar[Callable[..., Any] | None] = None
    positional: ClassVar[tuple[str, ...]] = ()
    # Attributes of a handler's own state that share an option's name (ModeConnectivity.reference holds the
    # reference weights; the option stays in handler.options).
    state_names: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Give a subclass with ``options_type`` its constructor signature, docstring and option names."""
        super().__init_subclass__(**kwargs)
        if cls.options_type is not None:
            signature = _signature(cls)
            cls.__signature__ = _ClassSignature(signature)  # type: ignore[attr-defined]
            cls.__doc__ = _document(cls, signature)
            names = {f.name for f in dataclasses.fields(cls.options_type)}
            cls._option_names = frozenset(names - set(cls.state_names))

    _option_names: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, model: nn.Module, probe: Probe, *args: Any, **kwargs: Any) -> None:
        if self.options_type is None:
            raise TypeError(f"{type(self).__name__} sets no options_type")
        signature: inspect.Signature = type(self).__signature__  # type: ignore[attr-defined]
        try:
            bound = signature.bind(model, probe, *args, **kwargs).arguments
        except TypeError as e:
            raise TypeError(f"{type(self).__name__}: {e}") from None
        own = {k: bound.pop(k) for k in BASE_KEYWORDS if k in bound}
        del bound["model"], bound["probe"]
        self.options = self.options_type(**bound)
        super().__init__(model, probe, **own)
        self._check_options()

    def _check_options(self) -> None:
        # What the options cannot check alone: that they work with this probe and parameter selection.
        for check, arg in (("check_probe", self.probe), ("check_space", self.space)):
            method = getattr(self.options, check, None)
            if callable(method):
                method(arg)

    def __getattr__(self, name: str) -> Any:
        """Read an option as an attribute (``handler.k`` is ``handler.options.k``)."""
        # Only reached for names not found otherwise: the options read as attributes.
        options = self.__dict__.get("options")
        if options is not None and name in self._option_names:
            return getattr(options, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        """Refuse to set an option (options are read-only); set any other attribute."""
        if name in self._option_names and "options" in self.__dict__:
            raise AttributeError(
                f"{name} is an option of {type(self).__name__} (read-only): build a new handler, or use "
                f"dataclasses.replace(handler.options, {name}=...) for a measure function"
            )
        super().__setattr__(name, value)

    def compute(self, engine: Engine) -> Any:
        """Run :attr:`measure` with the options on the current weights."""
        measure = type(self).measure
        if measure is None:
            raise NotImplementedError(f"{type(self).__name__} sets no measure")
        return measure(self.model, self.probe, self.options, self.seed, self.params)


class Measure(MeasureHandler):
    """Any measure function with its options on engine events, with no handler class to write.

    ``Measure(model, probe, f, options)`` calls ``f(model, probe, options)`` at each firing, passing
    ``seed=`` and ``params=`` as well when ``f`` takes them, and records its result like any handler: the
    result's scalars under ``landscape/<name>/<key>``, its kind, curves and definitions for
    ``LandscapeLogHandler`` and the report.
    The options' fields read as ``handler.<field>``; ``options.check_probe(probe)`` and
    ``options.check_space(space)`` run at construction where the options define them.
    The history keeps each result as returned (its curves may read any field); a result that holds a
    parameter-sized array is logged as a warning, once, since the history would grow by it at every firing.

    Args:
        model: the trained model (never modified).
        probe: the fixed samples.
        measure: ``f(model, probe, options[, seed=, params=]) -> Result``.
        options: the measure's options, passed as they are (typically a frozen dataclass validated in its
            ``__post_init__``).
        **keywords: the base handler's keywords (``name``, ``params``, ``seed``, ``on_error``, ``progress``,
            ``progress_after``, ``guard``; see :class:`~ignite_landscape.handlers.base.LandscapeHandler`). The
            default ``name`` is the function's ``__name__``.

    Raises:
        TypeError: if ``measure`` is not callable, for an unknown keyword, a lambda without ``name=``, or a
            ``seed``/``params`` given for a function that does not take it.

    Example:
        >>> import dataclasses, torch
        >>> from ignite.engine import Engine
        >>> from ignite_landscape import Probe
        >>> from ignite_landscape.results import Result
        >>> @dataclasses.dataclass
        ... class Loss(Result):
        ...     value: float
        ...     def scalars(self): return {"value": self.value}
        >>> def probe_loss(model, probe, options):
        ...     return Loss(probe.evaluate(model).loss)
        >>> model = torch.nn.Linear(2, 1)
        >>> probe = Probe((torch.randn(4, 2), torch.randn(4, 1)), torch.nn.functional.mse_loss)
        >>> trainer = Engine(lambda engine, batch: None)
        >>> _ = Measure(model, probe, probe_loss, None).attach(trainer)
        >>> _ = trainer.run([0], max_epochs=1)
        >>> sorted(k for k in trainer.state.metrics if k.startswith("landscape/probe_loss/"))
        ['landscape/probe_loss/seconds', 'landscape/probe_loss/value']
    """

    def __init__(
        self, model: nn.Module, probe: Probe, measure: Callable[..., Any], options: Any = None, **keywords: Any
    ):
        if not callable(measure):
            raise TypeError(f"measure must be a function f(model, probe, options), got {type(measure).__name__}")
        unknown = sorted(set(keywords) - set(BASE_KEYWORDS))
        if unknown:
            raise TypeError(f"Measure got unknown keywords {unknown}; it takes {list(BASE_KEYWORDS)}")
        if keywords.get("name") is None:
            name = getattr(measure, "__name__", "")
            if not name.isidentifier():
                raise TypeError(f"name: give Measure a name= for a measure without a plain __name__ ({name!r})")
            keywords["name"] = name
        LandscapeHandler.__init__(self, model, probe, **keywords)
        self.function = measure
        try:
            accepted = inspect.signature(measure).parameters
        except (TypeError, ValueError):  # a builtin without a signature: model, probe, options only
            accepted = {}
        any_keyword = any(p.kind is p.VAR_KEYWORD for p in accepted.values())
        self._passed = tuple(k for k in ("seed", "params") if any_keyword or k in accepted)
        # A seed or a parameter selection the function never sees would be silently ignored.
        ignored = [k for k in ("seed", "params") if keywords.get(k) is not None and k not in self._passed]
        if ignored:
            raise TypeError(f"{ignored[0]}: {keywords['name']} takes no {ignored[0]}= keyword, so it cannot use it")
        if dataclasses.is_dataclass(options) and not isinstance(options, type):
            taken = set(self.__dict__) | set(dir(type(self)))
            self._option_names = frozenset(f.name for f in dataclasses.fields(options)) - taken
        self.options = options
        self._check_options()
        self._warned_bulky = False

    def compute(self, engine: Engine) -> Any:
        """Run the measure function with the options on the current weights."""
        kwargs = {k: getattr(self, k) for k in self._passed}
        return self.function(self.model, self.probe, self.options, **kwargs)

    def _history_copy(self, result: Any) -> Any:
        # The result is the user's and its curves may read any field, so it is kept as returned; but a
        # parameter-sized array in it would make the history grow by P numbers a firing: say so, once.
        if not self._warned_bulky:
            bulky = bulky_fields(result, max(self.space.numel, _BULKY_MIN))
            if bulky:
                self._warned_bulky = True
                logger.warning(
                    "Measure %r keeps every firing's result, and this one holds parameter-sized arrays in %s "
                    "(%d parameters): the history grows by that much a firing; return a compact result "
                    "(scalars and small curves) and keep what the next firing needs in the options or a closure",
                    self.name,
                    ", ".join(bulky),
                    self.space.numel,
                )
        return result
