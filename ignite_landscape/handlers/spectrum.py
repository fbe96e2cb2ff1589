"""Handlers for the Hessian spectrum: top eigenvalues (with the edge-of-stability view), trace, density.

:class:`HessianSpectrum` warm-starts Lanczos from the previous firing's eigenvectors and, given
the optimizer, relates the top eigenvalue to the step size:

* SGD (heavy-ball momentum β, dampening d): gradient descent on a quadratic is stable while
  ``λ_max < (2 + 2β)/(η(1 − d))`` (``2/η`` without momentum); with Nesterov momentum the bound is
  ``(2 + 2β)/(η(1 + 2β))`` (Cohen et al. 2021, "Gradient descent on neural networks typically occurs
  at the edge of stability"). Logged: ``lr``, ``stability_threshold``, ``lambda_max_lr_over_2``
  (``λ_max·η/2``, which reaches 1 at the edge for plain GD) and ``stability_ratio``
  (``λ_max / threshold``). ``λ_max`` there is the curvature of the objective one step follows: for a
  loss with ``reduction="sum"``, the probe's times ``probe.objective_scale(batch size)``.
* Adam/AdamW: the relevant quantity is the preconditioned sharpness ``λ_max(P⁻¹H)`` with
  ``P = diag(√v̂ + ε)`` read from the optimizer's own state (``v̂ = exp_avg_sq/(1 − β₂ᵗ)``;
  ``max_exp_avg_sq`` with AMSGrad), against ``(2 + 2β₁)/((1 − β₁)η)`` (Cohen et al. 2022, "Adaptive
  gradient methods at the edge of stability"). Logged: ``preconditioned_lambda_max``,
  ``preconditioned_threshold``, ``preconditioned_ratio``.

Example:
    >>> model = torch.nn.Linear(4, 3)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    >>> probe = Probe((torch.randn(16, 4), torch.randint(0, 3, (16,))), torch.nn.functional.cross_entropy)
    >>> trainer = Engine(lambda engine, batch: None)
    >>> _ = HessianSpectrum(model, probe, k=2, optimizer=opt).attach(trainer)
    >>> _ = trainer.run([0], max_epochs=1)
    >>> round(trainer.state.metrics["landscape/hessian/stability_threshold"], 6)
    38.0
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from ignite.engine import Engine, Events
from torch import nn

from ignite_landscape.handlers.measure import MeasureHandler, copy_weights
from ignite_landscape.handlers.stability import (
    adam_preconditioner,
    is_adam,
    leading_rows,
    measured_mode,
    param_groups,
    stability_threshold,
    threshold_definition,
)
from ignite_landscape.linalg.random import generator
from ignite_landscape.measures.density import DensityOptions, measure_hessian_density
from ignite_landscape.measures.spectrum import (
    HessianEigenvalues,
    SpectrumOptions,
    eigenspace_overlap,
    measure_hessian_eigenvalues,
    preconditioned_eigenvalues,
)
from ignite_landscape.measures.trace import TraceOptions, measure_hessian_trace
from ignite_landscape.params import unwrap_model
from ignite_landscape.probe import MODEL_MODES, Probe
from ignite_landscape.validation import check_bool, check_choice, check_int, check_nonnegative

__all__ = [
    "HessianSpectrum",
    "HessianSpectrumOptions",
    "HessianTrace",
    "HessianDensity",
    "adam_preconditioner",
    "stability_threshold",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HessianSpectrumOptions(SpectrumOptions):
    """The options of :class:`HessianSpectrum`.

    Those of :func:`~ignite_landscape.hessian_eigenvalues` and the warm start, the optimizer of the
    edge-of-stability view and eigenspace tracking.

    Attributes:
        warm_start: deal the previous firing's eigenvectors over the random start vectors every start holds,
            folded into them.
            It changes the cost, not the answer: convergence also asks the
            random exploration beyond the wanted eigenvalues to be resolved, so an eigenvalue that has
            overtaken the old k-th is found at the firing where it does (see :func:`hessian_eigenvalues`).
            What it saves depends on how far the eigenvectors move between firings: measured in
            ``benchmarks/bench_tracking.py``.
        warm_start_noise: relative size of a seeded random perturbation of each old eigenvector
            (default 0: the random start vectors already catch what the old ones miss).
        optimizer: the training optimizer, for the stability threshold (SGD, Adam, AdamW).
        preconditioned: also compute the preconditioned sharpness (default: for Adam/AdamW).
        track_eigenspace: log the eigenspace's turn since the previous firing and ``update_overlap``,
            ``‖U_tᵀ d‖²/‖d‖²`` for the optimizer's last update ``d`` (the weights now minus those at the
            last ``ITERATION_STARTED``, kept in one parameter-sized buffer): the share of the step taken
            inside the current top-k eigenspace.
        model_mode: ``"eval"`` or ``"train"``: the mode the eigenvalues are measured in, on the probe's
            samples. ``None`` (default): the probe's mode, except with ``optimizer=`` on a model with
            BatchNorm (running statistics) and a probe in ``"eval"`` mode: then ``"train"``, the
            objective the optimizer follows (batch statistics over probe batches of ``probe.batch_size``),
            since eval-mode curvature with stale running statistics can be orders of magnitude off the
            stability threshold; a warning says so once, and the scalar ``train_mode`` (1 or 0) records
            the mode whenever ``optimizer=`` is given.
        train_batch_size: the trainer's batch size, for a loss with ``reduction="sum"``: its objective
            grows with the samples, so the curvature one optimizer step sees is
            ``probe.objective_scale(train_batch_size)`` times the probe's, and the stability scalars
            compare that (logged as ``objective_scale``). Default: the rows of ``engine.state.batch``.
            Ignored for normalised losses (a mean), whose curvature does not depend on the batch size.
    """

    warm_start: bool = True
    warm_start_noise: float = 0.0
    optimizer: torch.optim.Optimizer | None = None
    preconditioned: bool | None = None
    model_mode: str | None = None
    track_eigenspace: bool = False
    train_batch_size: int | None = None

    def __post_init__(self) -> None:
        """Check the spectrum, warm-start and optimizer options once, naming the one that cannot work."""
        super().__post_init__()
        check_bool("warm_start", self.warm_start)
        object.__setattr__(self, "warm_start_noise", check_nonnegative("warm_start_noise", self.warm_start_noise))
        optimizer = self.optimizer
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if self.preconditioned is not None:
            check_bool("preconditioned", self.preconditioned)
        adam = optimizer is not None and is_adam(optimizer)
        if self.preconditioned and not adam:
            raise ValueError("preconditioned=True needs an Adam or AdamW optimizer=")
        object.__setattr__(self, "preconditioned", adam if self.preconditioned is None else self.preconditioned)
        if self.model_mode is not None:
            check_choice("model_mode", self.model_mode, MODEL_MODES)
        check_bool("track_eigenspace", self.track_eigenspace)
        if self.train_batch_size is not None:
            check_int("train_batch_size", self.train_batch_size, 1)


class HessianSpectrum(MeasureHandler):
    """Top (or bottom) Hessian eigenvalues by Lanczos, warm-started across firings.

    Scalars (``landscape/<name>/...``): ``lambda_max``, ``lambda_1`` … ``lambda_k``, ``num_hvps``,
    ``max_relative_residual`` (``lambda_min`` for ``which="both"``), and with ``optimizer=``:
    ``lr``, ``stability_threshold``, ``lambda_max_lr_over_2``, ``stability_ratio``; for Adam/AdamW
    also ``preconditioned_lambda_max``, ``preconditioned_threshold``, ``preconditioned_ratio``.
    With ``track_eigenspace=True``: how the eigenspace turned since the previous firing (see
    :func:`~ignite_landscape.measures.spectrum.eigenspace_overlap`), ``eigenspace_overlap``
    (``‖U_tᵀU_{t−1}‖²_F/k``, 1 when nothing moved) and ``max_principal_angle`` (radians), NaN at the
    first firing; and ``update_overlap``, NaN before the first step. The eigenvectors are kept once
    (not per firing).

    Example:
        >>> import torch
        >>> from ignite.engine import Engine
        >>> import ignite_landscape as il
        >>> mlp = torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3))
        >>> probe = il.Probe((torch.randn(30, 3), torch.randint(0, 3, (30,))), torch.nn.CrossEntropyLoss())
        >>> handler = HessianSpectrum(mlp, probe, 2, which="both", name="curv")
        >>> engine = Engine(lambda engine, batch: None)
        >>> _ = handler.attach(engine)
        >>> _ = engine.run([0], max_epochs=2)
        >>> len(handler.history), engine.state.landscape["curv"].eigenvalues.shape  # 2 largest, 2 smallest
        (2, torch.Size([4]))
    """

    default_name = "hessian"
    options_type = HessianSpectrumOptions
    positional = ("k", "which", "tol")

    def __init__(self, model: nn.Module, probe: Probe, *args: Any, **kwargs: Any) -> None:
        super().__init__(model, probe, *args, **kwargs)
        optimizer = self.optimizer
        if optimizer is not None:
            param_groups(optimizer, model, self.space)  # raises if it does not hold the selected parameters
            if not (isinstance(optimizer, torch.optim.SGD) or is_adam(optimizer)):
                logger.warning(
                    "HessianSpectrum: no stability threshold is known for %s; only lr is logged",
                    type(optimizer).__name__,
                )
        # The mode the eigenvalues are measured in, resolved once (see the model_mode option).
        mode = measured_mode(self.options.model_mode, model, probe, optimizer, self.name)
        self.options = dataclasses.replace(self.options, model_mode=mode)
        self._measured_probe = probe.with_model_mode(mode)  # the same samples, shared
        self.eigenvectors: torch.Tensor | None = None
        self.preconditioned_eigenvector: torch.Tensor | None = None
        self.preconditioned_result: HessianEigenvalues | None = None
        self._warned_lrs = False
        self._warned_scale = False
        self._before: list[torch.Tensor] | None = None
        self._tracking: dict[str, float] = {}

    def _on_attach(self, engine: Engine) -> None:
        if self.track_eigenspace and not engine.has_event_handler(self._snapshot, Events.ITERATION_STARTED):
            engine.add_event_handler(Events.ITERATION_STARTED, self._snapshot)

    def _snapshot(self, engine: Engine) -> None:
        # The weights before this iteration's step, so a firing after the step knows the update it took.
        self._before = copy_weights(self._before, self.space, self.model)

    def _track(self, previous: torch.Tensor | None, current: torch.Tensor | None) -> dict[str, float]:
        if not self.track_eigenspace:
            return {}
        out = {"eigenspace_overlap": math.nan, "max_principal_angle": math.nan, "update_overlap": math.nan}
        if current is None:
            return out
        if previous is not None and previous.shape == current.shape:
            out["eigenspace_overlap"], out["max_principal_angle"] = eigenspace_overlap(previous, current)
        if self._before is not None:
            now = self.space.flatten(self.space.tensors(unwrap_model(self.model))).detach().double()
            step = now - self.space.flatten(self._before).double()
            norm2 = float(step @ step)
            if norm2 > 0:
                out["update_overlap"] = float(((current.double() @ step) ** 2).sum()) / norm2
        return out

    def expected_keys(self) -> list[str]:
        """The extreme eigenvalue and the top ``k``, recorded as NaN when the first firing fails."""
        keys = ["lambda_max"] if self.which != "smallest" else ["lambda_min"]
        keys += [f"lambda_{i}" for i in range(1, self.k + 1)] if self.which != "smallest" else []
        return keys

    def _v0(self, previous: torch.Tensor | None, salt: int) -> torch.Tensor | None:
        if not self.warm_start or previous is None or previous.shape[-1] != self.space.numel:
            return None
        block = previous.reshape(-1, self.space.numel)
        norms = torch.linalg.vector_norm(block, dim=1, keepdim=True)
        if not bool(torch.isfinite(block).all()) or not bool((norms > 0).all()):
            return None
        block = block / norms
        if self.warm_start_noise > 0:
            # Seeded per firing, so a resumed run draws the same perturbation.
            g = generator(self.seed + 7919 * (len(self.history) + 1) + salt)
            noise = torch.randn(block.shape, generator=g, dtype=torch.float64).to(block)
            block = block + self.warm_start_noise * noise / torch.linalg.vector_norm(noise, dim=1, keepdim=True)
        return block

    def compute(self, engine: Engine) -> HessianEigenvalues:
        """The eigenvalues (warm-started when asked), their tracking and, with Adam, the preconditioned sharpness."""
        result = measure_hessian_eigenvalues(
            self.model,
            self._measured_probe,
            self.options,
            self.seed,
            self.params,
            v0=self._v0(self.eigenvectors, 0),
            return_eigenvectors=True,
        )
        ok = bool(torch.isfinite(result.eigenvalues).all()) and result.eigenvectors is not None
        current = result.eigenvectors.detach().clone() if ok else None
        self._tracking = self._track(self.eigenvectors, current)
        self.eigenvectors = current
        self.preconditioned_result = None
        if self.preconditioned:
            assert self.optimizer is not None
            p = adam_preconditioner(self.optimizer, self.model, self.space)
            if p is not None:
                pre = preconditioned_eigenvalues(
                    self.model,
                    self._measured_probe,
                    p,
                    k=1,
                    tol=self.tol,
                    max_iter=self.max_iter,
                    params=self.params,
                    seed=self.seed,
                    v0=self._v0(self.preconditioned_eigenvector, 1),
                    return_eigenvectors=self.warm_start,
                )
                ok = bool(torch.isfinite(pre.eigenvalues).all()) and pre.eigenvectors is not None
                self.preconditioned_eigenvector = pre.eigenvectors.detach().clone() if ok else None
                self.preconditioned_result = pre
        return result

    def scalars_of(self, engine: Engine, result: HessianEigenvalues) -> dict[str, float]:
        """The result's scalars, the tracking scalars and, with an optimizer, the stability threshold."""
        out = super().scalars_of(engine, result)
        out.update(self._tracking)
        if self.optimizer is None:
            return out
        groups = param_groups(self.optimizer, self.model, self.space)
        lrs = sorted({float(g["lr"]) for g in groups})
        group = groups[0]
        # Adam's per-group learning rates are folded into its preconditioner (adam_preconditioner);
        # SGD's plain λ_max has no such place, and Adam's threshold needs one β₁.
        mixed = len(lrs) > 1 and not is_adam(self.optimizer)
        mixed |= is_adam(self.optimizer) and len({float(g["betas"][0]) for g in groups}) > 1
        if mixed and not self._warned_lrs:
            logger.warning(
                "HessianSpectrum: the selected parameters have several learning rates %s (or Adam betas); the "
                "threshold uses the first parameter's group (lr %s)",
                lrs,
                float(group["lr"]),
            )
            self._warned_lrs = True
        lr = float(group["lr"])
        out["lr"] = lr
        out["train_mode"] = 1.0 if self.model_mode == "train" else 0.0
        threshold = stability_threshold(self.optimizer, group)
        # The threshold bounds the curvature of the objective one optimizer step follows (a trainer
        # batch); for a summed loss that is objective_scale(batch size) times the probe's.
        scale = self._step_scale(engine)
        if scale != 1.0:
            out["objective_scale"] = scale
        lam = result.lambda_max * scale
        if isinstance(self.optimizer, torch.optim.SGD):
            out["stability_threshold"] = threshold
            out["lambda_max_lr_over_2"] = lam * lr / 2
            out["stability_ratio"] = lam / threshold if threshold > 0 else math.nan
        if self.preconditioned:
            pre = self.preconditioned_result
            value = pre.lambda_max * scale if pre is not None else math.nan
            out["preconditioned_lambda_max"] = value
            out["preconditioned_threshold"] = threshold
            out["preconditioned_ratio"] = value / threshold if threshold > 0 else math.nan
            out["preconditioned_num_hvps"] = float(pre.num_hvps) if pre is not None else 0.0
        return out

    def definitions(self) -> dict[str, str]:
        """The base definitions, the probe in the measured mode, tracking and the edge-of-stability scalars."""
        out = super().definitions()
        out["probe"] = self._probe_definition(self._measured_probe)
        if self.track_eigenspace:
            out["eigenspace_overlap"] = "‖U_tᵀU_{t−1}‖²_F/k: the share of the top-k eigenspace kept since last firing"
            out["max_principal_angle"] = "largest principal angle between this and the last firing's eigenspace (rad)"
            out["update_overlap"] = "‖U_tᵀd‖²/‖d‖²: the share of the optimizer's last step d inside the eigenspace"
        if self.optimizer is None:
            return out
        group = param_groups(self.optimizer, self.model, self.space)[0]
        threshold = threshold_definition(self.optimizer, group)
        lam = "λ_max" + ("·objective_scale" if not self._measured_probe.decomposition.normalized else "")
        out["lr"] = "η, the step size of the optimizer's group 0 (of the first selected parameter)"
        out["train_mode"] = "1 when the eigenvalues are measured in train mode (batch statistics), 0 in eval mode"
        out["objective_scale"] = (
            "probe.objective_scale(B) for the trainer's batch size B: the curvature one step sees over the probe's"
        )
        out["stability_threshold"] = threshold
        out["lambda_max_lr_over_2"] = f"{lam}·η/2, which reaches 1 at the edge of stability of plain gradient descent"
        out["stability_ratio"] = f"{lam}/stability_threshold (1 at the edge of stability)"
        if self.preconditioned:
            out["preconditioned_lambda_max"] = "largest eigenvalue of P⁻¹H with P Adam's preconditioner (Lanczos)"
            out["preconditioned_threshold"] = threshold
            out["preconditioned_ratio"] = "preconditioned_lambda_max/preconditioned_threshold (1 at the edge)"
            out["preconditioned_num_hvps"] = "Hessian-vector products of the preconditioned Lanczos run"
        return out

    def _step_scale(self, engine: Engine) -> float:
        """``probe.objective_scale(B)`` for the trainer's batch size ``B`` (1 for every normalised loss)."""
        probe = self._measured_probe
        if probe.decomposition.normalized:
            return 1.0
        size = self.train_batch_size or leading_rows(getattr(engine.state, "batch", None))
        if size is None:
            if not self._warned_scale:
                logger.warning(
                    "HessianSpectrum %r: loss_fn sums over samples, so the curvature one step sees depends on the "
                    "trainer's batch size, which engine.state.batch does not show: pass train_batch_size=; the "
                    "stability ratios are NaN until then",
                    self.name,
                )
                self._warned_scale = True
            return math.nan
        return probe.objective_scale(size)

    def _history_copy(self, result: HessianEigenvalues) -> HessianEigenvalues:
        # Eigenvectors are P floats each: keep the latest (for the warm start), not one set per firing.
        return dataclasses.replace(result, eigenvectors=None)

    def _extra_state(self) -> dict[str, Any]:
        return {
            "eigenvectors": self.eigenvectors,
            "preconditioned_eigenvector": self.preconditioned_eigenvector,
        }

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        device = next(unwrap_model(self.model).parameters()).device
        # A state saved by an earlier version may also hold "guard_vectors", no longer dealt (see lanczos): not read.
        for key in ("eigenvectors", "preconditioned_eigenvector"):
            value = state.get(key)
            setattr(self, key, value.to(device) if isinstance(value, torch.Tensor) else None)


