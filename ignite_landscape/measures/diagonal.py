"""The exact Hessian diagonal (hence the exact trace and per-layer traces) in one extended backward pass.

For a network that is a chain of standard layers — ``Linear``, ``Conv1d/2d/3d``, max/average pooling,
``Flatten``, ``ZeroPad2d``, ``Dropout`` off, and elementwise activations (``ReLU``, ``LeakyReLU``, ``Tanh``,
``Sigmoid``, ``LogSigmoid``, ``ELU``, ``SELU``) — under a mean-reduced cross-entropy or squared-error loss,
BackPACK's ``DiagHessian`` (Dangel, Kunstner & Hennig 2020) backpropagates a symmetric factorisation of
the loss's output Hessian *and* the second-derivative terms of every elementwise activation, which
gives ``diag(H)`` exactly, not an estimate. (For piecewise-linear networks those residual terms vanish
almost everywhere and ``H`` equals the Gauss-Newton matrix there.) It was measured against the dense
float64 Hessian diagonal (agreement to round-off) and is the fastest route found on the digits CNN, so
this module wraps it rather than re-deriving every layer's backward rules; BackPACK is an optional
dependency (``pip install "ignite_landscape[exact]"``).

The wrapper never touches the user's model: it works on a deep copy (kept, weakly keyed by the model,
and refreshed with the current weights at each call while the model's structure is unchanged: one extra
copy of the model in memory) whose forward pass is checked, on every batch, to be exactly the chain of
its leaf modules (each leaf's input is the previous leaf's output and the model returns the last leaf's
output). Anything else — a functional op between modules, an unsupported layer, hooks, BatchNorm, a loss
it cannot identify — is refused with an :class:`ExactUnsupportedError` naming the reason, because
BackPACK would otherwise skip the op silently.

Example:
    >>> import torch
    >>> from ignite_landscape import Probe
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()
    >>> x, y = torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 2, (8,))
    >>> probe = Probe((x, y), torch.nn.functional.cross_entropy)
    >>> diag = hessian_diagonal(model, probe)  # doctest: +SKIP
    >>> diag.diagonal.shape, sorted(diag.layer_traces)  # doctest: +SKIP
    (torch.Size([26]), ['0', '2'])
"""

from __future__ import annotations

import copy
import warnings
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ignite_landscape import distributed
from ignite_landscape.params import ParamsArg, ParamSpace
from ignite_landscape.probe import Probe, ProbeSession
from ignite_landscape.results import Result

__all__ = [
    "EXACT_EXTRA",
    "ExactUnsupportedError",
    "HessianDiagonal",
    "diagonal_result",
    "exact_diagonal_available",
    "hessian_diagonal",
    "session_hessian_diagonal",
]

EXACT_EXTRA = "exact"

_ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.LogSigmoid, nn.ELU, nn.SELU)
# AvgPool with float64 inputs fails inside BackPACK 1.7 (it builds a float32 transposed convolution),
# so average pooling is accepted only in float32; max pooling works in both.
_AVG_POOLS = (
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
)
_SUPPORTED = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.Flatten,
    nn.ZeroPad2d,
    nn.Dropout,
    *_ACTIVATIONS,
    *_AVG_POOLS,
)


class ExactUnsupportedError(ValueError):
    """The exact diagonal cannot be computed for this model, loss or probe (the message says why)."""


