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

import dataclasses
import math
from typing import Any

from ignite.engine import Engine
from torch import nn

from ignite_landscape.handlers.base import LandscapeHandler
from ignite_landscape.measures.sharpness import SharpnessOptions, _sharpness
from ignite_landscape.probe import Probe

__all__ = ["Sharpness"]


class Sharpness(LandscapeHandler):
    """Sharpness of the probe loss (SAM step, worst case by ascent, or average over random perturbations).

    Scalars: ``value`` (= ``perturbed_loss − base_loss``), ``base_loss``, ``perturbed_loss``, ``rho``,
    ``steps``, ``num_grads``, ``num_forwards`` (and ``stderr`` for ``"average"``, ``converged`` for
    ``"ascent"``). Attach several with different ``name=`` to compare variants (e.g. ``"sharpness_ascent"``).
    The options mean what they mean in :func:`~ignite_landscape.sharpness` and are validated here, once,
    by the same :class:`~ignite_landscape.measures.sharpness.SharpnessOptions`.

    Args:
        model: the trained model.
        probe: the fixed samples.
        rho: radius of the ball (per-coordinate standard deviation for ``"average"``).
        method: ``"sam"``, ``"ascent"`` or ``"average"``.
        norm: ``"l2"`` or ``"linf"``.
        adaptive: ``False``, ``"asam"`` (Kwon et al. 2021) or ``"andriushchenko2023"``.
        steps: cap on ascent steps (``"ascent"``).
        tol: relative change of the perturbed loss at which the ascent stops.
        num_samples: random perturbations (``"average"``).
        step_size: relative ascent step size (``inf``: jump to the boundary).
        schedule: ascent step-size schedule for a finite ``step_size``, ``"cosine"`` or ``"constant"``.
        adaptive_eta: ASAM's η.
        m: m-sharpness: the mean over disjoint chunks of ``m`` probe samples of each chunk's sharpness
            (scalars ``stderr`` over chunks, ``m``, ``num_chunks``); ``None``: the whole probe.
        uncertainty: ``"jackknife"``: ``stderr`` is the jackknife standard error over the probe's samples
            (``jackknife_chunks`` more runs per firing).
        jackknife_chunks: ``K``, the chunks of the jackknife.
        **kwargs: ``name``, ``params``, ``seed``, ``on_error``, ``progress`` (see :class:`LandscapeHandler`).

    Raises:
        TypeError, ValueError: for an option that cannot work, naming it.
    """

    default_name = "sharpness"

    def __init__(
        self,
        model: nn.Module,
        probe: Probe,
        rho: float = 0.05,
        method: str = "sam",
        norm: str = "l2",
        adaptive: str | bool = False,
        *,
        steps: int = 100,
        tol: float = 1e-3,
        num_samples: int = 10,
        step_size: float = math.inf,
        schedule: str = "cosine",
        adaptive_eta: float = 0.01,
        m: int | None = None,
        uncertainty: str | None = None,
        jackknife_chunks: int = 10,
        **kwargs: Any,
    ) -> None:
        self.options = SharpnessOptions(
            rho=rho,
            method=method,
            norm=norm,
            adaptive=adaptive,
            steps=steps,
            tol=tol,
            num_samples=num_samples,
            step_size=step_size,
            schedule=schedule,
            adaptive_eta=adaptive_eta,
            m=m,
            uncertainty=uncertainty,
            jackknife_chunks=jackknife_chunks,
        )
        super().__init__(model, probe, **kwargs)
        self.options.check_probe(probe)
        # handler.rho, handler.method, ...: the validated (normalised) options, for reading.
        for f in dataclasses.fields(self.options):
            setattr(self, f.name, getattr(self.options, f.name))

    def expected_keys(self) -> list[str]:
        return ["value", "base_loss", "perturbed_loss"]

    def compute(self, engine: Engine) -> Any:
        return _sharpness(self.model, self.probe, self.options, self.seed, self.params)
