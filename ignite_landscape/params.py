"""Parameter selection and flat <-> named vector conversion.

Every algorithm in :mod:`ignite_landscape.linalg` works on one flat vector; models hold many named
tensors. This module is the single place that converts between the two, so the order of the
entries of a flat vector is always the order of :class:`ParamSpace.names`.

Example:
    >>> import torch
    >>> model = torch.nn.Linear(3, 2)
    >>> space = ParamSpace.from_model(model)
    >>> space.numel
    8
    >>> vec = space.flatten(dict(model.named_parameters()))
    >>> space.unflatten(vec)["weight"].shape
    torch.Size([2, 3])
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ignite_landscape.execution import is_compiled

__all__ = ["ParamSpace", "model_device", "strip_wrapper_prefixes", "unwrap_model"]


def unwrap_model(model: nn.Module) -> nn.Module:
    """Return the module that holds the weights of ``model``.

    ``DistributedDataParallel`` and ``DataParallel`` wrappers are looked through, so probes run on
    the plain module and never trigger the wrapper's gradient hooks or buffer broadcasts. A
    ``torch.compile`` wrapper is looked through too: its original module holds the same parameter
    objects and runs eagerly, which Hessian-vector products need (compiled graphs have no double
    backward). Parameter names are those of the unwrapped module (no ``module.``/``_orig_mod.`` prefix).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, torch.jit.ScriptModule):
        # Probes swap tensors into the modules (torch.func.functional_call), which TorchScript forbids.
        raise TypeError(
            "model: a TorchScript module (torch.jit.script/trace) cannot be probed; pass the eager module it was "
            "made from (torch.compile'd modules work)"
        )
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif is_compiled(model) and isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def strip_wrapper_prefixes(state: Mapping[str, Any], expected: Iterable[str]) -> dict[str, Any]:
    """``state`` keyed as the unwrapped model names its entries.

    A state dict saved from a ``DistributedDataParallel``/``DataParallel`` wrapper or a ``torch.compile``
    wrapper has ``module.``/``_orig_mod.`` in front of every key. When removing those prefixes turns the
    keys into exactly the ``expected`` ones, the stripped dict is returned; otherwise ``state`` as is
    (the caller's own check then names what is missing).
    """
    wanted = set(expected)
    if set(state) == wanted:
        return dict(state)

    def strip(key: str) -> str:
        while key not in wanted and key.startswith(("module.", "_orig_mod.")):
            key = key.split(".", 1)[1]
        return key

    stripped = {strip(k): v for k, v in state.items()}
    return stripped if len(stripped) == len(state) and set(stripped) == wanted else dict(state)


def model_device(model: nn.Module) -> torch.device:
    """The one device holding every parameter of ``model``.

    Raises:
        ValueError: if the model has no parameters or they are spread over several devices (a
            pipeline- or tensor-parallel model): a probe evaluates the model on one device.
    """
    devices = {p.device for p in unwrap_model(model).parameters()}
    if not devices:
        raise ValueError("model has no parameters")
    if len(devices) > 1:
        names = ", ".join(sorted(str(d) for d in devices))
        raise ValueError(
            f"model: its parameters are on several devices ({names}); the probe evaluates a model held on one "
            "device (models split over several devices are not supported)"
        )
    return devices.pop()


ParamsArg = None | str | nn.Module | Iterable[str] | Iterable[nn.Parameter]


def _unprefixed(wrapped: nn.Module, name: str, named: Mapping[str, torch.Tensor]) -> str:
    """``name`` as the unwrapped model calls it, when it was written with a wrapper's prefix."""
    if wrapped is unwrap_model(wrapped) or any(n == name or n.startswith(name + ".") for n in named):
        return name
    while name.startswith(("module.", "_orig_mod.")):
        name = name.split(".", 1)[1]
    return name


