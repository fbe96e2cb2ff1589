"""Sharpness: how much the probe loss rises within a ball of radius ρ around the current weights.

All variants measure ``L(θ + ε) − L(θ)`` for a perturbation ``ε = T δ`` with ``δ`` in the ball
``‖δ‖ ≤ ρ`` (ℓ2 or ℓ∞). ``T = I`` normally; with ``adaptive=True``, ``T = diag(|θ|)`` as in ASAM
(Kwon et al. 2021), which makes the value invariant to the rescaling symmetries of ReLU networks.

* ``"sam"``: the first-order worst case SAM uses (Foret et al. 2021): ``δ = ρ·Tg/‖Tg‖₂`` (ℓ2) or
  ``δ = ρ·sign(g)`` (ℓ∞), so ``ε = ρ·T²g/‖Tg‖`` (adaptive ℓ2) or ``ε = ρ·g/‖g‖`` (plain ℓ2).
  At an exact minimum (``g = 0``) the step is zero and so is the value.
* ``"ascent"``: the worst case found by projected gradient ascent on ``δ`` inside the ball. It starts
  at the SAM point (a random point on the sphere / a random vertex of the box when ``g = 0``),
  takes ``steps`` steps ``δ ← Π(δ + η_k ρ·u)`` with ``u = Tg/‖Tg‖₂`` (ℓ2) or ``sign(Tg)`` (ℓ∞) and a
  step-size schedule ``η_k`` (cosine from ``step_size`` to ``step_size/10``, or constant), and keeps
  the best point evaluated. On a quadratic at its minimum this is a projected power iteration and
  converges to ``ρ²λ_max/2`` (ℓ2).
* ``"average"``: the mean of ``L(θ + Tδ) − L(θ)`` over ``num_samples`` independent ``δ``, with its
  standard error. ℓ2: ``δ ~ N(0, ρ²/P · I)`` so that ``E‖δ‖₂² = ρ²`` (on a quadratic with Hessian ``A``
  at its minimum the expectation is ``ρ²·tr(A)/(2P)``). ℓ∞: ``δ`` uniform in the box ``[−ρ, ρ]^P``
  (expectation ``ρ²·tr(A)/6`` there).

Every perturbed point is evaluated functionally through the probe session; the model is never
written and is left bit-identical.

Example:
    >>> import torch
    >>> from ignite_landscape import Probe
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    >>> probe = Probe((torch.randn(32, 4), torch.randint(0, 3, (32,))), torch.nn.functional.cross_entropy)
    >>> res = sharpness(model, probe, rho=0.05, method="sam")
    >>> res.value == res.perturbed_loss - res.base_loss
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ignite_landscape.linalg import generator
from ignite_landscape.params import ParamsArg
from ignite_landscape.probe import Probe

__all__ = ["SharpnessResult", "sharpness", "SHARPNESS_METHODS", "SHARPNESS_NORMS", "SCHEDULES"]

SHARPNESS_METHODS = ("sam", "ascent", "average")
SHARPNESS_NORMS = ("l2", "linf")
SCHEDULES = ("cosine", "constant")


@dataclass
class SharpnessResult:
    """A sharpness value together with everything needed to read it unambiguously.

    Attributes:
        value: ``perturbed_loss − base_loss``.
        base_loss: ``L(θ)``.
        perturbed_loss: ``L(θ + ε)`` at the chosen point ("sam", "ascent") or the mean over samples ("average").
        rho: radius of the ball.
        method: ``"sam"``, ``"ascent"`` or ``"average"``.
        norm: ``"l2"`` or ``"linf"``.
        adaptive: whether ``ε = diag(|θ|)·δ``.
        steps: gradient steps taken (1 for "sam", the ascent steps used, 0 for "average").
        stderr: standard error of the mean for "average", else ``None``.
        num_grads: gradient passes over the probe.
        num_forwards: loss-only passes over the probe.
        num_samples: random perturbations averaged ("average"), else 0.
        perturbation_norm: ``‖δ‖`` (in the chosen norm) of the reported point; for "average" the
            root-mean-square ‖δ‖₂ (ℓ2) or max |δ_i| (ℓ∞) over samples.
    """

    value: float
    base_loss: float
    perturbed_loss: float
    rho: float
    method: str
    norm: str
    adaptive: bool
    steps: int
    stderr: float | None
    num_grads: int
    num_forwards: int
    num_samples: int = 0
    perturbation_norm: float = 0.0

    def scalars(self) -> dict[str, float]:
        """Named scalars: ``value``, ``base_loss``, ``perturbed_loss``, ``rho``, ``steps`` (and ``stderr``)."""
        out = {
            "value": self.value,
            "base_loss": self.base_loss,
            "perturbed_loss": self.perturbed_loss,
            "rho": self.rho,
            "steps": float(self.steps),
            "num_grads": float(self.num_grads),
            "num_forwards": float(self.num_forwards),
        }
        if self.stderr is not None:
            out["stderr"] = self.stderr
        return out


def _check(rho: float, method: str, norm: str, steps: int, num_samples: int, step_size: float, schedule: str) -> None:
    if isinstance(rho, bool) or not isinstance(rho, (int, float)):
        raise TypeError(f"rho must be a number, got {type(rho).__name__}")
    if not (math.isfinite(rho) and rho > 0):
        raise ValueError(f"rho must be positive and finite, got {rho}")
    if method not in SHARPNESS_METHODS:
        raise ValueError(f"method must be one of {SHARPNESS_METHODS}, got {method!r}")
    if norm not in SHARPNESS_NORMS:
        raise ValueError(f"norm must be one of {SHARPNESS_NORMS}, got {norm!r}")
    for name, val, low in (("steps", steps, 1), ("num_samples", num_samples, 2)):
        if isinstance(val, bool) or not isinstance(val, int):
            raise TypeError(f"{name} must be an int, got {type(val).__name__}")
        if val < low:
            raise ValueError(f"{name} must be at least {low}, got {val}")
    if not (isinstance(step_size, (int, float)) and math.isfinite(step_size) and step_size > 0):
        raise ValueError(f"step_size must be positive, got {step_size!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")


def _norm(v: torch.Tensor, norm: str) -> float:
    return float(v.abs().max()) if norm == "linf" else float(torch.linalg.vector_norm(v))


def _ascent_direction(tg: torch.Tensor, norm: str) -> torch.Tensor | None:
    """Unit steepest-ascent direction for the gradient ``tg`` w.r.t. ``δ`` (``None`` if it vanishes)."""
    if norm == "linf":
        u = torch.sign(tg)
        return u if bool(u.abs().sum() > 0) else None
    n = torch.linalg.vector_norm(tg)
    return tg / n if bool(n > 0) and bool(torch.isfinite(n)) else None


def _project(delta: torch.Tensor, rho: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return delta.clamp(-rho, rho)
    n = float(torch.linalg.vector_norm(delta))
    return delta * (rho / n) if n > rho else delta


def sharpness(
    model: nn.Module,
    probe: Probe,
    rho: float = 0.05,
    method: str = "sam",
    norm: str = "l2",
    adaptive: bool = False,
    *,
    steps: int = 10,
    num_samples: int = 10,
    seed: int = 0,
    params: ParamsArg = None,
    step_size: float = 1.0,
    schedule: str = "cosine",
) -> SharpnessResult:
    """Sharpness ``L(θ + ε) − L(θ)`` of the probe loss in a ρ-ball (see the module docstring).

    Args:
        model: the model; left exactly as it was.
        probe: the fixed samples and loss.
        rho: radius of the ball (of ``δ``; ``ε = diag(|θ|)δ`` when ``adaptive``).
        method: ``"sam"``, ``"ascent"`` or ``"average"``.
        norm: ``"l2"`` or ``"linf"``.
        adaptive: scale the perturbation elementwise by ``|θ|`` (ASAM).
        steps: ascent steps for ``"ascent"`` (each costs one gradient pass).
        num_samples: random perturbations for ``"average"`` (each costs one forward pass).
        seed: seed of the random start ("ascent" at a stationary point) and of the samples ("average").
        params: restrict the perturbation to a subset of parameters.
        step_size: first ascent step as a fraction of ρ.
        schedule: ``"cosine"`` (step size decays to a tenth) or ``"constant"``.

    Returns:
        A :class:`SharpnessResult`.

    Raises:
        ValueError: for ``rho ≤ 0``, an unknown method/norm/schedule, ``steps < 1`` or ``num_samples < 2``.
    """
    _check(rho, method, norm, steps, num_samples, step_size, schedule)
    rho = float(rho)
    with probe.session(model, params) as s:
        theta = s.theta
        scale = theta.abs() if adaptive else None

        def eps(delta: torch.Tensor) -> torch.Tensor:
            return delta * scale if scale is not None else delta

        def tgrad(g: torch.Tensor) -> torch.Tensor:
            # Gradient with respect to δ of L(θ + Tδ) is T·g.
            return g * scale if scale is not None else g

        stderr = None
        used = 0
        count = 0
        if method == "average":
            base = s.loss()
            gen = generator(seed)
            diffs = []
            sq = []
            for _ in range(num_samples):
                if norm == "l2":
                    z = torch.randn(theta.numel(), generator=gen, dtype=torch.float64)
                    delta = z * (rho / math.sqrt(theta.numel()))
                else:
                    delta = (torch.rand(theta.numel(), generator=gen, dtype=torch.float64) * 2 - 1) * rho
                delta = delta.to(device=theta.device, dtype=theta.dtype)
                sq.append(_norm(delta, norm))
                diffs.append(s.loss(theta + eps(delta)) - base)
            d = torch.tensor(diffs, dtype=torch.float64)
            value = float(d.mean())
            stderr = float(d.std(unbiased=True) / math.sqrt(num_samples))
            perturbed = base + value
            count = num_samples
            pnorm = math.sqrt(sum(v * v for v in sq) / len(sq)) if norm == "l2" else max(sq)
        else:
            base, g = s.loss_and_grad()
            u = _ascent_direction(tgrad(g), norm)
            if method == "sam":
                delta = rho * u if u is not None else torch.zeros_like(theta)
                perturbed = s.loss(theta + eps(delta)) if u is not None else base
                used = 1
            else:
                if u is None:
                    # A stationary point: start from a random point on the sphere / vertex of the box.
                    gen = generator(seed)
                    r = torch.randn(theta.numel(), generator=gen, dtype=torch.float64).to(theta)
                    u = _ascent_direction(r, norm)
                delta = rho * u
                best_loss, best_delta = -math.inf, delta
                for k in range(steps):
                    loss_k, g_k = s.loss_and_grad(theta + eps(delta))
                    used += 1
                    if loss_k > best_loss:
                        best_loss, best_delta = loss_k, delta
                    if k == steps - 1:
                        break
                    u = _ascent_direction(tgrad(g_k), norm)
                    if u is None:
                        break  # a stationary point of the perturbed loss: no ascent direction left
                    frac = k / max(steps - 2, 1)
                    eta = (
                        step_size
                        if schedule == "constant"
                        else step_size * (0.1 + 0.45 * (1 + math.cos(math.pi * frac)))
                    )
                    new = _project(delta + eta * rho * u, rho, norm)
                    if torch.equal(new, delta):
                        break  # a fixed point of projected ascent
                    delta = new
                perturbed, delta = best_loss, best_delta
            pnorm = _norm(delta, norm)
        return SharpnessResult(
            value=perturbed - base,
            base_loss=base,
            perturbed_loss=perturbed,
            rho=rho,
            method=method,
            norm=norm,
            adaptive=bool(adaptive),
            steps=used,
            stderr=stderr,
            num_grads=s.num_grads,
            num_forwards=s.num_forwards,
            num_samples=count,
            perturbation_norm=pnorm,
        )
