"""Eigenvalue density of the Hessian of a model on a probe, by stochastic Lanczos quadrature.

Example:
    >>> import torch
    >>> from ignite_landscape import Probe
    >>> probe = Probe((torch.randn(16, 3), torch.randint(0, 2, (16,))), torch.nn.functional.cross_entropy)
    >>> res = hessian_density(torch.nn.Linear(3, 2), probe, num_steps=4, num_runs=2, grid_size=64)
    >>> res.grid.shape, res.num_params, abs(float(torch.trapezoid(res.density, res.grid)) - 1) < 0.05
    (torch.Size([64]), 8, True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ignite_landscape.curvature import check_curvature, curvature_operator
from ignite_landscape.linalg import Quadrature, gaussian_density, stochastic_lanczos_quadrature
from ignite_landscape.measures._definitions import curvature_name, products
from ignite_landscape.params import ParamsArg
from ignite_landscape.probe import Probe
from ignite_landscape.results import Curve, Result
from ignite_landscape.validation import check_int, check_positive

__all__ = ["HessianDensityResult", "DensityOptions", "hessian_density", "measure_hessian_density"]


@dataclass
class HessianDensityResult(Result):
    """Eigenvalue density of the Hessian by stochastic Lanczos quadrature.

    Attributes:
        nodes: ``(runs, m)`` quadrature nodes (Ritz values).
        weights: ``(runs, m)`` quadrature weights (each row sums to 1).
        grid: points where the smoothed density is evaluated.
        density: Gaussian-smoothed density on ``grid``, averaged over runs (integrates to ≈1).
        sigma: smoothing width.
        negative_mass: share of the absolute spectral mass at negative eigenvalues, ``Σ_{λ<0}|λ| / Σ|λ|``
            (robust to the cluster of eigenvalues at zero).
        negative_fraction: estimated fraction of eigenvalues below ``-0.01·max|λ|``.
        trace: SLQ's estimate of ``tr(H)`` (``P · Σ τ θ``).
        num_hvps: Hessian-vector products used.
        num_params: dimension of the Hessian.
        mask: ``(runs, m)``, False at the padding of runs that ended early (an invariant Krylov
            space: a small or low-rank Hessian); padded nodes are 0 with weight 0 and are not
            eigenvalues, so the extremes and the grid ignore them.
        curvature: the matrix (``"hessian"``, ``"ggn"``, ``"fisher"``, ``"empirical_fisher"``).
    """

    kind: ClassVar[str] = "density"

    nodes: torch.Tensor
    weights: torch.Tensor
    grid: torch.Tensor
    density: torch.Tensor
    sigma: float
    negative_mass: float
    negative_fraction: float
    trace: float
    num_hvps: int
    num_params: int
    mask: torch.Tensor | None = None
    curvature: str = "hessian"

    def _quadrature(self) -> Quadrature:
        # The extremes read only the real nodes, as the quadrature does (a padded 0 is not an eigenvalue).
        return Quadrature(self.nodes, self.weights, self.num_hvps, self.mask)

    @property
    def lambda_max(self) -> float:
        """Largest node: a lower bound on λ_max that converges fast."""
        return self._quadrature().lambda_max

    @property
    def lambda_min(self) -> float:
        """Smallest node: an upper bound on λ_min."""
        return self._quadrature().lambda_min

    def scalars(self) -> dict[str, float]:
        """Named scalars for logging."""
        return {
            "negative_mass": self.negative_mass,
            "negative_fraction": self.negative_fraction,
            "trace": self.trace,
            "lambda_max": self.lambda_max,
            "lambda_min": self.lambda_min,
            "num_hvps": float(self.num_hvps),
        }

    def _spectrum(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(nodes, counts)``: the real quadrature nodes and the eigenvalue count each carries.

        The quadrature is a discrete spectral measure: node ``θ`` of a run carries mass ``τ/runs`` of the
        ``num_params`` eigenvalues, so the counts sum to ``num_params`` (padded and non-finite nodes dropped).
        """
        nodes = self.nodes.detach().cpu().double().reshape(-1)
        mass = (self.weights.detach().cpu().double() / self.weights.shape[0]).reshape(-1)
        keep = torch.isfinite(nodes) & torch.isfinite(mass)
        if self.mask is not None:
            keep &= self.mask.detach().cpu().reshape(-1).bool()
        return nodes[keep], mass[keep] * self.num_params

    def curves(self) -> dict[str, Curve]:
        """``density`` (a line over the grid) and ``spectrum`` (the nodes weighted by their eigenvalue counts)."""
        nodes, counts = self._spectrum()
        return {
            "density": Curve(
                "line",
                x=self.grid,
                y=self.density,
                extra={"sigma": self.sigma},
                xlabel="eigenvalue",
                ylabel="density",
            ),
            "spectrum": Curve(
                "histogram", x=nodes, y=counts, extra={"num_params": self.num_params}, xlabel="eigenvalue"
            ),
        }

    def definitions(self) -> dict[str, str]:
        """One sentence per scalar and curve key, with the matrix and the quadrature's runs and steps.

        Only what the configuration fixes goes into them (no per-firing values such as σ or the product count,
        which are the curve's ``sigma`` and the ``num_hvps`` scalar), so a handler's history shares one copy.
        """
        runs, steps = (int(self.nodes.shape[0]), int(self.nodes.shape[1])) if self.nodes.dim() == 2 else (1, 0)
        matrix = curvature_name(self.curvature)
        slq = (
            f"of the {matrix} of the probe loss by stochastic Lanczos quadrature ({runs} random start vectors × "
            f"up to {steps} Lanczos steps; how many products: num_hvps)"
        )
        return {
            "negative_mass": f"share of the absolute spectral mass at negative eigenvalues, Σ_(λ<0)|λ| / Σ|λ|, {slq}",
            "negative_fraction": f"estimated fraction of the eigenvalues below −0.01·max|λ|, {slq}",
            "trace": f"estimate of the trace, {self.num_params}·Σ τθ averaged over the runs, {slq}",
            "lambda_max": f"largest quadrature node (Ritz value), a lower bound on λ_max, {slq}",
            "lambda_min": f"smallest quadrature node (Ritz value), an upper bound on λ_min, {slq}",
            "num_hvps": f"{products(self.curvature)} used by the quadrature",
            "density": (
                f"eigenvalue density {slq}, smoothed by Gaussians of width σ (the curve's sigma: 1% of the "
                "node range unless set; integrates to about 1)"
            ),
            "spectrum": (
                f"quadrature nodes {slq}, each weighted by the number of the {self.num_params} eigenvalues it "
                "carries (τ/runs · num_params)"
            ),
        }