@dataclass(frozen=True)
class ParamSpace:
    """An ordered set of named parameters of one model: the coordinates a flat vector refers to.

    Attributes:
        names: parameter names, in the order used by flat vectors.
        shapes: shape of each parameter.
        numels: number of entries of each parameter.
    """

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    numels: tuple[int, ...]

    @classmethod
    def from_model(cls, model: nn.Module, params: ParamsArg = None) -> ParamSpace:
        """Select trainable parameters of ``model``.

        Args:
            model: the model (DDP/DataParallel wrappers are unwrapped).
            params: which parameters. ``None``: every parameter with ``requires_grad``. A string:
                the parameters whose name equals it or starts with ``"<string>."`` (a submodule
                name such as ``"conv1"``). A submodule of ``model``: its parameters. An iterable of
                names or of ``nn.Parameter`` objects: exactly those.

        Raises:
            ValueError: if the selection is empty or names something ``model`` does not have.
            TypeError: if ``params`` is of an unsupported type.
        """
        wrapped = model
        model = unwrap_model(model)
        named = dict(model.named_parameters())
        if isinstance(params, str):
            params = _unprefixed(wrapped, params, named)
        elif isinstance(params, Iterable) and not isinstance(params, nn.Module):
            params = [_unprefixed(wrapped, i, named) if isinstance(i, str) else i for i in params]
        if params is None:
            names = [n for n, p in named.items() if p.requires_grad]
            if not names:
                raise ValueError("model has no trainable parameters (none with requires_grad=True)")
        elif isinstance(params, str):
            names = [n for n in named if n == params or n.startswith(params + ".")]
            if not names:
                raise ValueError(f"params={params!r} matches no parameter of the model")
        elif isinstance(params, nn.Module):
            ids = {id(p) for p in params.parameters()}
            names = [n for n, p in named.items() if id(p) in ids]
            if not names:
                raise ValueError("params: the given module holds no parameter of the model")
        elif isinstance(params, Iterable):
            items = list(params)
            if not items:
                raise ValueError("params is empty")
            if all(isinstance(i, str) for i in items):
                missing = [i for i in items if i not in named]
                if missing:
                    raise ValueError(f"params names unknown parameters: {missing}")
                wanted = set(items)
            elif all(isinstance(i, torch.Tensor) for i in items):
                by_id = {id(p): n for n, p in named.items()}
                if any(id(i) not in by_id for i in items):
                    raise ValueError("params holds a tensor that is not a parameter of the model")
                wanted = {by_id[id(i)] for i in items}
            else:
                raise TypeError("params must be names or parameters, not a mix of other objects")
            names = [n for n in named if n in wanted]
        else:
            raise TypeError(f"params must be None, a name, a module or an iterable, got {type(params).__name__}")
        return cls(
            names=tuple(names),
            shapes=tuple(named[n].shape for n in names),
            numels=tuple(named[n].numel() for n in names),
        )

    @property
    def numel(self) -> int:
        """Total number of scalar coordinates."""
        return sum(self.numels)

    def tensors(self, model: nn.Module) -> list[torch.Tensor]:
        """The model's own parameter tensors, in this space's order."""
        named = dict(unwrap_model(model).named_parameters())
        return [named[n] for n in self.names]

    def flatten(self, tensors: Mapping[str, torch.Tensor] | Iterable[torch.Tensor]) -> torch.Tensor:
        """Concatenate tensors (a name mapping or a sequence in this order) into one flat vector."""
        if isinstance(tensors, Mapping):
            missing = [n for n in self.names if n not in tensors]
            if missing:
                raise ValueError(f"tensors lacks parameters {missing}")
            seq = [tensors[n] for n in self.names]
        else:
            seq = list(tensors)
        if len(seq) != len(self.names):
            raise ValueError(f"expected {len(self.names)} tensors, got {len(seq)}")
        for name, shape, t in zip(self.names, self.shapes, seq):
            if t.shape != shape:
                raise ValueError(f"tensor for {name!r} has shape {tuple(t.shape)}, expected {tuple(shape)}")
        return torch.cat([t.reshape(-1) for t in seq])

    def split(self, vec: torch.Tensor) -> list[torch.Tensor]:
        """Views of a flat vector, one per parameter, with the parameter shapes."""
        if vec.dim() != 1 or vec.numel() != self.numel:
            raise ValueError(f"expected a flat vector of {self.numel} entries, got shape {tuple(vec.shape)}")
        return [chunk.view(shape) for chunk, shape in zip(vec.split(self.numels), self.shapes)]

    def unflatten(self, vec: torch.Tensor) -> dict[str, torch.Tensor]:
        """A flat vector as a ``{name: tensor}`` dict (views into ``vec``)."""
        return dict(zip(self.names, self.split(vec)))

    def module_groups(self) -> dict[str, list[str]]:
        """Parameter names grouped by the submodule that owns them (``"conv1.weight"`` -> ``"conv1"``)."""
        groups: dict[str, list[str]] = {}
        for name in self.names:
            owner = name.rsplit(".", 1)[0] if "." in name else ""
            groups.setdefault(owner, []).append(name)
        return groups
