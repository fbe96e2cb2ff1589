"""Ignite handlers: run a landscape measure on engine events and record the results.

Every handler is built as ``Handler(model, probe, **options)`` and attached with
``handler.attach(engine, event=Events.EPOCH_COMPLETED)``; see :class:`LandscapeHandler` for what a
firing does. Default names (the ``engine.state.landscape`` keys and ``landscape/<name>/`` metric
prefixes): ``hessian``, ``trace``, ``density``, ``sharpness``, ``slice1d``, ``slice2d``,
``connectivity``, ``noise_scale``.

Example:
    >>> import torch
    >>> from ignite.engine import Engine, Events
    >>> from ignite_landscape import Probe
    >>> model = torch.nn.Linear(4, 3)
    >>> probe = Probe((torch.randn(16, 4), torch.randint(0, 3, (16,))), torch.nn.functional.cross_entropy)
    >>> trainer = Engine(lambda engine, batch: None)
    >>> for h in (HessianSpectrum(model, probe, k=2), Sharpness(model, probe)):
    ...     _ = h.attach(trainer, Events.EPOCH_COMPLETED(every=2) | Events.COMPLETED)
    >>> _ = trainer.run([0], max_epochs=3)
    >>> sorted(trainer.state.landscape)
    ['hessian', 'sharpness']
"""

from ignite_landscape.handlers.base import Firing, LandscapeHandler
from ignite_landscape.handlers.budget import Budget
from ignite_landscape.handlers.connectivity import ModeConnectivity
from ignite_landscape.handlers.curvature import (
    BatchSharpness,
    DirectionalCurvature,
    GGNOutliers,
    GradientOverlap,
    LayerwiseCurvature,
)
from ignite_landscape.handlers.gradstats import GradientStatistics
from ignite_landscape.handlers.measure import MeasureHandler
from ignite_landscape.handlers.noise import GradientNoiseScale
from ignite_landscape.handlers.sharpness import Sharpness
from ignite_landscape.handlers.slices import LossSlice
from ignite_landscape.handlers.spectrum import HessianDensity, HessianSpectrum, HessianTrace
from ignite_landscape.handlers.trajectory import TrajectoryPlane

__all__ = [
    "Budget",
    "Firing",
    "LandscapeHandler",
    "MeasureHandler",
    "HessianSpectrum",
    "HessianTrace",
    "HessianDensity",
    "Sharpness",
    "LossSlice",
    "ModeConnectivity",
    "GradientNoiseScale",
    "DirectionalCurvature",
    "BatchSharpness",
    "GradientOverlap",
    "LayerwiseCurvature",
    "GGNOutliers",
    "GradientStatistics",
    "TrajectoryPlane",
]
