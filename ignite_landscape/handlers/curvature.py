"""Handlers for the curvature instruments: directional curvature, batch sharpness, gradient overlap,
per-layer curvature and the GGN decomposition with its outliers.

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
    >>> sorted(trainer.state.landscape)
    ['batch_sharpness', 'directional']
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from ignite.engine import Engine, Events
from torch import nn

from ignite_landscape.curvature import check_curvature
from ignite_landscape.handlers.base import LandscapeHandler, _check_choice, _check_int, _check_positive
from ignite_landscape.measures.directional import DIRECTIONS, batch_sharpness, directional_curvature
from ignite_landscape.measures.layerwise import LayerwiseCurvatureResult, layerwise_curvature_result
from ignite_landscape.measures.outliers import GGNDecomposition, ggn_decomposition
from ignite_landscape.measures.overlap import GradientOverlapResult, gradient_overlap
from ignite_landscape.params import unwrap_model
from ignite_landscape.probe import Probe

__all__ = [
    "DirectionalCurvature",
    "BatchSharpness",
    "GradientOverlap",
    "LayerwiseCurvature",
    "GGNOutliers",
]


def _check_lr(lr: Any, optimizer: Any) -> None:
    if lr is not None:
        _check_positive("lr", lr)
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if lr is not None and optimizer is not None:
        raise ValueError("give lr= or optimizer=, not both")


def _current_lr(lr: float | None, optimizer: torch.optim.Optimizer | None) -> float | None:
    # Read at every firing: a scheduler may have changed it.
    if optimizer is not None:
        return float(optimizer.param_groups[0]["lr"])
    return lr


class DirectionalCurvature(LandscapeHandler):
    """The curvature ``dᵀCd/‖d‖²`` along the probe gradient, the last optimizer update or a fixed direction.

    Scalars: ``value``, ``direction_norm``, ``num_hvps`` (and with ``lr``/``optimizer``: ``threshold`` = 2/η and
    ``ratio`` = value/threshold).

    With ``direction="update"`` the handler copies the selected weights at every ``ITERATION_STARTED``
    (one parameter-sized buffer, written in place; nothing else is touched) so that at a firing the update
    is the weights now minus those before the last iteration.

    Args:
        model: the trained model.
        probe: the fixed samples.
        direction: ``"gradient"``, ``"update"`` or a ``{parameter name: tensor}`` dict (a fixed direction).
        curvature: ``"hessian"``, ``"ggn"``, ``"fisher"`` or ``"empirical_fisher"``.
        lr: the step size for the ``2/η`` threshold (or ``optimizer=`` to read it at each firing).
        optimizer: the training optimizer, read for its first group's ``lr``.
        **kwargs: ``name``, ``params``, ``seed``, ``on_error``, ``progress`` (see :class:`LandscapeHandler`).
    """

    default_name = "directional"

    def __init__(
        self,
        model: nn.Module,
        probe: Probe,
        direction: str | Mapping[str, torch.Tensor] = "gradient",
        curvature: str = "hessian",
        *,
        lr: float | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, probe, **kwargs)
        if isinstance(direction, str):
            _check_choice("direction", direction, DIRECTIONS)
        elif isinstance(direction, Mapping):
            self.space.flatten(direction)  # raises for missing parameters or wrong shapes
            direction = {k: v.detach().clone() for k, v in direction.items()}
        else:
            raise TypeError(f"direction must be 'gradient', 'update' or a dict, got {type(direction).__name__}")
        self.direction = direction
        self.curvature = check_curvature(curvature)
        _check_lr(lr, optimizer)
        self.lr = lr
        self.optimizer = optimizer
        self._before: list[torch.Tensor] | None = None

    def _on_attach(self, engine: Engine) -> None:
        if self.direction == "update" and not engine.has_event_handler(self._snapshot, Events.ITERATION_STARTED):
            engine.add_event_handler(Events.ITERATION_STARTED, self._snapshot)

    def _snapshot(self, engine: Engine) -> None:
        params = self.space.tensors(unwrap_model(self.model))
        with torch.no_grad():
            if self._before is None:
                self._before = [p.detach().clone() for p in params]
            else:
                for b, p in zip(self._before, params):
                    b.copy_(p)

    def expected_keys(self) -> list[str]:
        return ["value", "direction_norm"]

    def compute(self, engine: Engine) -> Any:
        previous = None
        if self.direction == "update":
            if self._before is None:
                raise ValueError("no optimizer update yet: the handler fired before the first iteration")
            previous = dict(zip(self.space.names, self._before))
        return directional_curvature(
            self.model,
            self.probe,
            self.direction,
            previous=previous,
            curvature=self.curvature,
            params=self.params,
            seed=self.seed,
        )

    def scalars_of(self, engine: Engine, result: Any) -> dict[str, float]:
        out = {k: float(v) for k, v in result.scalars().items()}
        lr = _current_lr(self.lr, self.optimizer)
        if lr is not None:
            out["threshold"] = 2.0 / lr
            out["ratio"] = result.value * lr / 2.0
        return out


class BatchSharpness(LandscapeHandler):
    """Mean curvature of mini-batch losses along their own gradients, against ``2/η`` (edge of stochastic stability).

    Scalars: ``value``, ``stderr``, ``batch_size``, ``num_batches`` (and ``threshold``, ``ratio`` with
    ``lr``/``optimizer``). The same ``num_batches`` mini-batches (drawn from the probe with ``seed``) are
    used at every firing, so the curve over training is not noisier than the quantity itself.

    Args:
        model: the trained model.
        probe: the samples the mini-batches are drawn from (at least ``batch_size`` of them).
        batch_size: the trainer's batch size; ``None`` reads ``batch_size`` of the trainer's DataLoader.
        num_batches: mini-batches per firing (one forward, backward and double backward each).
        lr: the step size for the ``2/η`` threshold (or ``optimizer=`` to read it at each firing).
        optimizer: the training optimizer, read for its first group's ``lr``.
        **kwargs: ``name``, ``params``, ``seed``, ``on_error``, ``progress`` (see :class:`LandscapeHandler`).
    """

    default_name = "batch_sharpness"

    def __init__(
        self,
        model: nn.Module,
        probe: Probe,
        batch_size: int | None = None,
        num_batches: int = 10,
        *,
        lr: float | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, probe, **kwargs)
        if batch_size is not None:
            _check_int("batch_size", batch_size, 1)
            if batch_size > probe.num_samples:
                raise ValueError(
                    f"batch_size must be at most the probe's {probe.num_samples} samples, got {batch_size}"
                )
        self.batch_size = batch_size
        self.num_batches = _check_int("num_batches", num_batches, 2)
        _check_lr(lr, optimizer)
        self.lr = lr
        self.optimizer = optimizer

    def expected_keys(self) -> list[str]:
        return ["value", "stderr"]

    def _batch_size(self, engine: Engine) -> int:
        if self.batch_size is not None:
            return self.batch_size
        size = getattr(getattr(engine.state, "dataloader", None), "batch_size", None)
        if not isinstance(size, int) or size < 1:
            raise ValueError("batch_size=None: the trainer's data has no batch_size; pass batch_size=")
        return min(size, self.probe.num_samples)

    def compute(self, engine: Engine) -> Any:
        return batch_sharpness(
            self.model,
            self.probe,
            self._batch_size(engine),
            num_batches=self.num_batches,
            lr=_current_lr(self.lr, self.optimizer),
            params=self.params,
            seed=self.seed,
        )


class GradientOverlap(LandscapeHandler):
    """The gradient's share in the top-k eigenspace, ``‖P_k g‖²/‖g‖²`` (Gur-Ari et al. 2018).

    Scalars: ``value``, ``grad_norm``, ``num_hvps``, ``overlap_1`` … ``overlap_k``, ``reused`` (1 when the
    eigenvectors came from ``spectrum``).

    Args:
        model: the trained model.
        probe: the fixed samples.
        k: dimension of the eigenspace.
        curvature: ``"hessian"``, ``"ggn"``, ``"fisher"`` or ``"empirical_fisher"``.
        tol: Lanczos tolerance when the eigenvectors are computed here.
        spectrum: a :class:`~ignite_landscape.HessianSpectrum` handler on the same model, probe mode and
            parameters, attached *before* this one to the same event: when it has fired at this moment with
            at least ``k`` largest eigenvectors, they are used and no Lanczos runs here (curvature must be
            ``"hessian"``).
        **kwargs: ``name``, ``params``, ``seed``, ``on_error``, ``progress`` (see :class:`LandscapeHandler`).
    """

    default_name = "overlap"

    def __init__(
        self,
        model: nn.Module,
        probe: Probe,
        k: int = 10,
        curvature: str = "hessian",
        tol: float = 1e-4,
        *,
        spectrum: LandscapeHandler | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, probe, **kwargs)
        self.k = _check_int("k", k, 1)
        if k >= self.space.numel:
            raise ValueError(f"k must be smaller than the number of parameters ({self.space.numel}), got {k}")
        self.curvature = check_curvature(curvature)
        self.tol = _check_positive("tol", tol)
        if spectrum is not None:
            if not hasattr(spectrum, "eigenvectors") or not isinstance(spectrum, LandscapeHandler):
                raise TypeError(f"spectrum must be a HessianSpectrum handler, got {type(spectrum).__name__}")
            if curvature != "hessian":
                raise ValueError("spectrum= holds Hessian eigenvectors: it needs curvature='hessian'")
            if spectrum.space != self.space or unwrap_model(spectrum.model) is not unwrap_model(model):
                raise ValueError("spectrum must measure the same model and parameters")
        self.spectrum = spectrum

    def expected_keys(self) -> list[str]:
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
        reuse = self._reusable(engine)
        return gradient_overlap(
            self.model,
            self.probe,
            self.k,
            curvature=self.curvature,
            tol=self.tol,
            params=self.params,
            seed=self.seed,
            eigenvectors=None if reuse is None else reuse[0],
            eigenvalues=None if reuse is None else reuse[1],
        )

    def scalars_of(self, engine: Engine, result: GradientOverlapResult) -> dict[str, float]:
        out = {k: float(v) for k, v in result.scalars().items()}
        out["reused"] = 1.0 if result.reused else 0.0
        return out


class LayerwiseCurvature(LandscapeHandler):
    """Per-layer curvature over training: λ_max and trace of each layer's Hessian block.

    Scalars: ``lambda_max/<layer>`` and ``trace/<layer>`` per module (``root`` for parameters of the model
    itself). The traces are exact where :func:`~ignite_landscape.hessian_diagonal` supports the network
    (``trace_method="auto"``; one extended backward pass gives every layer's), else Hutch++. The
    :class:`~ignite_landscape.LandscapeLogHandler` draws the history as a layers × firings heatmap image.

    Args:
        model: the trained model.
        probe: the fixed samples.
        tol: Lanczos tolerance of each layer's λ_max.
        trace_method: ``"auto"``, ``"exact"`` or ``"hutch++"``.
        trace_hvps: Hutch++ budget per layer when the trace is not exact.
        exact_below: layers with at most this many parameters are formed densely (exact λ_max and trace).
        **kwargs: ``name``, ``seed``, ``on_error``, ``progress`` (see :class:`LandscapeHandler`).
    """

    default_name = "layers"

    def __init__(
        self,
        model: nn.Module,
        probe: Probe,
        tol: float = 1e-4,
        *,
        trace_method: str = "auto",
        trace_hvps: int = 30,
        exact_below: int = 64,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("params") is not None:
            raise ValueError("LayerwiseCurvature measures every layer: params= is not supported")
        super().__init__(model, probe, **kwargs)
        self.tol = _check_positive("tol", tol)
        self.trace_method = _check_choice("trace_method", trace_method, ("auto", "exact", "hutch++"))
        self.trace_hvps = _check_int("trace_hvps", trace_hvps, 6)
        self.exact_below = _check_int("exact_below", exact_below, 0)

    def compute(self, engine: Engine) -> LayerwiseCurvatureResult:
        return layerwise_curvature_result(
            self.model,
            self.probe,
            tol=self.tol,
            trace_method=self.trace_method,
            trace_hvps=self.trace_hvps,
            exact_below=self.exact_below,
            seed=self.seed,
        )


class GGNOutliers(LandscapeHandler):
    """``H = G + R`` (λ_max and trace of each) and the number of outliers of the GGN spectrum (Papyan).

    Scalars: ``lambda_max_hessian``, ``lambda_max_ggn``, ``lambda_max_residual``, ``lambda_min_residual``,
    ``trace_hessian``, ``trace_ggn``, ``trace_residual``, ``trace_stderr``, ``num_outliers``, ``num_classes``,
    ``num_hvps``. See :func:`~ignite_landscape.measures.outliers.count_outliers` for the separation rule.

    Args:
        model: the trained model.
        probe: the fixed samples.
        k: top GGN eigenvalues computed (default ``2C + 2``).
        tol: Lanczos tolerance.
        trace_hvps: Hutch++ budget of each trace.
        ratio: the break factor of the outlier rule.
        **kwargs: ``name``, ``params``, ``seed``, ``on_error``, ``progress`` (see :class:`LandscapeHandler`).
    """

    default_name = "ggn"

    def __init__(
        self,
        model: nn.Module,
        probe: Probe,
        k: int | None = None,
        tol: float = 1e-4,
        *,
        trace_hvps: int = 60,
        ratio: float = 2.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, probe, **kwargs)
        if k is not None:
            _check_int("k", k, 1)
            if k >= self.space.numel:
                raise ValueError(f"k must be smaller than the number of parameters ({self.space.numel}), got {k}")
        self.k = k
        self.tol = _check_positive("tol", tol)
        self.trace_hvps = _check_int("trace_hvps", trace_hvps, 6)
        if not _check_positive("ratio", ratio) > 1:
            raise ValueError(f"ratio must be above 1, got {ratio}")
        self.ratio = float(ratio)

    def expected_keys(self) -> list[str]:
        return ["lambda_max_ggn", "num_outliers"]

    def compute(self, engine: Engine) -> GGNDecomposition:
        return ggn_decomposition(
            self.model,
            self.probe,
            self.k,
            tol=self.tol,
            trace_hvps=self.trace_hvps,
            ratio=self.ratio,
            params=self.params,
            seed=self.seed,
        )
