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

from ignite_landscape.handlers.measure import MeasureHandler
from ignite_landscape.measures.sharpness import SharpnessOptions, _sharpness

__all__ = ["Sharpness"]


class Sharpness(MeasureHandler):
    """Sharpness of the probe loss (SAM step, worst case by ascent, or average over random perturbations).

    Scalars: ``value`` (= ``perturbed_loss − base_loss``), ``base_loss``, ``perturbed_loss``, ``rho``,
    ``steps``, ``num_grads``, ``num_forwards`` (and ``stderr`` for ``"average"``, ``converged`` for
    ``"ascent"``). Attach several with different ``name=`` to compare variants (e.g. ``"sharpness_ascent"``).
    The options are those of :func:`~ignite_landscape.sharpness`, declared and validated once by
    :class:`~ignite_landscape.measures.sharpness.SharpnessOptions`.

    Raises:
        TypeError, ValueError: for an option that cannot work, naming it.
    """

    default_name = "sharpness"
    options_type = SharpnessOptions
    measure = staticmethod(_sharpness)
    positional = ("rho", "method", "norm", "adaptive")

    def expected_keys(self) -> list[str]:
        return ["value", "base_loss", "perturbed_loss"]
