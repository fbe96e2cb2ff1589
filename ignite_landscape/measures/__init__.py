"""Plain functions that turn a model and a probe into small result dataclasses."""

from ignite_landscape.measures.connectivity import Interpolation, interpolate
from ignite_landscape.measures.diagonal import ExactUnsupportedError, HessianDiagonal, hessian_diagonal
from ignite_landscape.measures.directional import (
    BatchSharpnessResult,
    DirectionalCurvatureResult,
    batch_sharpness,
    directional_curvature,
)
from ignite_landscape.measures.directions import (
    check_directions,
    eigenvector_directions,
    pca_directions,
    random_directions,
)
from ignite_landscape.measures.gradstats import GradientStatisticsResult, gradient_statistics
from ignite_landscape.measures.layerwise import LayerwiseCurvatureResult
from ignite_landscape.measures.noise import NoiseScale, gradient_noise_scale
from ignite_landscape.measures.outliers import GGNDecomposition, count_outliers, ggn_decomposition
from ignite_landscape.measures.overlap import GradientOverlapResult, gradient_overlap
from ignite_landscape.measures.sharpness import SharpnessResult, sharpness
from ignite_landscape.measures.slices import LossSliceResult, loss_slice
from ignite_landscape.measures.spectrum import (
    HessianDensityResult,
    HessianEigenvalues,
    HessianTraceResult,
    LayerCurvature,
    hessian_density,
    hessian_eigenvalues,
    hessian_trace,
    layerwise_curvature,
)
from ignite_landscape.measures.trajectory import TrajectoryPlaneResult, trajectory_plane

__all__ = [
    "BatchSharpnessResult",
    "DirectionalCurvatureResult",
    "batch_sharpness",
    "directional_curvature",
    "LayerwiseCurvatureResult",
    "GGNDecomposition",
    "count_outliers",
    "ggn_decomposition",
    "GradientOverlapResult",
    "gradient_overlap",
    "ExactUnsupportedError",
    "HessianDiagonal",
    "hessian_diagonal",
    "Interpolation",
    "interpolate",
    "check_directions",
    "eigenvector_directions",
    "pca_directions",
    "random_directions",
    "NoiseScale",
    "gradient_noise_scale",
    "SharpnessResult",
    "sharpness",
    "LossSliceResult",
    "loss_slice",
    "HessianDensityResult",
    "HessianEigenvalues",
    "HessianTraceResult",
    "LayerCurvature",
    "hessian_density",
    "hessian_eigenvalues",
    "hessian_trace",
    "layerwise_curvature",
    "GradientStatisticsResult",
    "gradient_statistics",
    "TrajectoryPlaneResult",
    "trajectory_plane",
]
