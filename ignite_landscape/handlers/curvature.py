"""Handlers for the curvature instruments.

Directional curvature, batch sharpness, gradient overlap, per-layer curvature and the GGN decomposition with
its outliers.

Default names (``engine.state.landscape`` keys and ``landscape/<name>/`` metric prefixes): ``directional``,
``batch_sharpness``, ``overlap``, ``layers``, ``ggn``.

Example:
    >>> import torch
    >>> from ignite.engine import Engine, Events
    >>> from ignite_landscape import Probe
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    >>> probe = Probe((torch.randn(32, 4), torch.randint(0, 3, (32,))), torch.nn.functional.cross_entropy)
    >>> trainer = Engine(lambda engine, batch: None)
    >>> _ = DirectionalCurvature(model, probe).attach(trainer)
    >>> _ = BatchSharpness(model, probe, batch_size=8, num_batches=4, lr=0.1).attach(trainer)
    >>> _ = trainer.run([0], max_epochs=1)
    >>> sorted(trainer.state.landscape), trainer.state.metrics["landscape/batch_sharpness/threshold"]  # 2/η
    (['batch_sharpness', 'directional'], 20.0)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from ignite.engine import Engine, Events
from torch import nn

from ignite_landscape.handlers.base import LandscapeHandler
from ignite_landscape.handlers.measure import MeasureHandler, copy_weights
from ignite_landscape.measures.directional import (
    BatchSharpnessOptions,
    DirectionalOptions,
    measure_batch_sharpness,
    measure_directional_curvature,
)
from ignite_landscape.measures.layerwise import LayerwiseOptions, measure_layerwise_curvature
from ignite_landscape.measures.outliers import GGNOptions, measure_ggn_decomposition
from ignite_landscape.measures.overlap import GradientOverlapResult, OverlapOptions, measure_gradient_overlap
from ignite_landscape.params import unwrap_model
from ignite_landscape.probe import Probe
from ignite_landscape.validation import check_positive

__all__ = [
    "DirectionalCurvature",
    "BatchSharpness",
    "GradientOverlap",
    "LayerwiseCurvature",
    "GGNOutliers",
]


def _check_lr(lr: Any, optimizer: Any) -> None:
    if lr is not None:
        check_positive("lr", lr)
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if lr is not None and optimizer is not None:
        raise ValueError("give lr= or optimizer=, not both")


def _current_lr(lr: float | None, optimizer: torch.optim.Optimizer | None) -> float | None:
    # Read at every firing: a scheduler may have changed it.
    if optimizer is not None:
        return float(optimizer.param_groups[0]["lr"])
    return lr


def _threshold_definitions(lr: float | None, optimizer: torch.optim.Optimizer | None) -> dict[str, str]:
    current = _current_lr(lr, optimizer)
    if current is None:
        return {}
    source = "the optimizer's group 0 learning rate" if optimizer is not None else "lr="
    return {
        "threshold": f"2/η with η = {current:g} ({source}): the curvature at which gradient descent turns unstable",
        "ratio": "value/threshold = value·η/2 (1 at the edge of stability)",
    }


@dataclass(frozen=True)
class DirectionalCurvatureOptions(DirectionalOptions):
    """The options of :class:`DirectionalCurvature`: those of :func:`~ignite_landscape.directional_curvature` and η.

    Attributes:
        lr: the step size for the ``2/η`` threshold (or ``optimizer=`` to read it at each firing).
        optimizer: the training optimizer, read for its first group's ``lr``.
    """

    lr: float | None = None
    optimizer: torch.optim.Optimizer | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_lr(self.lr, self.optimizer)


class DirectionalCurvature(MeasureHandler):
    """The curvature ``dᵀCd/‖d‖²`` along the probe gradient, the last optimizer update or a fixed direction.

    Scalars: ``value``, ``direction_norm``, ``num_hvps`` (and with ``lr``/``optimizer``: ``threshold`` = 2/η and
    ``ratio`` = value/threshold).

    With ``direction="update"`` the handler copies the selected weights at every ``ITERATION_STARTED``
    (one parameter-sized buffer, written in place; nothing else is touched) so that at a firing the update
    is the weights now minus those before the last iteration.
    """

    default_name = "directional"
    options_type = DirectionalCurvatureOptions
    positional = ("direction", "curvature")

    def __init__(self, model: nn.Module, probe: Probe, *args: Any, **kwargs: Any) -> None:
        super().__init__(model, probe, *args, **kwargs)
        direction = self.options.direction
        # A copy of a given direction: later changes to the caller's tensors do not leak in.
        if isinstance(direction, Mapping):
            self.options = dataclasses.replace(
                self.options, direction={k: v.detach().clone() for k, v in direction.items()}
            )
        elif isinstance(direction, torch.Tensor):
            self.options = dataclasses.replace(self.options, direction=direction.clone())
        self._before: list[torch.Tensor] | None = None

    def _on_attach(self, engine: Engine) -> None:
        if self.direction == "update" and not engine.has_event_handler(self._snapshot, Events.ITERATION_STARTED):
            engine.add_event_handler(Events.ITERATION_STARTED, self._snapshot)

    def _snapshot(self, engine: Engine) -> None:
        self._before = copy_weights(self._before, self.space, self.model)

    def expected_keys(self) -> list[str]:
        """``value`` and ``direction_norm``, recorded as NaN when the first firing fails."""
        return ["value", "direction_norm"]

    def compute(self, engine: Engine) -> Any:
        """The curvature along the chosen direction (the last optimizer step for ``"update"``)."""
        previous = None
        if self.direction == "update":
            if self._before is None:
                raise ValueError("no optimizer update yet: the handler fired before the first iteration")
            previous = dict(zip(self.space.names, self._before))
        return measure_directional_curvature(
            self.model, self.probe, self.options, self.seed, self.params, previous=previous
        )

    def scalars_of(self, engine: Engine, result: Any) -> dict[str, float]:
        """The result's scalars; with a known learning rate η also ``threshold`` ``2/η`` and ``ratio`` ``value·η/2``."""
        out = {k: float(v) for k, v in result.scalars().items()}
        lr = _current_lr(self.lr, self.optimizer)
        if lr is not None:
            out["threshold"] = 2.0 / lr
            out["ratio"] = result.value * lr / 2.0
        return out

    def definitions(self) -> dict[str, str]:
        """The base definitions and those of the stability threshold and ratio."""
        return {**super().definitions(), **_threshold_definitions(self.lr, self.optimizer)}


