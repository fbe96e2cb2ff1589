"""Handler for the sharpness ``L(θ + ε) − L(θ)`` of the probe loss in a ρ-ball.

Example:
    >>> import torch
    >>> from ignite.engine import Engine
    >>> from ignite_landscape import Probe
    >>> model = torch.nn.Linear(4, 3)
    >>> probe = Probe((torch.randn(16, 4), torch.randint(0, 3, (16,))), torch.nn.functional.cross_entropy)
    >>> trainer = Engine(lambda engine, batch: None)
    >>> _ = Sharpness(model, probe, rho=0.05).attach(trainer)
    >>> _ = trainer.run([0], max_epochs=1)
    >>> trainer.state.metrics["landscape/sharpness/value"] >= 0
    True
"""

from __future__ import annotations

from typing import Any

from ignite.engine import Engine
from torch import nn

from ignite_landscape.handlers.base import LandscapeHandler, _check_choice, _check_int, _check_positive
from ignite_landscape.measures.sharpness import SCHEDULES, SHARPNESS_METHODS, SHARPNESS_NORMS, sharpness
from ignite_landscape.probe import Probe

__all__ = ["Sharpness"]


class Sharpness(LandscapeHandler):
    """Sharpness of the probe loss (SAM step, worst case by ascent, or average over random perturbations).

    Scalars: ``value`` (= ``perturbed_loss − base_loss``), ``base_loss``, ``perturbed_loss``, ``rho``,
    ``steps``, ``num_grads``, ``num_forwards`` (and ``stderr`` for ``"average"``). Attach several with
    different ``name=`` to compare variants (e.g. ``"sharpness_ascent"``).

    Args:
        model: the trained model.
        probe: the fixed samples.
        rho: radius of the ball.
        method: ``"sam"``, ``"ascent"`` or ``"average"``.
        norm: ``"l2"`` or ``"linf"``.
        adaptive: ASAM's elementwise ``|θ|`` scaling.
        steps: ascent steps (``"ascent"``).
        num_samples: random perturbations (``"average"``).
        step_size: relative ascent step size (``"ascent"``).
        schedule: ascent step-size schedule, ``"cosine"`` or ``"constant"``.
        **kwargs: ``name``, ``params``, ``seed``, ``on_error``, ``progress`` (see :class:`LandscapeHandler`).
    """

    default_name = "sharpness"

    def __init__(
        self,
        model: nn.Module,
        probe: Probe,
        rho: float = 0.05,
        method: str = "sam",
        norm: str = "l2",
        adaptive: bool = False,
        *,
        steps: int = 10,
        num_samples: int = 10,
        step_size: float = 1.0,
        schedule: str = "cosine",
        **kwargs: Any,
    ) -> None:
        super().__init__(model, probe, **kwargs)
        self.rho = _check_positive("rho", rho)
        self.method = _check_choice("method", method, SHARPNESS_METHODS)
        self.norm = _check_choice("norm", norm, SHARPNESS_NORMS)
        if not isinstance(adaptive, bool):
            raise TypeError(f"adaptive must be a bool, got {type(adaptive).__name__}")
        self.adaptive = adaptive
        self.steps = _check_int("steps", steps, 1)
        self.num_samples = _check_int("num_samples", num_samples, 2)
        self.step_size = _check_positive("step_size", step_size)
        self.schedule = _check_choice("schedule", schedule, SCHEDULES)

    def expected_keys(self) -> list[str]:
        return ["value", "base_loss", "perturbed_loss"]

    def compute(self, engine: Engine) -> Any:
        return sharpness(
            self.model,
            self.probe,
            rho=self.rho,
            method=self.method,
            norm=self.norm,
            adaptive=self.adaptive,
            steps=self.steps,
            num_samples=self.num_samples,
            seed=self.seed,
            params=self.params,
            step_size=self.step_size,
            schedule=self.schedule,
        )
