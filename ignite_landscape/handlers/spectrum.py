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
    >>> import torch
    >>> from ignite.engine import Engine, Events
    >>> from ignite_landscape import Probe
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

import logging
import math
from collections.abc import Mapping
from typing import Any

import torch
from ignite.engine import Engine, Events
from torch import nn

from ignite_landscape.curvature import check_curvature
from ignite_landscape.handlers.base import LandscapeHandler, _check_choice, _check_int, _check_positive
from ignite_landscape.linalg.random import generator
from ignite_landscape.measures.jackknife import JACKKNIFE_CHUNKS, check_uncertainty
from ignite_landscape.measures.spectrum import (
    DensityOptions,
    HessianEigenvalues,
    TraceOptions,
    eigenspace_overlap,
    hessian_density,
    hessian_eigenvalues,
    hessian_trace,
    preconditioned_eigenvalues,
)
from ignite_landscape.params import ParamSpace, unwrap_model
from ignite_landscape.probe import MODEL_MODES, Probe

__all__ = ["HessianSpectrum", "HessianTrace", "HessianDensity", "adam_preconditioner", "stability_threshold"]

logger = logging.getLogger(__name__)

_WHICH = ("largest", "smallest", "both")


def _is_adam(optimizer: torch.optim.Optimizer) -> bool:
    return isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW))


def _groups(optimizer: torch.optim.Optimizer, model: nn.Module, space: ParamSpace) -> list[dict[str, Any]]:
    """The param group of each selected parameter, in the space's order."""
    named = dict(unwrap_model(model).named_parameters())
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    missing = [n for n in space.names if id(named[n]) not in group_of]
    if missing:
        raise ValueError(f"optimizer does not optimize the parameters {missing[:5]} of the model")
    return [group_of[id(named[n])] for n in space.names]


def stability_threshold(optimizer: torch.optim.Optimizer, group: Mapping[str, Any]) -> float:
    """The largest curvature at which the optimizer is stable on a quadratic (NaN if unknown).

    SGD: ``(2 + 2β)/(η(1 − d))`` with momentum β and dampening d (``2/η`` plain), Nesterov
    ``(2 + 2β)/(η(1 + 2β))``; Adam/AdamW: ``(2 + 2β₁)/((1 − β₁)η)``, to be compared with the
    preconditioned sharpness.
    """
    lr = float(group["lr"])
    if lr <= 0:
        return math.nan
    if isinstance(optimizer, torch.optim.SGD):
        beta = float(group.get("momentum", 0.0))
        if group.get("nesterov", False):
            return (2 + 2 * beta) / (lr * (1 + 2 * beta))
        damp = float(group.get("dampening", 0.0)) if beta > 0 else 0.0
        return (2 + 2 * beta) / (lr * (1 - damp))
    if _is_adam(optimizer):
        beta1 = float(group["betas"][0])
        return (2 + 2 * beta1) / ((1 - beta1) * lr)
    return math.nan


def adam_preconditioner(
    optimizer: torch.optim.Optimizer, model: nn.Module, space: ParamSpace, reference_lr: float | None = None
) -> dict[str, torch.Tensor] | None:
    """Adam's preconditioner ``P`` per selected parameter, or ``None`` before the first step.

    After step ``t`` PyTorch's Adam/AdamW moved by ``−η m̂/(√v̂ + ε)`` with ``m̂ = m/(1 − β₁ᵗ)`` and
    ``v̂ = v/(1 − β₂ᵗ)`` (``max_exp_avg_sq`` with AMSGrad). Written as ``−η P⁻¹ m`` on the raw
    exponential average ``m`` — the form whose stability threshold on a quadratic is
    ``(2 + 2β₁)/((1 − β₁)η)`` — the preconditioner is ``P = (1 − β₁ᵗ)·(√v̂ + ε)``, as in Cohen et al.
    2022 ("Adaptive gradient methods at the edge of stability"); the first-moment bias correction
    matters early in training (``1 − 0.9¹⁰ ≈ 0.65``).

    Parameter groups with different learning rates ``η_g`` are folded into ``P``: the update of group
    ``g`` is ``−η_ref (P·η_ref/η_g)⁻¹ m``, so ``P`` is scaled by ``η_ref/η_g`` and one threshold with
    ``η_ref`` applies to all (``reference_lr``; default the learning rate of the first selected parameter).
    Also ``None`` when a selected group has ``η_g ≤ 0`` (it does not move: no finite ``P`` describes it).
    """
    named = dict(unwrap_model(model).named_parameters())
    groups = _groups(optimizer, model, space)
    eta_ref = float(groups[0]["lr"]) if reference_lr is None else float(reference_lr)
    out: dict[str, torch.Tensor] = {}
    for name, group in zip(space.names, groups):
        st = optimizer.state.get(named[name], {})
        key = "max_exp_avg_sq" if group.get("amsgrad", False) else "exp_avg_sq"
        if key not in st or "step" not in st:
            return None
        step = float(st["step"])
        if step < 1:
            return None
        beta1, beta2 = float(group["betas"][0]), float(group["betas"][1])
        v_hat = st[key].detach().double() / (1 - beta2**step)
        eta = float(group["lr"])
        if not eta > 0:
            return None
        out[name] = (v_hat.sqrt() + float(group["eps"])) * ((1 - beta1**step) * eta_ref / eta)
    return out


