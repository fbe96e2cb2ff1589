"""ignite_landscape: watch the geometry of the loss landscape while an Ignite trainer runs.

The functional core (:class:`Probe` and the measures) works on any model without an engine; the
Ignite handlers call it on events and stream the results to TensorBoard.
"""

from ignite_landscape.measures import (
    HessianDensity,
    HessianEigenvalues,
    HessianTrace,
    LayerCurvature,
    hessian_density,
    hessian_eigenvalues,
    hessian_trace,
    layerwise_curvature,
)
from ignite_landscape.params import ParamSpace
from ignite_landscape.probe import Probe, ProbeEvaluation, ProbeSession
from ignite_landscape.restore import preserved_state

__all__ = [
    "Probe",
    "ProbeEvaluation",
    "ProbeSession",
    "ParamSpace",
    "preserved_state",
    "HessianDensity",
    "HessianEigenvalues",
    "HessianTrace",
    "LayerCurvature",
    "hessian_density",
    "hessian_eigenvalues",
    "hessian_trace",
    "layerwise_curvature",
]
__version__ = "0.1.0"