@dataclass(frozen=True)
class BatchSharpnessHandlerOptions(BatchSharpnessOptions):
    """The options of :class:`BatchSharpness`: those of :func:`~ignite_landscape.batch_sharpness` and the optimizer.

    Attributes:
        batch_size: the trainer's batch size; ``None`` reads ``batch_size`` of the trainer's DataLoader.
        num_batches: mini-batches per firing (one forward, backward and double backward each).
        lr: the step size for the ``2/η`` threshold (or ``optimizer=`` to read it at each firing).
        optimizer: the training optimizer, read for its first group's ``lr``.
    """

    optimizer: torch.optim.Optimizer | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_lr(self.lr, self.optimizer)


class BatchSharpness(MeasureHandler):
    """Mean curvature of mini-batch losses along their own gradients, against ``2/η`` (edge of stochastic stability).

    Scalars: ``value``, ``stderr``, ``batch_size``, ``num_batches`` (and ``threshold``, ``ratio`` with
    ``lr``/``optimizer``). The same ``num_batches`` mini-batches (drawn from the probe with ``seed``) are
    used at every firing, so the curve over training is not noisier than the quantity itself. The probe
    must hold at least ``batch_size`` samples.
    """

    default_name = "batch_sharpness"
    options_type = BatchSharpnessHandlerOptions
    positional = ("batch_size", "num_batches")

    def expected_keys(self) -> list[str]:
        """``value`` and ``stderr``, recorded as NaN when the first firing fails."""
        return ["value", "stderr"]

    def _batch_size(self, engine: Engine) -> int:
        if self.batch_size is not None:
            return self.batch_size
        size = getattr(getattr(engine.state, "dataloader", None), "batch_size", None)
        if not isinstance(size, int) or size < 1:
            raise ValueError("batch_size=None: the trainer's data has no batch_size; pass batch_size=")
        return min(size, self.probe.num_samples)

    def compute(self, engine: Engine) -> Any:
        """Batch sharpness over probe batches of the trainer's batch size."""
        # Built at each firing: the batch size may be the trainer's, the step size the optimizer's current one.
        options = BatchSharpnessOptions(
            self._batch_size(engine), self.num_batches, _current_lr(self.lr, self.optimizer)
        )
        return measure_batch_sharpness(self.model, self.probe, options, self.seed, self.params)

    def definitions(self) -> dict[str, str]:
        """The base definitions and those of the stability threshold and ratio."""
        return {**super().definitions(), **_threshold_definitions(self.lr, self.optimizer)}


@dataclass(frozen=True)
class GradientOverlapOptions(OverlapOptions):
    """The options of :class:`GradientOverlap`: those of :func:`~ignite_landscape.gradient_overlap` and a spectrum.

    Attributes:
        spectrum: a :class:`~ignite_landscape.HessianSpectrum` handler on the same model, probe mode and
            parameters, attached *before* this one to the same event: when it has fired at this moment with
            at least ``k`` largest eigenvectors, they are used and no Lanczos runs here (curvature must be
            ``"hessian"``).
    """

    spectrum: LandscapeHandler | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        spectrum = self.spectrum
        if spectrum is not None:
            if not hasattr(spectrum, "eigenvectors") or not isinstance(spectrum, LandscapeHandler):
                raise TypeError(f"spectrum must be a HessianSpectrum handler, got {type(spectrum).__name__}")
            if self.curvature != "hessian":
                raise ValueError("spectrum= holds Hessian eigenvectors: it needs curvature='hessian'")


