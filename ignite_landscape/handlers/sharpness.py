"""Handler for the sharpness ``L(θ + ε) − L(θ)`` of the probe loss in a ρ-ball.

Example:
    Two variants side by side, told apart by their names:

    >>> import torch
    >>> from ignite.engine import Engine, Events
    >>> import ignite_landscape as il
    >>> classifier = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    >>> probe = il.Probe((torch.randn(32, 5), torch.randint(0, 4, (32,))), torch.nn.CrossEntropyLoss())
    >>> loop = Engine(lambda engine, batch: None)
    >>> for handler in (Sharpness(classifier, probe), Sharpness(classifier, probe, 0.05, "ascent", name="worst")):
    ...     _ = handler.attach(loop, Events.COMPLETED)
    >>> _ = loop.run([0], max_epochs=1)
    >>> sorted(key for key in loop.state.metrics if key.endswith("/value"))
    ['landscape/sharpness/value', 'landscape/worst/value']
"""

from __future__ import annotations

from ignite_landscape.handlers.measure import MeasureHandler
from ignite_landscape.measures.sharpness import SharpnessOptions, measure_sharpness

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
    measure = staticmethod(measure_sharpness)
    positional = ("rho", "method", "norm", "adaptive")

    def expected_keys(self) -> list[str]:
        """``value``, ``base_loss`` and ``perturbed_loss``, recorded as NaN when the first firing fails."""
        return ["value", "base_loss", "perturbed_loss"]