def _measured_mode(
    model_mode: str | None, model: nn.Module, probe: Probe, optimizer: torch.optim.Optimizer | None, name: str
) -> str:
    """The mode HessianSpectrum measures in (see its ``model_mode`` argument)."""
    if model_mode is not None:
        return _check_choice("model_mode", model_mode, MODEL_MODES)
    if optimizer is None or probe.model_mode == "train":
        return probe.model_mode
    norms = [
        m
        for m in unwrap_model(model).modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    if not norms:
        return probe.model_mode
    if any(isinstance(m, nn.SyncBatchNorm) for m in norms):
        # Train mode would synchronise batch statistics across ranks inside the probe: stay in eval mode.
        logger.warning(
            "HessianSpectrum %r: the model has SyncBatchNorm, so the eigenvalues are measured with the running "
            "statistics (model_mode='eval'); early in training they can be far from the curvature the optimizer "
            "sees, so read the stability ratio with care",
            name,
        )
        return probe.model_mode
    logger.warning(
        "HessianSpectrum %r: the model has BatchNorm and optimizer= is given, so the eigenvalues are measured in "
        "model_mode='train' (batch statistics over probe batches of %d: the objective the optimizer follows), not "
        "in the probe's 'eval' mode, whose running statistics can put lambda_max orders of magnitude off the "
        "stability threshold early in training; pass model_mode='eval' to measure the eval-mode function",
        name,
        probe.batch_size,
    )
    return "train"


def _leading_rows(batch: Any) -> int | None:
    """Rows of the first tensor in a batch (tuple, list, dict or tensor), or ``None``."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() > 0 else None
    items = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (tuple, list)) else ()
    for item in items:
        rows = _leading_rows(item)
        if rows is not None:
            return rows
    return None


class HessianSpectrum(LandscapeHandler):
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

    Args:
        model: the trained model.
        probe: the fixed samples.
        k: eigenvalues per wanted end.
        which: ``"largest"``, ``"smallest"`` or ``"both"``.
        tol: relative residual tolerance of Lanczos.
        max_iter: cap on Hessian-vector products per firing.
        warm_start: fold the previous firing's eigenvectors into the first of the random start
            vectors every start holds. It changes the cost, not the answer: convergence also asks the
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
        num_random: random start vectors per firing (see :func:`hessian_eigenvalues`): 2 finds a double
            eigenvalue twice; 1 is cheaper (14 against 19 HVPs for the top 5 of the trained digits CNN).
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
        curvature: the matrix whose eigenvalues are tracked: ``"hessian"``, ``"ggn"``, ``"fisher"`` or
            ``"empirical_fisher"`` (the stability threshold and the preconditioned sharpness refer to the Hessian).
        uncertainty: ``"jackknife"``: error bars on the eigenvalues over the probe's samples (see
            :func:`~ignite_landscape.hessian_eigenvalues`): ``jackknife_chunks`` more Lanczos runs per firing,
            each on the probe without one chunk and warm-started from this firing's eigenvectors. Adds the
            scalars ``lambda_max_stderr``, ``lambda_i_stderr``, ``lambda_i_lo``/``lambda_i_hi`` (±2 stderr)
            and ``uncertainty_hvps``; the result's ``stderr`` (kept in the history) and ``interval``.
        jackknife_chunks: ``K``, the chunks of the jackknife (``2 ≤ K ≤`` the probe's samples).
        **kwargs: ``name``, ``params``, ``seed``, ``on_error``, ``progress`` (see :class:`LandscapeHandler`).

    Example:
        >>> import torch
        >>> from ignite.engine import Engine
        >>> from ignite_landscape import Probe
        >>> model = torch.nn.Linear(4, 3)
        >>> probe = Probe((torch.randn(16, 4), torch.randint(0, 3, (16,))), torch.nn.functional.cross_entropy)
        >>> trainer = Engine(lambda engine, batch: None)
        >>> handler = HessianSpectrum(model, probe, k=2)
        >>> _ = handler.attach(trainer)
        >>> _ = trainer.run([0], max_epochs=2)
        >>> len(handler.history), trainer.state.landscape["hessian"].eigenvalues.shape
        (2, torch.Size([2]))
    """

    default_name = "hessian"

    def __init__(
        self,
        model: nn.Module,
        probe: Probe,
        k: int = 5,
        which: str = "largest",
        tol: float = 1e-4,
        *,
        max_iter: int | None = None,
        warm_start: bool = True,
        warm_start_noise: float = 0.0,
        optimizer: torch.optim.Optimizer | None = None,
        preconditioned: bool | None = None,
        model_mode: str | None = None,
        curvature: str = "hessian",
        track_eigenspace: bool = False,
        num_random: int = 2,
        train_batch_size: int | None = None,
        uncertainty: str | None = None,
        jackknife_chunks: int = JACKKNIFE_CHUNKS,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, probe, **kwargs)
        self.curvature = check_curvature(curvature)
        check_uncertainty(uncertainty, jackknife_chunks, probe)
        self.uncertainty = uncertainty
        self.jackknife_chunks = jackknife_chunks
        _check_int("k", k, 1)
        self.num_random = _check_int("num_random", num_random, 1)
        if not isinstance(track_eigenspace, bool):
            raise TypeError(f"track_eigenspace must be a bool, got {type(track_eigenspace).__name__}")
        _check_choice("which", which, _WHICH)
        _check_positive("tol", tol)
        if max_iter is not None:
            _check_int("max_iter", max_iter, 1)
        n = self.space.numel
        if k >= n or (which == "both" and 2 * k > n):
            raise ValueError(f"k must be smaller than the number of parameters ({n}), got k={k}")
        if not isinstance(warm_start, bool):
            raise TypeError(f"warm_start must be a bool, got {type(warm_start).__name__}")
        if isinstance(warm_start_noise, bool) or not isinstance(warm_start_noise, (int, float)) or warm_start_noise < 0:
            raise ValueError(f"warm_start_noise must be a non-negative number, got {warm_start_noise!r}")
        if optimizer is not None:
            if not isinstance(optimizer, torch.optim.Optimizer):
                raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
            _groups(optimizer, model, self.space)  # raises if it does not hold the selected parameters
            if not (isinstance(optimizer, torch.optim.SGD) or _is_adam(optimizer)):
                logger.warning(
                    "HessianSpectrum: no stability threshold is known for %s; only lr is logged",
                    type(optimizer).__name__,
                )
        if preconditioned is None:
            preconditioned = optimizer is not None and _is_adam(optimizer)
        if preconditioned and (optimizer is None or not _is_adam(optimizer)):
            raise ValueError("preconditioned=True needs an Adam or AdamW optimizer=")
        self.k = k
        self.which = which
        self.tol = float(tol)
        self.max_iter = max_iter
        self.warm_start = warm_start
        self.warm_start_noise = float(warm_start_noise)
        self.optimizer = optimizer
        self.preconditioned = bool(preconditioned)
        self.model_mode = _measured_mode(model_mode, model, probe, optimizer, self.name)
        self._measured_probe = probe.with_model_mode(self.model_mode)  # the same samples, shared
        self.eigenvectors: torch.Tensor | None = None
        self.preconditioned_eigenvector: torch.Tensor | None = None
        self.preconditioned_result: HessianEigenvalues | None = None
        self._warned_lrs = False
        self._warned_scale = False
        if train_batch_size is not None:
            _check_int("train_batch_size", train_batch_size, 1)
        self.train_batch_size = train_batch_size
        self.track_eigenspace = track_eigenspace
        self._before: list[torch.Tensor] | None = None
        self._tracking: dict[str, float] = {}

    def _on_attach(self, engine: Engine) -> None:
        if self.track_eigenspace and not engine.has_event_handler(self._snapshot, Events.ITERATION_STARTED):
            engine.add_event_handler(Events.ITERATION_STARTED, self._snapshot)

    def _snapshot(self, engine: Engine) -> None:
        # The weights before this iteration's step (one parameter-sized buffer, written in place), so a
        # firing after the step knows the update the optimizer just took.
        params = self.space.tensors(unwrap_model(self.model))
        with torch.no_grad():
            if self._before is None:
                self._before = [p.detach().clone() for p in params]
            else:
                for b, p in zip(self._before, params):
                    b.copy_(p)

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
        result = hessian_eigenvalues(
            self.model,
            self._measured_probe,
            k=self.k,
            which=self.which,
            tol=self.tol,
            max_iter=self.max_iter,
            params=self.params,
            seed=self.seed,
            v0=self._v0(self.eigenvectors, 0),
            return_eigenvectors=True,
            curvature=self.curvature,
            num_random=self.num_random,
            uncertainty=self.uncertainty,
            jackknife_chunks=self.jackknife_chunks,
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
        out = super().scalars_of(engine, result)
        out.update(self._tracking)
        if self.optimizer is None:
            return out
        groups = _groups(self.optimizer, self.model, self.space)
        lrs = sorted({float(g["lr"]) for g in groups})
        group = groups[0]
        # Adam's per-group learning rates are folded into its preconditioner (adam_preconditioner);
        # SGD's plain λ_max has no such place, and Adam's threshold needs one β₁.
        mixed = len(lrs) > 1 and not _is_adam(self.optimizer)
        mixed |= _is_adam(self.optimizer) and len({float(g["betas"][0]) for g in groups}) > 1
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

    def _step_scale(self, engine: Engine) -> float:
        """``probe.objective_scale(B)`` for the trainer's batch size ``B`` (1 for every normalised loss)."""
        probe = self._measured_probe
        if probe.decomposition.normalized:
            return 1.0
        size = self.train_batch_size or _leading_rows(getattr(engine.state, "batch", None))
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
        return HessianEigenvalues(
            eigenvalues=result.eigenvalues,
            residuals=result.residuals,
            converged=result.converged,
            num_hvps=result.num_hvps,
            which=result.which,
            space=result.space,
            eigenvectors=None,
            tol=result.tol,
            stderr=result.stderr,
            uncertainty_hvps=result.uncertainty_hvps,
        )

    def _extra_state(self) -> dict[str, Any]:
        return {"eigenvectors": self.eigenvectors, "preconditioned_eigenvector": self.preconditioned_eigenvector}

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        device = next(unwrap_model(self.model).parameters()).device
        for key in ("eigenvectors", "preconditioned_eigenvector"):
            value = state.get(key)
            setattr(self, key, value.to(device) if isinstance(value, torch.Tensor) else None)


class HessianTrace(LandscapeHandler):
    """Hessian trace by Hutch++ (or Hutchinson) with the same random vectors at every firing.

    Scalars: ``value``, ``stderr``, ``mean_eigenvalue``, ``num_hvps``; with ``uncertainty="jackknife"`` also
    ``value_lo``, ``value_hi`` (±2 stderr), ``estimator_stderr`` and ``uncertainty_hvps``.

    Args:
        model: the trained model.
        probe: the fixed samples.
        method: ``"hutch++"``, ``"hutchinson"``, ``"exact"`` or ``"auto"`` (as in :func:`hessian_trace`).
        num_hvps: budget of Hessian-vector products per firing (at least 6 for Hutch++ and ``"auto"``, 2 for
            Hutchinson).
        curvature: ``"hessian"``, ``"ggn"``, ``"fisher"`` or ``"empirical_fisher"`` (``"exact"`` is for the Hessian).
        uncertainty: ``"jackknife"``: ``stderr`` is the jackknife standard error over the probe's samples
            (``jackknife_chunks`` more trace estimates per firing, with the same random vectors), the
            estimator's own goes to ``estimator_stderr`` (see :func:`~ignite_landscape.hessian_trace`).
        jackknife_chunks: ``K``, the chunks of the jackknife (``2 ≤ K ≤`` the probe's samples).
        **kwargs: ``name``, ``params``, ``seed``, ``on_error``, ``progress``.

    Example:
        >>> import torch
        >>> from ignite_landscape import Probe
        >>> probe = Probe((torch.randn(8, 2), torch.randint(0, 2, (8,))), torch.nn.functional.cross_entropy)
        >>> HessianTrace(torch.nn.Linear(2, 2), probe).name
        'trace'
    """

    default_name = "trace"

    def __init__(
        self,
        model: nn.Module,
        probe: Probe,
        *,
        method: str = "hutch++",
        num_hvps: int = 60,
        curvature: str = "hessian",
        uncertainty: str | None = None,
        jackknife_chunks: int = JACKKNIFE_CHUNKS,
        **kwargs: Any,
    ) -> None:
        # The same checks hessian_trace() makes: a budget too small for the method fails here, not at every firing.
        TraceOptions(method, num_hvps)
        check_curvature(curvature)
        if method == "exact" and curvature != "hessian":
            raise ValueError(f"method='exact' computes the Hessian's trace: use curvature='hessian', got {curvature!r}")
        check_uncertainty(uncertainty, jackknife_chunks, probe)
        super().__init__(model, probe, **kwargs)
        self.method = method
        self.num_hvps = num_hvps
        self.curvature = curvature
        self.uncertainty = uncertainty
        self.jackknife_chunks = jackknife_chunks

    def expected_keys(self) -> list[str]:
        return ["value", "stderr"]

    def compute(self, engine: Engine) -> Any:
        return hessian_trace(
            self.model,
            self.probe,
            method=self.method,
            num_hvps=self.num_hvps,
            params=self.params,
            seed=self.seed,
            curvature=self.curvature,
            uncertainty=self.uncertainty,
            jackknife_chunks=self.jackknife_chunks,
        )


class HessianDensity(LandscapeHandler):
    """Hessian eigenvalue density by stochastic Lanczos quadrature.

    Scalars: ``negative_mass``, ``negative_fraction``, ``trace``, ``lambda_max``, ``lambda_min``, ``num_hvps``.

    Args:
        model: the trained model.
        probe: the fixed samples.
        num_steps: Lanczos steps per run.
        num_runs: random start vectors.
        grid_size: points of the smoothed density.
        sigma: Gaussian smoothing width (default 1% of the spectrum's range).
        curvature: ``"hessian"``, ``"ggn"``, ``"fisher"`` or ``"empirical_fisher"``
            (see :mod:`ignite_landscape.curvature`).
        **kwargs: ``name``, ``params``, ``seed``, ``on_error``, ``progress``.

    Example:
        >>> import torch
        >>> from ignite_landscape import Probe
        >>> probe = Probe((torch.randn(8, 2), torch.randint(0, 2, (8,))), torch.nn.functional.cross_entropy)
        >>> HessianDensity(torch.nn.Linear(2, 2), probe, num_steps=4).name
        'density'
    """

    default_name = "density"

    def __init__(
        self,
        model: nn.Module,
        probe: Probe,
        *,
        num_steps: int = 30,
        num_runs: int = 4,
        grid_size: int = 512,
        sigma: float | None = None,
        curvature: str = "hessian",
        **kwargs: Any,
    ) -> None:
        options = DensityOptions(num_steps, num_runs, grid_size, sigma)  # as hessian_density() checks them
        self.curvature = check_curvature(curvature)
        super().__init__(model, probe, **kwargs)
        self.num_steps = num_steps
        self.num_runs = num_runs
        self.grid_size = grid_size
        self.sigma = options.sigma

    def expected_keys(self) -> list[str]:
        return ["negative_mass", "negative_fraction", "trace", "lambda_max", "lambda_min"]

    def compute(self, engine: Engine) -> Any:
        return hessian_density(
            self.model,
            self.probe,
            num_steps=self.num_steps,
            num_runs=self.num_runs,
            grid_size=self.grid_size,
            sigma=self.sigma,
            params=self.params,
            seed=self.seed,
            curvature=self.curvature,
        )