@dataclass
class HessianDiagonal(Result):
    """The exact diagonal of the probe-loss Hessian.

    Attributes:
        diagonal: ``diag(H)`` as one flat vector in the order of :attr:`space` (parameter-sized: handlers
            keep only :attr:`layer_traces` in their history).
        space: the parameters spanning the Hessian.
        value: the trace ``Σ diag(H)``.
        layer_traces: trace of each module's diagonal block, keyed by module name (``""`` for the root).
        method: always ``"exact"``.
    """

    kind = "diagonal"

    diagonal: torch.Tensor
    space: ParamSpace
    value: float
    layer_traces: dict[str, float]
    method: str = "exact"

    @property
    def trace(self) -> float:
        """``tr(H)``, the sum of the diagonal."""
        return self.value

    def as_dict(self) -> dict[str, torch.Tensor]:
        """The diagonal as ``{parameter name: tensor}`` (views into :attr:`diagonal`)."""
        return self.space.unflatten(self.diagonal)

    def scalars(self) -> dict[str, float]:
        """Named scalars: ``value`` (the trace), ``max``, ``min`` and ``mean_eigenvalue``."""
        return {
            "value": self.value,
            "max": float(self.diagonal.max()),
            "min": float(self.diagonal.min()),
            "mean_eigenvalue": self.value / max(self.space.numel, 1),
        }

    def definitions(self) -> dict[str, str]:
        """One sentence per scalar key, with the number of parameters."""
        p = self.space.numel
        exact = f"the exact diagonal of the probe-loss Hessian over its {p} parameters (BackPACK)"
        return {
            "value": f"tr(H), the sum of {exact}",
            "max": f"largest entry of {exact}",
            "min": f"smallest entry of {exact}",
            "mean_eigenvalue": f"value / {p}: the mean eigenvalue of the Hessian",
        }


def exact_diagonal_available() -> bool:
    """Whether BackPACK (the ``exact`` extra) is installed."""
    try:
        import backpack  # noqa: F401
    except ImportError:
        return False
    return True


def _import_backpack() -> tuple[Any, Any, Any]:
    try:
        from backpack import backpack, extend
        from backpack.extensions import DiagHessian
    except ImportError as exc:
        raise ImportError(
            "the exact Hessian diagonal needs BackPACK: pip install 'ignite_landscape[exact]' "
            "(or pip install backpack-for-pytorch)"
        ) from exc
    return backpack, extend, DiagHessian


def _loss_module(loss_fn: Any, targets: Any) -> nn.Module:
    """The BackPACK-supported loss module equal to ``loss_fn`` (mean reduction), or a refusal."""
    if loss_fn is F.cross_entropy or (
        isinstance(loss_fn, nn.CrossEntropyLoss)
        and loss_fn.weight is None
        and loss_fn.reduction == "mean"
        and loss_fn.label_smoothing == 0.0
    ):
        ignore = -100 if loss_fn is F.cross_entropy else loss_fn.ignore_index
        if not isinstance(targets, torch.Tensor) or targets.dtype.is_floating_point:
            raise ExactUnsupportedError("exact diagonal: cross-entropy is supported with integer class targets only")
        if bool((targets == ignore).any()):
            raise ExactUnsupportedError("exact diagonal: targets equal to ignore_index are not supported")
        return nn.CrossEntropyLoss()
    if loss_fn is F.mse_loss or (isinstance(loss_fn, nn.MSELoss) and loss_fn.reduction == "mean"):
        return nn.MSELoss()
    raise ExactUnsupportedError(
        "exact diagonal: loss_fn must be torch.nn.functional.cross_entropy / nn.CrossEntropyLoss() (no class "
        "weights or label smoothing) or mse_loss / nn.MSELoss() with mean reduction, got "
        f"{getattr(loss_fn, '__name__', type(loss_fn).__name__)}"
    )


def _has_hooks(module: nn.Module) -> bool:
    return any(
        getattr(module, attr, None)
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    )


def _check_modules(model: nn.Module, space: ParamSpace, train_mode: bool, dtype: torch.dtype) -> None:
    selected = set(space.names)
    for name, module in model.named_modules():
        if _has_hooks(module):
            raise ExactUnsupportedError(f"exact diagonal: module {name or type(module).__name__!r} has hooks")
        own = [f"{name}.{p}" if name else p for p, _ in module.named_parameters(recurse=False)]
        leaf = next(module.children(), None) is None
        if not leaf:
            if any(p in selected for p in own):
                raise ExactUnsupportedError(
                    f"exact diagonal: container module {name!r} ({type(module).__name__}) holds parameters itself"
                )
            continue
        if isinstance(module, nn.Identity) and type(module) is nn.Identity:
            continue
        if type(module) not in _SUPPORTED:
            raise ExactUnsupportedError(
                f"exact diagonal: layer {name!r} of type {type(module).__name__} is not supported (supported: "
                "Linear, Conv1d/2d/3d, max/avg pooling, Flatten, ZeroPad2d, Dropout, ReLU, LeakyReLU, Tanh, "
                "Sigmoid, LogSigmoid, ELU, SELU); use method='hutch++'"
            )
        if isinstance(module, _AVG_POOLS) and dtype != torch.float32:
            raise ExactUnsupportedError(
                f"exact diagonal: average pooling ({name!r}) is supported in float32 only, the model is {dtype}"
            )
        if isinstance(module, nn.Dropout) and train_mode and module.p > 0:
            raise ExactUnsupportedError(
                f"exact diagonal: dropout {name!r} is active in model_mode='train' (the loss is random)"
            )


