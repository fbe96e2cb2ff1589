"""Plain functions that turn a model and a probe into small result dataclasses."""

from ignite_landscape.measures.spectrum import (
    HessianDensity,
    HessianEigenvalues,
    HessianTrace,
    LayerCurvature,
    hessian_density,
    hessian_eigenvalues,
    hessian_trace,
    layerwise_curvature,
)

__all__ = [
    "HessianDensity",
    "HessianEigenvalues",
    "HessianTrace",
    "LayerCurvature",
    "hessian_density",
    "hessian_eigenvalues",
    "hessian_trace",
    "layerwise_curvature",
]