class HessianTrace(MeasureHandler):
    """Hessian trace by Hutch++ (or Hutchinson) with the same random vectors at every firing.

    Scalars: ``value``, ``stderr``, ``mean_eigenvalue``, ``num_hvps``; with ``uncertainty="jackknife"`` also
    ``value_lo``, ``value_hi`` (±2 stderr), ``estimator_stderr`` and ``uncertainty_hvps``. The options are
    those of :func:`~ignite_landscape.hessian_trace` (see :class:`~ignite_landscape.measures.trace.TraceOptions`).

    Example:
        >>> import torch
        >>> from ignite_landscape import Probe
        >>> probe = Probe((torch.randn(8, 2), torch.randint(0, 2, (8,))), torch.nn.functional.cross_entropy)
        >>> HessianTrace(torch.nn.Linear(2, 2), probe).name
        'trace'
    """

    default_name = "trace"
    options_type = TraceOptions
    measure = staticmethod(measure_hessian_trace)

    def expected_keys(self) -> list[str]:
        """``value`` and ``stderr``, recorded as NaN when the first firing fails."""
        return ["value", "stderr"]


class HessianDensity(MeasureHandler):
    """Hessian eigenvalue density by stochastic Lanczos quadrature.

    Scalars: ``negative_mass``, ``negative_fraction``, ``trace``, ``lambda_max``, ``lambda_min``, ``num_hvps``.
    The options are those of :func:`~ignite_landscape.hessian_density`.

    Example:
        >>> import torch
        >>> from ignite_landscape import Probe
        >>> probe = Probe((torch.randn(8, 2), torch.randint(0, 2, (8,))), torch.nn.functional.cross_entropy)
        >>> HessianDensity(torch.nn.Linear(2, 2), probe, num_steps=4).name
        'density'
    """

    default_name = "density"
    options_type = DensityOptions
    measure = staticmethod(measure_hessian_density)

    def expected_keys(self) -> list[str]:
        """The negative mass and fraction, trace and extreme eigenvalues, NaN when the first firing fails."""
        return ["negative_mass", "negative_fraction", "trace", "lambda_max", "lambda_min"]
