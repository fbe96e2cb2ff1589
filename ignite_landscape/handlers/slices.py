"""Handler for 1D and 2D loss slices through the current weights along fixed directions.

The raw directions are drawn once, at the first firing (Gaussian draws from ``seed``, or the top
Hessian eigenvectors of that moment), and kept, so slices at different epochs are taken along the
same draw and can be overlaid. At every firing the raw draw is normalised afresh against the
*current* weights (filter normalisation by default), as Li et al. (2018) normalise relative to the
centre of the plot: when weight norms drift (weight decay, BatchNorm), each slice is still
filter-normalised, and it is exactly the slice along ``random_directions(model, dims, seed=seed)``
at that moment. The raw draw is part of :meth:`~LossSlice.state_dict`, so a resumed run keeps it too.
Explicit directions are used as given.

Example:
    >>> import torch
    >>> from ignite.engine import Engine
    >>> from ignite_landscape import Probe
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> probe = Probe((torch.randn(16, 4), torch.randint(0, 3, (16,))), torch.nn.functional.cross_entropy)
    >>> trainer = Engine(lambda engine, batch: None)
    >>> handler = LossSlice(model, probe, dims=2, steps=5)
    >>> _ = handler.attach(trainer)
    >>> _ = trainer.run([0], max_epochs=1)
    >>> handler.name, tuple(trainer.state.landscape["slice2d"].loss.shape)
    ('slice2d', (5, 5))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from ignite.engine import Engine
from torch import nn

from ignite_landscape.handlers.measure import MeasureHandler
from ignite_landscape.measures.directions import (
    NORMALIZATIONS,
    check_directions,
    eigenvector_directions,
    normalize_direction,
    random_directions,
)
from ignite_landscape.measures.slices import SliceOptions, measure_loss_slice
from ignite_landscape.params import unwrap_model
from ignite_landscape.probe import Probe
from ignite_landscape.validation import check_bool, check_choice, check_int

__all__ = ["LossSlice", "LossSliceOptions", "DIRECTION_KINDS"]

DIRECTION_KINDS = ("random", "eigenvector")


@dataclass(frozen=True)
class LossSliceOptions(SliceOptions):
    """The options of :class:`LossSlice`: the grid of :func:`~ignite_landscape.loss_slice` and its directions.

    Attributes:
        steps: grid points per direction (``None``: 21 for 1D, 11 for 2D; odd puts the centre on the grid).
        dims: 1 or 2.
        directions: ``"random"`` (Gaussian, normalized to the weights), ``"eigenvector"`` (top Hessian
            eigenvectors) or ``dims`` explicit directions ``{parameter name: tensor}``.
        normalization: ``"filter"``, ``"layer"`` or ``"none"``, applied to the raw draw against the current
            weights at every firing; ``None``: ``"filter"`` for random directions and ``"none"`` (unit
            eigenvectors, coordinates are distances in weight space) for eigenvectors.
        ignore_bias_bn: zero biases and BatchNorm parameters in random directions.
    """

    steps: int | None = None  # type: ignore[assignment]
    dims: int = 1
    directions: str | Sequence[Mapping[str, torch.Tensor]] = "random"
    normalization: str | None = None
    ignore_bias_bn: bool = True

    def __post_init__(self) -> None:
        """Check every option once, naming the one that cannot work; resolve the defaults that follow ``dims``."""
        set_ = object.__setattr__  # frozen: the resolved defaults are written once, here
        check_int("dims", self.dims, 1)
        if self.dims not in (1, 2):
            raise ValueError(f"dims must be 1 or 2, got {self.dims}")
        if self.steps is None:
            set_(self, "steps", 21 if self.dims == 1 else 11)
        super().__post_init__()
        directions = self.directions
        if isinstance(directions, str):
            check_choice("directions", directions, DIRECTION_KINDS)
        elif isinstance(directions, Sequence):
            if len(directions) != self.dims:
                raise ValueError(f"directions: dims={self.dims} needs {self.dims} directions, got {len(directions)}")
        else:
            raise TypeError(f"directions must be 'random', 'eigenvector' or a list of directions, got {directions!r}")
        if self.normalization is None:
            set_(self, "normalization", "none" if directions == "eigenvector" else "filter")
        check_choice("normalization", self.normalization, NORMALIZATIONS)
        check_bool("ignore_bias_bn", self.ignore_bias_bn)


class LossSlice(MeasureHandler):
    """Loss (and accuracy) on a line (``dims=1``) or plane (``dims=2``) centred on the current weights.

    Default names ``"slice1d"`` / ``"slice2d"``. Scalars: ``center_loss``, ``min_loss``, ``max_loss``
    (and ``center_accuracy``). The result (``coords``, ``loss``, ``accuracy``) is in
    ``engine.state.landscape[name]``.

    Raises:
        TypeError, ValueError: for ``dims`` other than 1 or 2, a grid that cannot work (``steps``/``span``
            that miss 0; validated by :class:`~ignite_landscape.measures.slices.SliceOptions`, as
            :func:`~ignite_landscape.loss_slice` does), an unknown direction kind or explicit directions
            that do not fit the model.
    """

    options_type = LossSliceOptions
    positional = ("dims", "steps", "span")

    @property  # type: ignore[override]
    def default_name(self) -> str:  # type: ignore[override]
        """``slice1d`` or ``slice2d``, after the number of directions."""
        return f"slice{self.options.dims}d"

    def __init__(self, model: nn.Module, probe: Probe, *args: Any, **kwargs: Any) -> None:
        super().__init__(model, probe, *args, **kwargs)
        # The raw draw (unnormalised), kept from the first firing on.
        self.raw_directions: list[dict[str, torch.Tensor]] | None = None
        directions = self.options.directions
        if isinstance(directions, str):
            self.direction_kind = directions
        else:
            check_directions(model, list(directions))
            self.direction_kind = "given"
            self.raw_directions = [{k: v.detach().clone() for k, v in d.items()} for d in directions]

    def expected_keys(self) -> list[str]:
        """``center_loss``, ``min_loss`` and ``max_loss``, recorded as NaN when the first firing fails."""
        return ["center_loss", "min_loss", "max_loss"]

    def definitions(self) -> dict[str, str]:
        """The base definitions and ``directions``: how the slice's directions were drawn and normalised."""
        if self.direction_kind == "given":
            drawn = "the directions given, used as they are"
        else:
            source = (
                "the top Hessian eigenvectors at the first firing"
                if self.direction_kind == "eigenvector"
                else f"one Gaussian draw per direction (seed {self.seed}) at the first firing"
            )
            random_bias = self.direction_kind == "random" and self.ignore_bias_bn
            zeroed = ", biases and BatchNorm entries zeroed" if random_bias else ""
            if self.normalization == "none":
                drawn = f"{source}, not normalized (coordinates are distances in weight space){zeroed}"
            else:
                drawn = f"{source}, {self.normalization}-normalized against the current weights at every firing{zeroed}"
        return {**super().definitions(), "directions": drawn}

    def _draw(self) -> list[dict[str, torch.Tensor]]:
        """The raw directions: unit eigenvectors, or the Gaussian draws of ``seed`` in the model's dtype."""
        if self.direction_kind == "eigenvector":
            return eigenvector_directions(self.model, self.probe, count=self.dims, seed=self.seed, params=self.params)
        # normalization="none" without zeroing: exactly the draw random_directions normalises.
        return random_directions(
            self.model, self.dims, normalization="none", ignore_bias_bn=False, seed=self.seed, params=self.params
        )

    @property
    def directions(self) -> list[dict[str, torch.Tensor]] | None:
        """The directions a firing now slices along: the raw draw normalised against the current weights.

        ``None`` before the first firing draws it.
        """
        if self.raw_directions is None:
            return None
        if self.direction_kind == "given" or self.normalization == "none" and self.direction_kind == "eigenvector":
            return self.raw_directions
        named = dict(unwrap_model(self.model).named_parameters())
        # Eigenvectors keep their 1-D entries (as eigenvector_directions does); random draws follow ignore_bias_bn.
        ignore = self.ignore_bias_bn if self.direction_kind == "random" else False
        return [
            normalize_direction(d, {n: named[n] for n in d}, self.normalization, ignore) for d in self.raw_directions
        ]

    def compute(self, engine: Engine) -> Any:
        """The slice along the directions (drawn at the first firing, normalised at every one)."""
        if self.raw_directions is None:
            self.raw_directions = [{k: v.detach().clone() for k, v in d.items()} for d in self._draw()]
        directions = self.directions
        assert directions is not None
        return measure_loss_slice(self.model, self.probe, self.options, directions=directions)

    def _extra_state(self) -> dict[str, Any]:
        return {"raw_directions": self.raw_directions, "direction_kind": self.direction_kind}

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        # A state saved before raw draws were kept holds normalised ones: normalising those again against
        # the current weights gives the same directions (filter and layer normalisation are scale-free).
        dirs = state.get("raw_directions", state.get("directions"))
        if dirs is None:
            self.raw_directions = None
            return
        if len(dirs) != self.dims:
            raise ValueError(f"the saved state holds {len(dirs)} directions, this handler slices {self.dims}")
        named = dict(unwrap_model(self.model).named_parameters())
        check_directions(self.model, dirs)
        self.raw_directions = [
            {k: v.to(device=named[k].device, dtype=named[k].dtype) if k in named else v for k, v in d.items()}
            for d in dirs
        ]