class GradientOverlap(MeasureHandler):
    """The gradient's share in the top-k eigenspace, ``‖P_k g‖²/‖g‖²`` (Gur-Ari et al. 2018).

    Scalars: ``value``, ``grad_norm``, ``num_hvps``, ``overlap_1`` … ``overlap_k``, ``reused`` (1 when the
    eigenvectors came from ``spectrum``).
    """

    default_name = "overlap"
    options_type = GradientOverlapOptions
    positional = ("k", "curvature", "tol")

    def __init__(self, model: nn.Module, probe: Probe, *args: Any, **kwargs: Any) -> None:
        super().__init__(model, probe, *args, **kwargs)
        spectrum = self.spectrum
        if spectrum is not None and (
            spectrum.space != self.space or unwrap_model(spectrum.model) is not unwrap_model(model)
        ):
            raise ValueError("spectrum must measure the same model and parameters")

    def expected_keys(self) -> list[str]:
        """``value``, recorded as NaN when the first firing fails."""
        return ["value"]

    def _reusable(self, engine: Engine) -> tuple[torch.Tensor, torch.Tensor] | None:
        spec = self.spectrum
        if spec is None or spec.last is None or spec.last.failed:
            return None
        state = engine.state
        same_moment = spec.last.epoch == state.epoch and spec.last.iteration == state.iteration
        vectors = getattr(spec, "eigenvectors", None)
        result = spec.last.result
        if (
            not same_moment
            or vectors is None
            or getattr(spec, "which", "largest") == "smallest"
            or getattr(spec, "model_mode", self.probe.model_mode) != self.probe.model_mode
            or spec.probe is not self.probe
            or vectors.shape[0] < self.k
        ):
            return None
        return vectors, result.eigenvalues

    def compute(self, engine: Engine) -> GradientOverlapResult:
        """The overlap, reusing the spectrum handler's eigenvectors when it fired at this moment."""
        reuse = self._reusable(engine)
        vectors, values = (None, None) if reuse is None else reuse
        return measure_gradient_overlap(
            self.model, self.probe, self.options, self.seed, self.params, eigenvectors=vectors, eigenvalues=values
        )

    def scalars_of(self, engine: Engine, result: GradientOverlapResult) -> dict[str, float]:
        """The result's scalars and ``reused`` (1 when the spectrum handler's eigenvectors were reused)."""
        out = {k: float(v) for k, v in result.scalars().items()}
        out["reused"] = 1.0 if result.reused else 0.0
        return out

    def definitions(self) -> dict[str, str]:
        """The base definitions and that of ``reused``."""
        out = super().definitions()
        out["reused"] = "1 when the eigenvectors came from the spectrum handler's firing at this moment, else 0"
        return out


class LayerwiseCurvature(MeasureHandler):
    """Per-layer curvature over training: λ_max and trace of each layer's Hessian block.

    Scalars: ``lambda_max/<layer>`` and ``trace/<layer>`` per module (``root`` for parameters of the model
    itself). The traces are exact where :func:`~ignite_landscape.hessian_diagonal` supports the network
    (``trace_method="auto"``; one extended backward pass gives every layer's), else Hutch++. The
    :class:`~ignite_landscape.LandscapeLogHandler` draws the history as a layers × firings heatmap image.
    It measures every layer: ``params=`` is not supported.
    """

    default_name = "layers"
    options_type = LayerwiseOptions
    measure = staticmethod(measure_layerwise_curvature)
    positional = ("tol",)

    def __init__(self, model: nn.Module, probe: Probe, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("params") is not None:
            raise ValueError("LayerwiseCurvature measures every layer: params= is not supported")
        super().__init__(model, probe, *args, **kwargs)


class GGNOutliers(MeasureHandler):
    """``H = G + R`` (λ_max and trace of each) and the number of outliers of the GGN spectrum (Papyan).

    Scalars: ``lambda_max_hessian``, ``lambda_max_ggn``, ``lambda_max_residual``, ``lambda_min_residual``,
    ``trace_hessian``, ``trace_ggn``, ``trace_residual``, ``trace_stderr``, ``num_outliers``, ``num_classes``,
    ``num_hvps``. See :func:`~ignite_landscape.measures.outliers.count_outliers` for the separation rule.
    """

    default_name = "ggn"
    options_type = GGNOptions
    measure = staticmethod(measure_ggn_decomposition)
    positional = ("k", "tol")

    def expected_keys(self) -> list[str]:
        """``lambda_max_ggn`` and ``num_outliers``, recorded as NaN when the first firing fails."""
        return ["lambda_max_ggn", "num_outliers"]
