"""Plain functions that turn a model and a probe into small result dataclasses.

Each measure is three things in one module: a frozen options dataclass validated once in its
``__post_init__`` (``SharpnessOptions``), a plain function of the validated options named
``measure_<f>`` after the public keyword function ``f`` it backs (``measure_sharpness`` for
:func:`sharpness`), and a result implementing :class:`~ignite_landscape.results.Result`. The keyword
function (``sharpness(model, probe, rho=..., ...)``) builds the options, runs
``options.check_probe(probe)`` where the options define it, and calls ``measure_<f>``; a handler builds
the same options once at construction and names ``measure_<f>`` as its ``measure``.

Every ``measure_<f>`` takes ``(model, probe, options)`` first. A measure that draws random numbers takes
``seed=0, params=None`` next, in that order (how :class:`~ignite_landscape.handlers.measure.MeasureHandler`
calls it); a deterministic one takes no ``seed`` and, where it has a parameter selection, ``params`` by
keyword. Inputs that are not options (directions, a recorded path, reference weights, warm-start
vectors) are keyword-only. ``measure_<f>`` does not validate the options again.

Example:
    >>> import torch
    >>> from ignite_landscape import Probe
    >>> model = torch.nn.Linear(3, 1)
    >>> probe = Probe((torch.randn(8, 3), torch.randn(8, 1)), torch.nn.MSELoss())
    >>> options = SharpnessOptions(rho=0.05)
    >>> measure_sharpness(model, probe, options, seed=0).value == sharpness(model, probe, rho=0.05).value
    True
"""

from ignite_landscape.measures.connectivity import Interpolation, InterpolationOptions, interpolate, measure_interpolate
from ignite_landscape.measures.density import (
    DensityOptions,
    HessianDensityResult,
    hessian_density,
    measure_hessian_density,
)
from ignite_landscape.measures.diagonal import ExactUnsupportedError, HessianDiagonal, hessian_diagonal
from ignite_landscape.measures.directional import (
    BatchSharpnessOptions,
    BatchSharpnessResult,
    DirectionalCurvatureResult,
    DirectionalOptions,
    batch_sharpness,
    directional_curvature,
    measure_batch_sharpness,
    measure_directional_curvature,
)
from ignite_landscape.measures.directions import (
    check_directions,
    eigenvector_directions,
    pca_directions,
    random_directions,
)
from ignite_landscape.measures.gradstats import (
    GradientStatisticsResult,
    GradStatsOptions,
    gradient_statistics,
    measure_gradient_statistics,
)
from ignite_landscape.measures.layerwise import (
    LayerCurvature,
    LayerwiseCurvatureResult,
    LayerwiseOptions,
    layerwise_curvature,
    measure_layerwise_curvature,
)
from ignite_landscape.measures.noise import NoiseOptions, NoiseScale, gradient_noise_scale, measure_gradient_noise_scale
from ignite_landscape.measures.outliers import (
    GGNDecomposition,
    GGNOptions,
    count_outliers,
    ggn_decomposition,
    measure_ggn_decomposition,
)
from ignite_landscape.measures.overlap import (
    GradientOverlapResult,
    OverlapOptions,
    gradient_overlap,
    measure_gradient_overlap,
)
from ignite_landscape.measures.sharpness import SharpnessOptions, SharpnessResult, measure_sharpness, sharpness
from ignite_landscape.measures.slices import LossSliceResult, SliceOptions, loss_slice, measure_loss_slice
from ignite_landscape.measures.spectrum import (
    HessianEigenvalues,
    SpectrumOptions,
    hessian_eigenvalues,
    measure_hessian_eigenvalues,
)
from ignite_landscape.measures.trace import HessianTraceResult, TraceOptions, hessian_trace, measure_hessian_trace
from ignite_landscape.measures.trajectory import (
    TrajectoryOptions,
    TrajectoryPlaneResult,
    measure_trajectory_plane,
    trajectory_plane,
)

__all__ = [
    "Interpolation",
    "InterpolationOptions",
    "interpolate",
    "measure_interpolate",
    "ExactUnsupportedError",
    "HessianDiagonal",
    "hessian_diagonal",
    "BatchSharpnessOptions",
    "BatchSharpnessResult",
    "DirectionalCurvatureResult",
    "DirectionalOptions",
    "batch_sharpness",
    "directional_curvature",
    "measure_batch_sharpness",
    "measure_directional_curvature",
    "check_directions",
    "eigenvector_directions",
    "pca_directions",
    "random_directions",
    "DensityOptions",
    "HessianDensityResult",
    "hessian_density",
    "measure_hessian_density",
    "GradientStatisticsResult",
    "GradStatsOptions",
    "gradient_statistics",
    "measure_gradient_statistics",
    "LayerCurvature",
    "LayerwiseCurvatureResult",
    "LayerwiseOptions",
    "layerwise_curvature",
    "measure_layerwise_curvature",
    "NoiseOptions",
    "NoiseScale",
    "gradient_noise_scale",
    "measure_gradient_noise_scale",
    "GGNDecomposition",
    "GGNOptions",
    "count_outliers",
    "ggn_decomposition",
    "measure_ggn_decomposition",
    "GradientOverlapResult",
    "OverlapOptions",
    "gradient_overlap",
    "measure_gradient_overlap",
    "SharpnessOptions",
    "SharpnessResult",
    "measure_sharpness",
    "sharpness",
    "LossSliceResult",
    "SliceOptions",
    "loss_slice",
    "measure_loss_slice",
    "HessianEigenvalues",
    "SpectrumOptions",
    "hessian_eigenvalues",
    "measure_hessian_eigenvalues",
    "HessianTraceResult",
    "TraceOptions",
    "hessian_trace",
    "measure_hessian_trace",
    "TrajectoryOptions",
    "TrajectoryPlaneResult",
    "measure_trajectory_plane",
    "trajectory_plane",
]
