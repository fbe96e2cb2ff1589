"""Matrix-free linear algebra on ``matvec`` callables: nothing here knows about models."""

from ignite_landscape.linalg.lanczos import WHICH, LanczosResult, lanczos, lanczos_tridiagonal, tridiagonal_eigh
from ignite_landscape.linalg.quadrature import Quadrature, gaussian_density, stochastic_lanczos_quadrature
from ignite_landscape.linalg.random import gaussian, generator, rademacher
from ignite_landscape.linalg.trace import TRACE_METHODS, TraceEstimate, hutchinson, hutchpp

__all__ = [
    "WHICH",
    "LanczosResult",
    "lanczos",
    "lanczos_tridiagonal",
    "tridiagonal_eigh",
    "Quadrature",
    "gaussian_density",
    "stochastic_lanczos_quadrature",
    "gaussian",
    "generator",
    "rademacher",
    "TRACE_METHODS",
    "TraceEstimate",
    "hutchinson",
    "hutchpp",
]
