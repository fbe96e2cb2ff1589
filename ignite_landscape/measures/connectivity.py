"""Linear mode connectivity: loss and error along the straight line between two sets of weights.

The state at ``α`` is ``(1 − α)·a + α·b`` for every floating-point entry of the state dicts
(parameters and buffers such as BatchNorm running statistics; integer entries are taken from
``a``), computed with :func:`torch.lerp`, which returns ``a`` and ``b`` exactly at ``α = 0`` and ``1``.
The barrier of a curve ``f`` (loss or top-1 error) is measured against the chord between the end
values, as Entezari et al. (2022, "The role of permutation invariance in linear mode connectivity of
neural networks") define it:

    ``max over α of f(α) − [(1 − α)·f(0) + α·f(1)]``,

so it is 0 for a curve at or below the chord and never negative (the ends are on the grid). (Frankle
et al. (2020) measure instability against the mean of the end values instead; the two agree when
both ends have the same value.)

Interpolating BatchNorm running statistics linearly gives the wrong statistics for the
interpolated weights, and with them barriers that are not there. With ``bn_loader`` the statistics
are recomputed at every ``α``: running statistics reset, ``momentum=None`` (an exact cumulative
average), a forward pass in train mode over ``bn_batches`` batches. This happens on one private
copy of the model made once per call; the user's model is never written.

Example:
    >>> import torch
    >>> from ignite_landscape import Probe
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> a, b = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    >>> probe = Probe((torch.randn(32, 4), torch.randint(0, 3, (32,))), torch.nn.functional.cross_entropy)
    >>> res = interpolate(a, a.state_dict(), b.state_dict(), probe, steps=5)
    >>> res.alphas.tolist(), res.loss[0].item() == probe.evaluate(a).loss
    ([0.0, 0.25, 0.5, 0.75, 1.0], True)
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ignite_landscape import distributed
from ignite_landscape.execution import probe_execution
from ignite_landscape.params import strip_wrapper_prefixes, unwrap_model
from ignite_landscape.probe import Probe
from ignite_landscape.restore import RNGState
from ignite_landscape.results import Curve, Result
from ignite_landscape.validation import check_int

__all__ = ["Interpolation", "InterpolationOptions", "interpolate", "measure_interpolate", "barrier"]

logger = logging.getLogger(__name__)


@dataclass
class Interpolation(Result):
    """Loss and error along ``(1 − α)·a + α·b``.

    Attributes:
        alphas: float64 grid from 0 to 1, both ends exact.
        loss: float64 probe loss at each α.
        error: float64 top-1 error at each α, or ``None`` when the targets are not class labels.
        loss_barrier: barrier of the loss curve.
        error_barrier: barrier of the error curve, or ``None``.
        bn_recalibrated: whether BatchNorm statistics were recomputed at each α.
    """

    kind: ClassVar[str] = "connectivity"

    alphas: torch.Tensor
    loss: torch.Tensor
    error: torch.Tensor | None
    loss_barrier: float
    error_barrier: float | None
    bn_recalibrated: bool = False

    def scalars(self) -> dict[str, float]:
        """Named scalars: ``loss_barrier``, ``loss_a``, ``loss_b``, ``max_loss`` (and ``error_barrier``)."""
        out = {
            "loss_barrier": self.loss_barrier,
            "loss_a": float(self.loss[0]),
            "loss_b": float(self.loss[-1]),
            "max_loss": float(self.loss.max()),
        }
        if self.error is not None and self.error_barrier is not None:
            out["error_barrier"] = self.error_barrier
            out["error_a"] = float(self.error[0])
            out["error_b"] = float(self.error[-1])
        return out

    def curves(self) -> dict[str, Curve]:
        """``interpolation``: the loss over α (with the error when known)."""
        extra: dict[str, object] = {"loss_barrier": self.loss_barrier, "bn_recalibrated": bool(self.bn_recalibrated)}
        if self.error is not None:
            extra["error"] = self.error
        return {"interpolation": Curve("line", x=self.alphas, y=self.loss, extra=extra, xlabel="α", ylabel="loss")}

    def definitions(self) -> dict[str, str]:
        """One sentence per scalar and curve key, with the grid of α and the BatchNorm treatment."""
        bn = "BatchNorm statistics recomputed at every α" if self.bn_recalibrated else "buffers interpolated too"
        path = f"the straight line (1 − α)·a + α·b at {self.alphas.numel()} values of α in [0, 1] ({bn})"
        chord = "max over α of f(α) − [(1 − α)·f(0) + α·f(1)] (Entezari et al. 2022; 0 at or below the chord)"
        out = {
            "loss_barrier": f"barrier of the probe loss f along {path}: {chord}",
            "loss_a": "probe loss at α = 0 (the weights a)",
            "loss_b": "probe loss at α = 1 (the weights b)",
            "max_loss": f"largest probe loss along {path}",
            "interpolation": f"probe loss (and top-1 error when known) along {path}",
        }
        if self.error is not None and self.error_barrier is not None:
            out["error_barrier"] = f"barrier of the top-1 error f along {path}: {chord}"
            out["error_a"] = "top-1 error on the probe at α = 0 (the weights a)"
            out["error_b"] = "top-1 error on the probe at α = 1 (the weights b)"
        return out


def barrier(alphas: torch.Tensor, values: torch.Tensor) -> float:
    """``max_α f(α) − [(1 − α)·f(0) + α·f(1)]`` for a curve sampled on ``alphas`` (ends at 0 and 1).

    Example:
        >>> barrier(torch.tensor([0.0, 0.5, 1.0]), torch.tensor([1.0, 3.0, 2.0]))
        1.5
    """
    alphas = alphas.double()
    values = values.double()
    chord = (1 - alphas) * values[0] + alphas * values[-1]
    return float((values - chord).max())


@dataclass(frozen=True)
class InterpolationOptions:
    """The options of :func:`interpolate`, validated once.

    The :class:`~ignite_landscape.ModeConnectivity` handler builds the same object at construction.

    Attributes:
        steps: number of α values over ``[0, 1]`` (``≥ 2``).
        bn_loader: batches to recompute BatchNorm statistics at every α, or ``None``.
        bn_batches: how many batches of ``bn_loader`` to use (``None``: all).

    Raises:
        TypeError: for a non-int ``steps``/``bn_batches`` or a ``bn_loader`` that is not iterable.
        ValueError: for ``steps < 2`` or ``bn_batches < 1``.
    """

    steps: int = 11
    bn_loader: Iterable[Any] | None = None
    bn_batches: int | None = None

    def __post_init__(self) -> None:
        """Check every option once, naming the one that cannot work (``ValueError``/``TypeError``)."""
        check_int("steps", self.steps, 2)
        if self.bn_batches is not None:
            if isinstance(self.bn_batches, bool) or not isinstance(self.bn_batches, int):
                raise TypeError(f"bn_batches must be an int or None, got {type(self.bn_batches).__name__}")
            check_int("bn_batches", self.bn_batches, 1)
        if self.bn_loader is not None and not isinstance(self.bn_loader, Iterable):
            raise TypeError(f"bn_loader must be an iterable of batches, got {type(self.bn_loader).__name__}")


def _state_of(weights: Any, name: str) -> dict[str, torch.Tensor]:
    if isinstance(weights, nn.Module):
        return dict(unwrap_model(weights).state_dict())
    if isinstance(weights, Mapping):
        return dict(weights)
    raise TypeError(f"{name} must be a state dict or an nn.Module, got {type(weights).__name__}")


def _check_state(state: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor], name: str) -> None:
    missing = [k for k in reference if k not in state]
    extra = [k for k in state if k not in reference]
    if missing or extra:
        raise ValueError(f"{name} does not match the model's state dict: missing {missing[:5]}, unexpected {extra[:5]}")
    for k, ref in reference.items():
        t = state[k]
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}[{k!r}] must be a tensor, got {type(t).__name__}")
        if t.shape != ref.shape:
            raise ValueError(f"{name}[{k!r}] has shape {tuple(t.shape)}, the model's {tuple(ref.shape)}")


def _bn_modules(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def interpolate(
    model: nn.Module,
    weights_a: Mapping[str, torch.Tensor] | nn.Module,
    weights_b: Mapping[str, torch.Tensor] | nn.Module,
    probe: Probe,
    steps: int = 11,
    *,
    bn_loader: Iterable[Any] | None = None,
    bn_batches: int | None = None,
) -> Interpolation:
    """Loss and top-1 error of ``model``'s architecture along the line from ``weights_a`` to ``weights_b``.

    Args:
        model: the architecture (its own weights are not used and are left untouched).
        weights_a: the state at ``α = 0``: a state dict of ``model``'s kind, or a model.
        weights_b: the state at ``α = 1``.
        probe: the fixed samples and loss.
        steps: number of α values, evenly spaced over ``[0, 1]`` (``≥ 2``).
        bn_loader: batches (read through the probe's ``prepare_batch``) to recompute BatchNorm
            statistics at every α; ``None`` interpolates the running statistics instead. Under
            ``ignite.distributed`` each rank may pass its own share (``DistributedSampler``): the
            statistics are averaged over all ranks' batches.
        bn_batches: how many batches of ``bn_loader`` to use (default: all).

    Returns:
        An :class:`Interpolation`.

    Raises:
        ValueError: if ``steps < 2``, the state dicts do not match ``model`` or ``bn_batches < 1``.
        TypeError: if the weights are neither state dicts nor models.
    """
    options = InterpolationOptions(steps, bn_loader, bn_batches)
    return measure_interpolate(model, probe, options, weights_a=weights_a, weights_b=weights_b)


def measure_interpolate(
    model: nn.Module,
    probe: Probe,
    options: InterpolationOptions,
    *,
    weights_a: Mapping[str, torch.Tensor] | nn.Module,
    weights_b: Mapping[str, torch.Tensor] | nn.Module,
) -> Interpolation:
    """:func:`interpolate` on validated options (the :class:`~ignite_landscape.ModeConnectivity` handler runs it).

    Deterministic over every parameter: no ``seed`` or ``params``.

    Example:
        >>> a, b = torch.nn.Linear(3, 1), torch.nn.Linear(3, 1)
        >>> probe = Probe((torch.randn(8, 3), torch.randn(8, 1)), torch.nn.MSELoss())
        >>> res = measure_interpolate(a, probe, InterpolationOptions(steps=3), weights_a=a, weights_b=b)
        >>> res.alphas.tolist(), res.error is None
        ([0.0, 0.5, 1.0], True)
    """
    steps, bn_loader, bn_batches = options.steps, options.bn_loader, options.bn_batches
    model = unwrap_model(model)
    reference = model.state_dict()
    # State dicts saved from a DDP or torch.compile wrapper carry its key prefixes: read them as the model's.
    a = strip_wrapper_prefixes(_state_of(weights_a, "weights_a"), reference)
    b = strip_wrapper_prefixes(_state_of(weights_b, "weights_b"), reference)
    _check_state(a, reference, "weights_a")
    _check_state(b, reference, "weights_b")

    alphas = torch.linspace(0.0, 1.0, steps, dtype=torch.float64)
    alphas[0], alphas[-1] = 0.0, 1.0
    param_names = [n for n, _ in model.named_parameters()]
    buffer_names = [n for n, _ in model.named_buffers() if n in reference]

    def state_at(alpha: float) -> dict[str, torch.Tensor]:
        out = {}
        for k, ref in reference.items():
            ta, tb = a[k].detach(), b[k].detach()
            if ta.is_floating_point():
                out[k] = torch.lerp(ta.to(ref), tb.to(ref), alpha)
            else:
                out[k] = ta.to(ref.device).clone()
        return out

    recalibrate = bn_loader is not None and bool(_bn_modules(model))
    if bn_loader is not None and not recalibrate:
        logger.info("interpolate: the model has no BatchNorm layer; bn_loader is not used")
    losses, errors = [], []
    classify = True
    rng = RNGState()
    try:
        work = copy.deepcopy(model) if recalibrate else model
        if recalibrate:
            for m in _bn_modules(work):
                m.momentum = None
        session = None if recalibrate else probe.session(model, param_names)
        for alpha in alphas.tolist():
            state = state_at(alpha)
            if session is None:
                _recalibrate(work, state, bn_loader, bn_batches, probe)
                ev = probe.evaluate(work)
            else:
                # The interpolated buffers too (BatchNorm running statistics), not the model's own.
                ev = session.evaluate(
                    [state[n] for n in session.space.names], buffers={n: state[n] for n in buffer_names}
                )
            losses.append(ev.loss)
            if ev.error is None:
                classify = False
            else:
                errors.append(ev.error)
    finally:
        rng.restore()
    loss = torch.tensor(losses, dtype=torch.float64)
    error = torch.tensor(errors, dtype=torch.float64) if classify else None
    return Interpolation(
        alphas=alphas,
        loss=loss,
        error=error,
        loss_barrier=barrier(alphas, loss),
        error_barrier=barrier(alphas, error) if error is not None else None,
        bn_recalibrated=recalibrate,
    )


def _recalibrate(
    work: nn.Module, state: dict[str, torch.Tensor], loader: Iterable[Any], batches: int | None, probe: Probe
) -> None:
    """Load ``state`` into the private copy and recompute its BatchNorm statistics on ``loader``.

    Under a process group each rank may read its own batches (a ``DistributedSampler``): the ranks'
    cumulative averages are then combined, weighted by their batch counts, into the average over every
    rank's batches, which one process reading all of them would compute.
    """
    with torch.no_grad():
        work.load_state_dict(state)
        bns = [m for m in _bn_modules(work) if m.running_mean is not None and m.running_var is not None]
        for m in bns:
            m.reset_running_stats()
        # Only BatchNorm in train mode: dropout stays off, so the statistics are deterministic.
        work.eval()
        for m in bns:
            m.train()
        device = next(work.parameters()).device
        seen = 0
        # Statistics of the float32 function, as the probe measures it, even inside a training autocast region.
        with distributed.Lockstep() as step, probe_execution(work, device):
            for i, batch in enumerate(loader):
                if batches is not None and i >= batches:
                    break
                x, _ = probe.prepare_batch(batch, device, False)
                work(*(x if isinstance(x, tuple) else (x,)))
                seen += 1
        work.eval()
        if distributed.world_size() == 1:
            if seen == 0:
                raise ValueError("bn_loader yielded no batches")
            return
        parts = [torch.tensor([float(seen)], dtype=torch.float64, device=device)]
        for m in bns:
            parts += [m.running_mean.double() * seen, m.running_var.double() * seen]
        (total,) = step.all_reduce(torch.cat(parts))
        count = float(total[0])
        if count == 0:
            raise ValueError("bn_loader yielded no batches on any rank")
        sums = total[1:].split([t.numel() for t in parts[1:]])
        for k, m in enumerate(bns):
            m.running_mean.copy_(sums[2 * k] / count)
            m.running_var.copy_(sums[2 * k + 1] / count)
            if m.num_batches_tracked is not None:
                m.num_batches_tracked.fill_(int(count))