def _signature(t: Any) -> tuple[Any, ...] | None:
    """What identifies the data a module received or produced: storage address, layout and version.

    BackPACK's full backward hooks hand every module new tensor objects that alias the same storage, so
    object identity cannot follow the chain; an operation between two modules shows up as other storage
    (a new tensor), another shape or stride (a view) or a bumped version counter (an in-place op).
    """
    if not isinstance(t, torch.Tensor):
        return None
    return (t.data_ptr(), tuple(t.shape), tuple(t.stride()), t._version, t.dtype)


class _Chain:
    """Forward hooks on the leaf modules of a (copied) model that record what each call received and returned."""

    def __init__(self, model: nn.Module) -> None:
        self.calls: list[tuple[str, list[Any], Any]] = []
        self.handles = []
        for name, module in model.named_modules():
            if next(module.children(), None) is None:
                self.handles.append(module.register_forward_hook(self._hook(name)))

    def _hook(self, name: str) -> Any:
        def record(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            self.calls.append((name, [_signature(i) for i in inputs], _signature(output)))

        return record

    def check(self, x: Any, out: Any) -> None:
        """Raise unless the forward pass from ``x`` to ``out`` was exactly the chain of recorded leaves."""
        calls, self.calls = self.calls, []
        if not calls:
            raise ExactUnsupportedError("exact diagonal: the model called no leaf module")
        names = [c[0] for c in calls]
        if len(set(names)) != len(names):
            raise ExactUnsupportedError("exact diagonal: a module is called more than once in the forward pass")
        prev = _signature(x)
        for name, inputs, output in calls:
            if len(inputs) != 1 or inputs[0] is None or inputs[0] != prev:
                raise ExactUnsupportedError(
                    f"exact diagonal: the input of module {name!r} is not the output of the module before it "
                    "(the forward applies operations outside modules, or is not a chain)"
                )
            prev = output
        if _signature(out) != prev:
            raise ExactUnsupportedError(
                "exact diagonal: the model's output is not the output of its last module (it applies an "
                "operation after it)"
            )

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


@contextmanager
def _quiet() -> Iterator[None]:
    # BackPACK relies on full backward hooks on modules whose inputs need no gradient (the first
    # layer); torch warns about that case every call although the hooks do what BackPACK expects.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        yield


# One BackPACK-extended copy per model, reused while the model's structure is unchanged (only its weights and
# buffers are refreshed): a deep copy and its extension cost as much as BackPACK's own pass on a small batch.
# Weakly keyed: the copy goes when the model does.
_COPIES: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[Any, ...], nn.Module]] = weakref.WeakKeyDictionary()


def _structure(model: nn.Module) -> tuple[Any, ...]:
    """Everything about ``model`` a cached copy must agree with except the values of its tensors."""
    return tuple(
        (
            name,
            type(m),
            m.extra_repr(),
            tuple((n, p.shape, p.dtype, p.device) for n, p in m.named_parameters(recurse=False)),
            tuple((n, b.shape, b.dtype, b.device) for n, b in m.named_buffers(recurse=False)),
        )
        for name, m in model.named_modules()
    )


def _extended_copy(model: nn.Module, extend: Any) -> nn.Module:
    """A copy of ``model`` with BackPACK's hooks on its leaf layers and ``model``'s current weights and buffers."""
    structure = _structure(model)
    cached = _COPIES.get(model)
    if cached is not None and cached[0] == structure:
        copied = cached[1]
        with torch.no_grad():
            for mine, theirs in zip(copied.parameters(), model.parameters()):
                mine.copy_(theirs)
            for mine, theirs in zip(copied.buffers(), model.buffers()):
                mine.copy_(theirs)
        return copied
    try:
        copied = copy.deepcopy(model)
    except Exception as exc:  # a model holding something uncopyable: refuse rather than touch the original
        raise ExactUnsupportedError(f"exact diagonal: the model cannot be copied ({exc})") from exc
    for p in copied.parameters():
        p.grad = None
    for module in copied.modules():
        if next(module.children(), None) is None and type(module) is not nn.Identity:
            if hasattr(module, "inplace"):
                module.inplace = False  # BackPACK reads each module's saved input and output after the pass
            extend(module)
    _COPIES[model] = (structure, copied)
    return copied


