"""ignite_landscape: watch the geometry of the loss landscape while an Ignite trainer runs.

The functional core (:class:`Probe` and the measures) works on any model without an engine; the
Ignite handlers call it on events and stream the results to TensorBoard.
"""

from ignite_landscape.curvature import CURVATURES, curvature_operator
from ignite_landscape.handlers import (
    Budget,
    Firing,
    GradientNoiseScale,
    HessianDensity,
    HessianSpectrum,
    HessianTrace,
    LandscapeHandler,
    LossSlice,
    ModeConnectivity,
    Sharpness,
)
from ignite_landscape.measures import (
    ExactUnsupportedError,
    HessianDensityResult,
    HessianDiagonal,
    HessianEigenvalues,
    HessianTraceResult,
    Interpolation,
    LayerCurvature,
    LossSliceResult,
    NoiseScale,
    SharpnessResult,
    check_directions,
    eigenvector_directions,
    gradient_noise_scale,
    hessian_density,
    hessian_diagonal,
    hessian_eigenvalues,
    hessian_trace,
    interpolate,
    layerwise_curvature,
    loss_slice,
    pca_directions,
    random_directions,
    sharpness,
)
from ignite_landscape.objective import DecomposedLoss
from ignite_landscape.params import ParamSpace
from ignite_landscape.probe import Probe, ProbeEvaluation, ProbeSession
from ignite_landscape.restore import preserved_state
from ignite_landscape.tensorboard import LandscapeLogHandler

__all__ = [
    "Budget",
    "Firing",
    "LandscapeHandler",
    "HessianSpectrum",
    "Sharpness",
    "LossSlice",
    "ModeConnectivity",
    "GradientNoiseScale",
    "LandscapeLogHandler",
    "Interpolation",
    "LossSliceResult",
    "NoiseScale",
    "SharpnessResult",
    "check_directions",
    "eigenvector_directions",
    "gradient_noise_scale",
    "interpolate",
    "loss_slice",
    "pca_directions",
    "random_directions",
    "sharpness",
    "Probe",
    "DecomposedLoss",
    "ProbeEvaluation",
    "ProbeSession",
    "ParamSpace",
    "preserved_state",
    "HessianDensity",
    "HessianEigenvalues",
    "HessianTrace",
    "HessianTraceResult",
    "HessianDensityResult",
    "LayerCurvature",
    "hessian_density",
    "hessian_eigenvalues",
    "hessian_trace",
    "layerwise_curvature",
    "CURVATURES",
    "curvature_operator",
    "ExactUnsupportedError",
    "HessianDiagonal",
    "hessian_diagonal",
]
__version__ = "0.1.0"
