"""The optimizer side of the edge-of-stability view.

The stability threshold of SGD and Adam, Adam's preconditioner, and the model mode and batch size the
curvature one optimizer step sees is measured in.

Example:
    >>> import torch
    >>> model = torch.nn.Linear(2, 1)
    >>> round(stability_threshold(torch.optim.SGD(model.parameters(), lr=0.1), {"lr": 0.1, "momentum": 0.9}), 9)
    38.0
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ignite_landscape.params import ParamSpace, unwrap_model
from ignite_landscape.probe import Probe

__all__ = ["adam_preconditioner", "stability_threshold", "threshold_definition"]

logger = logging.getLogger("ignite_landscape.handlers.spectrum")


def is_adam(optimizer: torch.optim.Optimizer) -> bool:
    return isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW))


def param_groups(optimizer: torch.optim.Optimizer, model: nn.Module, space: ParamSpace) -> list[dict[str, Any]]:
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
    if is_adam(optimizer):
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
    groups = param_groups(optimizer, model, space)
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


def measured_mode(
    model_mode: str | None, model: nn.Module, probe: Probe, optimizer: torch.optim.Optimizer | None, name: str
) -> str:
    """The mode HessianSpectrum measures in (see its ``model_mode`` argument, checked by its options)."""
    if model_mode is not None:
        return model_mode
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


def leading_rows(batch: Any) -> int | None:
    """Rows of the first tensor in a batch (tuple, list, dict or tensor), or ``None``."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() > 0 else None
    items = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (tuple, list)) else ()
    for item in items:
        rows = leading_rows(item)
        if rows is not None:
            return rows
    return None


def threshold_definition(optimizer: torch.optim.Optimizer, group: Mapping[str, Any]) -> str:
    """The ``stability_threshold`` definition in words, with this group's step size and momentum."""
    lr = float(group["lr"])
    if isinstance(optimizer, torch.optim.SGD):
        beta = float(group.get("momentum", 0.0))
        if beta == 0:
            return f"2/η with η = {lr:g}, the step size of the optimizer's group 0"
        if group.get("nesterov", False):
            form = "(2+2β)/(η(1+2β)) (Nesterov)"
        elif float(group.get("dampening", 0.0)) > 0:
            form = "(2+2β)/(η(1−d)) with dampening d = " + f"{float(group['dampening']):g}"
        else:
            form = "(2+2β)/η"
        return f"{form} with η = {lr:g}, β = {beta:g}: the step size and momentum of the optimizer's group 0"
    if is_adam(optimizer):
        beta1 = float(group["betas"][0])
        return f"(2+2β₁)/((1−β₁)η) with η = {lr:g}, β₁ = {beta1:g} (Adam, optimizer's group 0)"
    return f"unknown for {type(optimizer).__name__}"