def session_hessian_diagonal(s: ProbeSession) -> torch.Tensor:
    """``diag(H)`` of the session's probe loss, flat in the order of ``s.space``.

    Raises:
        ImportError: if BackPACK is not installed (the ``exact`` extra).
        ExactUnsupportedError: if the model, loss or probe is outside what the exact method supports.
    """
    probe = s.probe
    if getattr(probe, "output_transform", None) is not None:
        raise ExactUnsupportedError("exact diagonal: probes with an output_transform are not supported")
    bp_context, extend, DiagHessian = _import_backpack()
    train_mode = probe.model_mode == "train"
    _check_modules(s.model, s.space, train_mode, s.dtype)
    loss_module = extend(_loss_module(probe.loss_fn, probe.targets))
    batches = probe.batches()
    if any(not isinstance(x, torch.Tensor) for x, _, _ in batches):
        raise ExactUnsupportedError("exact diagonal: the model input must be one tensor")
    model = _extended_copy(s.model, extend)
    model.train(train_mode)
    selected = set(s.space.names)
    named = dict(model.named_parameters())
    for n, p in named.items():
        p.requires_grad_(n in selected)
    leaves = [named[n] for n in s.space.names]
    total = float(probe.num_samples)
    diag = [torch.zeros_like(p, dtype=torch.float64) for p in leaves]
    # Every batch's forward pass is checked to be the chain of leaves before its backward runs.
    chain = _Chain(model)
    try:
        with distributed.Lockstep() as step, torch.enable_grad(), _quiet():
            for x, y, n in batches:
                try:
                    out = model(x)
                    chain.check(x, out)
                    loss = loss_module(out, y)
                    probe.check_loss(loss)
                    with bp_context(DiagHessian()):
                        loss.backward()
                except (RuntimeError, NotImplementedError) as exc:
                    # e.g. an in-place op on a module's output, which BackPACK's hooks forbid
                    raise ExactUnsupportedError(f"exact diagonal: BackPACK cannot run this model ({exc})") from exc
                for d, p in zip(diag, leaves):
                    if hasattr(p, "diag_h"):
                        d += p.diag_h.detach().double() * (n / total)
                        del p.diag_h
                    p.grad = None
    finally:
        chain.remove()
    flat = torch.cat([d.reshape(-1) for d in diag])
    (flat,) = step.all_reduce(flat)
    return flat.to(s.dtype)


def hessian_diagonal(model: nn.Module, probe: Probe, *, params: ParamsArg = None) -> HessianDiagonal:
    """The exact diagonal of the probe-loss Hessian, its trace and per-layer traces.

    Args:
        model: the model; never modified (the computation runs on a copy).
        probe: the fixed samples and loss.
        params: restrict to a subset of parameters (see :class:`~ignite_landscape.ParamSpace`).

    Returns:
        A :class:`HessianDiagonal`.

    Raises:
        ImportError: if BackPACK is not installed (``pip install "ignite_landscape[exact]"``).
        ExactUnsupportedError: (a ``ValueError``) for a layer, loss or forward pass outside the supported set.
    """
    with probe.session(model, params) as s:
        flat = session_hessian_diagonal(s)
        space = s.space
    return diagonal_result(flat, space)


def diagonal_result(flat: torch.Tensor, space: ParamSpace) -> HessianDiagonal:
    """The :class:`HessianDiagonal` of a flat diagonal (per-layer traces from the module groups of ``space``)."""
    layer_traces: dict[str, float] = {}
    per_param = dict(zip(space.names, (float(c.double().sum()) for c in flat.split(space.numels))))
    for owner, names in space.module_groups().items():
        layer_traces[owner] = sum(per_param[n] for n in names)
    return HessianDiagonal(diagonal=flat, space=space, value=float(flat.double().sum()), layer_traces=layer_traces)
