"""Handler for linear mode connectivity between the current weights and a reference.

The reference is the weights at attach time (``"init"``, the default), the weights at the previous
firing (``"previous"``: how far apart, in loss, consecutive snapshots are), or fixed weights given
as a state dict or a checkpoint file. It is part of :meth:`~ModeConnectivity.state_dict`, so a
resumed run compares against the same weights.

Example:
    >>> import torch
    >>> from ignite.engine import Engine
    >>> from ignite_landscape import Probe
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
    >>> x, y = torch.randn(24, 3), torch.randint(0, 2, (24,))
    >>> idle = Engine(lambda engine, batch: None)  # a trainer that never steps
    >>> _ = ModeConnectivity(net, Probe((x, y), torch.nn.CrossEntropyLoss()), steps=5).attach(idle)
    >>> _ = idle.run([0], max_epochs=1)
    >>> metrics = idle.state.metrics
    >>> metrics["landscape/connectivity/loss_barrier"]  # the weights did not move
    0.0
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine
from torch import nn

from ignite_landscape.handlers.measure import MeasureHandler
from ignite_landscape.measures.connectivity import InterpolationOptions, measure_interpolate
from ignite_landscape.params import strip_wrapper_prefixes, unwrap_model
from ignite_landscape.probe import Probe

__all__ = ["ModeConnectivity", "ModeConnectivityOptions", "REFERENCES"]

REFERENCES = ("init", "previous")


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in unwrap_model(model).state_dict().items()}


@dataclass(frozen=True)
class ModeConnectivityOptions(InterpolationOptions):
    """The options of :class:`ModeConnectivity`: those of :func:`~ignite_landscape.interpolate` and the reference.

    Attributes:
        reference: ``"init"`` (weights at attach), ``"previous"`` (weights at the previous firing; the
            weights at attach for the first), a state dict of the model, or the path of a file saved with
            ``torch.save`` holding one (or an Ignite checkpoint: see ``reference_key``).
        reference_key: the entry of a checkpoint file that holds the model (default ``"model"`` when the
            file is not a plain state dict).
    """

    reference: str | os.PathLike | Mapping[str, torch.Tensor] = "init"
    reference_key: str | None = None

    def __post_init__(self) -> None:
        """Check the interpolation options and that ``reference`` is a path, a state dict or a keyword."""
        super().__post_init__()
        ref = self.reference
        if not isinstance(ref, (str, os.PathLike, Mapping)):
            raise TypeError(f"reference must be 'init', 'previous', a state dict or a path, got {type(ref).__name__}")
        if isinstance(ref, (str, os.PathLike)) and ref not in REFERENCES and not Path(ref).is_file():
            raise ValueError(f"reference must be 'init', 'previous', a state dict or an existing file, got {ref!r}")
        if self.reference_key is not None:
            if not isinstance(self.reference_key, str):
                raise TypeError(f"reference_key must be a string or None, got {type(self.reference_key).__name__}")
            if isinstance(ref, Mapping) or ref in REFERENCES:
                raise ValueError("reference_key names an entry of a reference file: give reference= a path")


class ModeConnectivity(MeasureHandler):
    """Loss and error along the straight line from a reference to the current weights.

    Scalars: ``loss_barrier``, ``loss_a`` (reference), ``loss_b`` (current), ``max_loss`` (and
    ``error_barrier``, ``error_a``, ``error_b`` for classification).

    The barrier is measured against the chord between the end values (Entezari et al. 2022): with
    ``reference="previous"`` between the weights of consecutive firings, with ``"init"`` between the
    weights at attach time and now. ``bn_loader`` batches are this rank's share under ignite.distributed
    (the statistics are averaged over all ranks' batches).

    Raises:
        TypeError, ValueError: for an unknown reference kind, reference weights that do not fit the model,
            or ``steps``/``bn_batches``/``bn_loader`` that cannot work.
    """

    default_name = "connectivity"
    options_type = ModeConnectivityOptions
    positional = ("reference", "steps")
    state_names = ("reference",)

    def __init__(self, model: nn.Module, probe: Probe, *args: Any, **kwargs: Any) -> None:
        super().__init__(model, probe, *args, **kwargs)
        reference = self.options.reference
        self.reference: dict[str, torch.Tensor] | None = None
        if isinstance(reference, str) and reference in REFERENCES:
            self.reference_kind = reference
        elif isinstance(reference, Mapping):
            self.reference_kind = "given"
            self.reference = self._checked(reference, "reference")
        else:
            path = Path(reference)
            loaded = torch.load(path, map_location="cpu", weights_only=True)
            self.reference_kind = "given"
            key = self.options.reference_key
            self.reference = self._checked(self._extract(loaded, key, path), f"reference file {path}")

    def _extract(self, loaded: Any, key: str | None, path: Path) -> Mapping[str, torch.Tensor]:
        if not isinstance(loaded, Mapping):
            raise ValueError(f"reference file {path} does not hold a dict")
        if key is not None:
            if key not in loaded:
                raise ValueError(f"reference_key={key!r} is not in {path} (keys: {sorted(loaded)[:10]})")
            return loaded[key]
        own = unwrap_model(self.model).state_dict()
        if all(k in strip_wrapper_prefixes(loaded, own) for k in own):
            return loaded
        if "model" in loaded and isinstance(loaded["model"], Mapping):
            return loaded["model"]
        raise ValueError(f"{path} holds neither the model's state dict nor a 'model' entry; pass reference_key=")

    def _checked(self, state: Mapping[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
        own = unwrap_model(self.model).state_dict()
        state = strip_wrapper_prefixes(state, own)  # saved from a DDP or torch.compile wrapper
        missing = [k for k in own if k not in state]
        extra = [k for k in state if k not in own]
        if missing or extra:
            raise ValueError(f"{what} does not match the model: missing {missing[:5]}, unexpected {extra[:5]}")
        out = {}
        for k, ref in own.items():
            t = state[k]
            if not isinstance(t, torch.Tensor) or t.shape != ref.shape:
                shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"{what}[{k!r}] is {shape}, the model's is {tuple(ref.shape)}")
            out[k] = t.detach().to(device=ref.device, dtype=ref.dtype).clone()
        return out

    def expected_keys(self) -> list[str]:
        """``loss_barrier``, recorded as NaN when the first firing fails."""
        return ["loss_barrier"]

    def definitions(self) -> dict[str, str]:
        """The base definitions and ``reference``: which weights a (α = 0) of the path are."""
        a = {
            "init": "a = the weights when the handler was attached, b = the weights at the firing",
            "previous": "a = the weights at the previous firing, b = the weights at this one",
            "given": "a = the reference weights given to the handler, b = the weights at the firing",
        }[self.reference_kind]
        return {**super().definitions(), "reference": a}

    def _on_attach(self, engine: Engine) -> None:
        if self.reference is None:
            self.reference = _snapshot(self.model)

    def compute(self, engine: Engine) -> Any:
        """Interpolate from the reference weights to the current ones (then move a ``"previous"`` reference on)."""
        if self.reference is None:  # fired without attach: the reference is now
            self.reference = _snapshot(self.model)
        result = measure_interpolate(
            self.model, self.probe, self.options, weights_a=self.reference, weights_b=self.model
        )
        if self.reference_kind == "previous":
            self.reference = _snapshot(self.model)
        return result

    def _extra_state(self) -> dict[str, Any]:
        return {"reference": self.reference, "reference_kind": self.reference_kind}

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        ref = state.get("reference")
        self.reference = None if ref is None else self._checked(ref, "saved reference")