@dataclass(frozen=True)
class DensityOptions:
    """The quadrature options of :func:`hessian_density`, validated once.

    The :class:`~ignite_landscape.HessianDensity` handler builds the same object at construction.

    Attributes:
        num_steps: Lanczos steps per run (``≥ 1``).
        num_runs: random start vectors (``≥ 1``).
        grid_size: points of the density grid (``≥ 2``).
        sigma: Gaussian smoothing width (positive), or ``None`` for 1% of the node range.
        curvature: ``"hessian"``, ``"ggn"``, ``"fisher"`` or ``"empirical_fisher"``.

    Raises:
        TypeError, ValueError: for an option of the wrong type or value (naming it).
    """

    num_steps: int = 30
    num_runs: int = 4
    grid_size: int = 512
    sigma: float | None = None
    curvature: str = "hessian"

    def __post_init__(self) -> None:
        """Check every option once, naming the one that cannot work (``ValueError``/``TypeError``)."""
        check_curvature(self.curvature)
        check_int("num_steps", self.num_steps, 1)
        check_int("num_runs", self.num_runs, 1)
        check_int("grid_size", self.grid_size, 2)
        if self.sigma is not None:
            object.__setattr__(self, "sigma", check_positive("sigma", self.sigma))


def hessian_density(
    model: nn.Module,
    probe: Probe,
    *,
    num_steps: int = 30,
    num_runs: int = 4,
    grid_size: int = 512,
    sigma: float | None = None,
    params: ParamsArg = None,
    seed: int = 0,
    curvature: str = "hessian",
) -> HessianDensityResult:
    """Eigenvalue density by stochastic Lanczos quadrature, averaged over ``num_runs`` vectors.

    Args:
        model: the model; left exactly as it was.
        probe: the fixed samples and loss.
        num_steps: Lanczos steps per run (quadrature exact for polynomials of degree ``2·num_steps − 1``).
        num_runs: random start vectors averaged.
        grid_size: points of the density grid.
        sigma: Gaussian smoothing width; default 1% of the node range.
        params: restrict to a subset of parameters.
        seed: seed of the start vectors.
        curvature: ``"hessian"``, ``"ggn"``, ``"fisher"`` or ``"empirical_fisher"``.
    """
    options = DensityOptions(num_steps, num_runs, grid_size, sigma, curvature)
    return measure_hessian_density(model, probe, options, seed, params)


def measure_hessian_density(
    model: nn.Module, probe: Probe, options: DensityOptions, seed: int = 0, params: ParamsArg = None
) -> HessianDensityResult:
    """:func:`hessian_density` on validated options (the :class:`~ignite_landscape.HessianDensity` handler runs it).

    Example:
        >>> probe = Probe((torch.randn(16, 3).double(), torch.randn(16, 1).double()), torch.nn.MSELoss())
        >>> res = measure_hessian_density(torch.nn.Linear(3, 1).double(), probe, DensityOptions(num_steps=4))
        >>> res.num_params, res.grid.numel(), bool((res.density >= 0).all())
        (4, 512, True)
    """
    num_steps, num_runs, grid_size, sigma, curvature = (
        options.num_steps,
        options.num_runs,
        options.grid_size,
        options.sigma,
        options.curvature,
    )
    with probe.session(model, params) as s:
        q: Quadrature = stochastic_lanczos_quadrature(
            curvature_operator(s, curvature, seed),
            s.space.numel,
            num_steps=num_steps,
            num_runs=num_runs,
            seed=seed,
            dtype=s.dtype,
            device=s.device,
        )
        used, n = s.num_hvps, s.space.numel
    finite = torch.isfinite(q.nodes).all()
    lo, hi = (q.lambda_min, q.lambda_max) if finite else (0.0, 1.0)
    width = hi - lo if hi > lo else max(abs(hi), 1.0)
    if sigma is None:
        sigma = 0.01 * width
    grid = torch.linspace(lo - 5 * sigma, hi + 5 * sigma, grid_size, dtype=torch.float64)
    density = gaussian_density(q, grid, sigma) if finite else torch.full_like(grid, float("nan"))
    return HessianDensityResult(
        nodes=q.nodes,
        weights=q.weights,
        grid=grid,
        density=density,
        sigma=sigma,
        negative_mass=q.negative_mass if finite else float("nan"),
        negative_fraction=q.negative_fraction() if finite else float("nan"),
        trace=n * q.moment(1) if finite else float("nan"),
        num_hvps=used,
        num_params=n,
        mask=q.mask,
        curvature=curvature,
    )
