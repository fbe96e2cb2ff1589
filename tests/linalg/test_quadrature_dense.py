"""``stochastic_lanczos_quadrature`` and ``gaussian_density`` on dense rotated float64 matrices.

Ground truth: an m-step Lanczos quadrature from a unit vector ``v`` is Gauss quadrature of the measure
``Σ_i (vᵀu_i)² δ(λ − λ_i)``, so ``Σ_j τ_j θ_j^r = vᵀAʳv`` exactly for ``r ≤ 2m − 1``; its nodes interlace
the spectrum; for a Rademacher ``v``, ``n·vᵀAv/‖v‖²`` is a Hutchinson sample of ``tr(A)``.
"""

from __future__ import annotations

import math

import pytest
import torch

from ignite_landscape.linalg import Quadrature, gaussian_density, stochastic_lanczos_quadrature
from tests.linalg import Counting, rotated

F64 = torch.float64


@pytest.fixture(scope="module")
def spectrum() -> torch.Tensor:
    g = torch.Generator().manual_seed(30)
    return torch.cat([torch.tensor([12.0, 8.0, -3.0], dtype=F64), torch.randn(97, generator=g, dtype=F64)])


def test_weights_sum_to_one_and_nodes_interlace(spectrum: torch.Tensor) -> None:
    A, _ = rotated(spectrum, seed=31)
    op = Counting(A)
    q = stochastic_lanczos_quadrature(op, 100, num_steps=15, num_runs=4, seed=2, dtype=F64)
    assert q.nodes.shape == q.weights.shape == q.mask.shape == (4, 15) and bool(q.mask.all())
    assert q.num_matvecs == op.calls == 60
    torch.testing.assert_close(q.weights.sum(dim=1), torch.ones(4, dtype=F64), rtol=0, atol=1e-12)
    assert bool((q.weights >= 0).all())
    # Cauchy interlacing: every Ritz value lies inside [λmin, λmax]; the outermost ones converge first.
    lo, hi = float(spectrum.min()), float(spectrum.max())
    assert lo - 1e-10 <= q.lambda_min and q.lambda_max <= hi + 1e-10
    assert q.lambda_max == pytest.approx(12.0, rel=1e-8)


def test_nodes_and_weights_are_a_gauss_quadrature_of_the_start_vector(spectrum: torch.Tensor) -> None:
    A, _ = rotated(spectrum, seed=32)
    g = torch.Generator().manual_seed(3)
    starts = [torch.randn(100, generator=g, dtype=F64) for _ in range(2)]
    m = 6
    q = stochastic_lanczos_quadrature(Counting(A), 100, num_steps=m, dtype=F64, start_vectors=starts)
    assert q.nodes.shape == (2, m)
    for r, v in enumerate(starts):
        v = v / v.norm()
        Akv = v.clone()
        for power in range(2 * m):  # exact up to degree 2m − 1
            quad = float((q.weights[r] * q.nodes[r] ** power).sum())
            assert quad == pytest.approx(float(v @ Akv), rel=1e-8, abs=1e-10), power
            Akv = A @ Akv
    # Degree 2m is beyond it: the quadrature underestimates the even moment (a Gauss remainder is one-signed).
    v = starts[0] / starts[0].norm()
    exact = float(v @ torch.linalg.matrix_power(A, 2 * m) @ v)
    assert float((q.weights[0] * q.nodes[0] ** (2 * m)).sum()) < exact * (1 - 1e-6)


def test_first_moment_times_n_estimates_the_trace(spectrum: torch.Tensor) -> None:
    A, _ = rotated(spectrum, seed=33)
    runs = 200
    q = stochastic_lanczos_quadrature(Counting(A), 100, num_steps=4, num_runs=runs, seed=7, dtype=F64)
    per_run = 100 * (q.weights * q.nodes).sum(dim=1)  # = zᵀAz for the run's Rademacher z
    variance = float(2 * ((A**2).sum() - (torch.diagonal(A) ** 2).sum()))
    assert float(per_run.var()) == pytest.approx(variance, rel=0.3)
    assert abs(100 * q.moment(1) - float(spectrum.sum())) <= 4 * math.sqrt(variance / runs)
    # The second moment too: n·Σ τθ² estimates tr(A²) = Σ λ².
    assert 100 * q.moment(2) == pytest.approx(float((spectrum**2).sum()), rel=0.1)


def test_padding_after_breakdown_is_masked_and_weightless() -> None:
    # {1,1,1,2,2,3}: three distinct eigenvalues, so each run's Krylov space is invariant after 3 steps.
    spectrum = torch.tensor([1.0, 1.0, 1.0, 2.0, 2.0, 3.0], dtype=F64)
    A, Q = rotated(spectrum, seed=34)
    op = Counting(A)
    q = stochastic_lanczos_quadrature(op, 6, num_steps=6, num_runs=3, seed=1, dtype=F64)
    assert q.mask.sum(dim=1).tolist() == [3, 3, 3] and q.num_matvecs == op.calls == 9
    assert bool((q.weights[~q.mask] == 0).all()) and bool((q.nodes[~q.mask] == 0).all())
    torch.testing.assert_close(q.weights.sum(dim=1), torch.ones(3, dtype=F64), rtol=0, atol=1e-12)
    # The real nodes are the eigenvalues, each weighted by the start vector's share in its eigenspace.
    starts = [torch.tensor(signs, dtype=F64) for signs in ([1, -1, 1, 1, -1, 1], [1, 1, 1, -1, -1, -1])]
    exact = stochastic_lanczos_quadrature(Counting(A), 6, num_steps=6, dtype=F64, start_vectors=starts)
    assert exact.mask.sum(dim=1).tolist() == [3, 3]
    for r, v in enumerate(starts):
        c = (Q.T @ v) ** 2 / 6  # squared coordinates of the unit start vector in the eigenbasis
        torch.testing.assert_close(exact.nodes[r, :3], torch.tensor([1.0, 2.0, 3.0], dtype=F64), rtol=0, atol=1e-10)
        torch.testing.assert_close(
            exact.weights[r, :3], torch.stack([c[:3].sum(), c[3:5].sum(), c[5]]), rtol=0, atol=1e-10
        )
    # A padded 0 is no eigenvalue: the extremes and the moments ignore it.
    assert q.lambda_min == pytest.approx(1.0, abs=1e-10) and q.lambda_max == pytest.approx(3.0, abs=1e-10)
    assert q.real_nodes().numel() == 9
    assert q.moment(0) == pytest.approx(1.0, abs=1e-12)


def test_density_integrates_to_one_with_the_quadrature_moments(spectrum: torch.Tensor) -> None:
    A, _ = rotated(spectrum, seed=35)
    q = stochastic_lanczos_quadrature(Counting(A), 100, num_steps=12, num_runs=3, seed=4, dtype=F64)
    sigma = 0.3
    grid = torch.linspace(q.lambda_min - 8 * sigma, q.lambda_max + 8 * sigma, 4001, dtype=F64)
    rho = gaussian_density(q, grid, sigma)
    assert bool((rho >= 0).all())
    assert float(torch.trapezoid(rho, grid)) == pytest.approx(1.0, abs=1e-8)
    # A Gaussian kernel keeps the mean and adds σ² to the second moment.
    assert float(torch.trapezoid(grid * rho, grid)) == pytest.approx(q.moment(1), abs=1e-8)
    assert float(torch.trapezoid(grid**2 * rho, grid)) == pytest.approx(q.moment(2) + sigma**2, rel=1e-8)
    # After a breakdown the padded nodes carry no weight, so the density still integrates to one.
    small = stochastic_lanczos_quadrature(Counting(rotated([1.0, 1.0, 2.0, 5.0])[0]), 4, num_steps=4, dtype=F64)
    assert not bool(small.mask.all())
    grid = torch.linspace(-3.0, 9.0, 4001, dtype=F64)
    assert float(torch.trapezoid(gaussian_density(small, grid, 0.4), grid)) == pytest.approx(1.0, abs=1e-8)


def test_negative_mass_of_a_full_quadrature_is_the_weighted_share() -> None:
    # m = n: the quadrature is the start vector's whole spectral measure, so the masses are closed forms.
    spectrum = torch.tensor([-2.0, -0.5, 1.0, 3.0, 4.0], dtype=F64)
    A, Q = rotated(spectrum, seed=36)
    v = torch.tensor([1.0, -1.0, 1.0, 1.0, -1.0], dtype=F64)
    q = stochastic_lanczos_quadrature(Counting(A), 5, num_steps=5, dtype=F64, start_vectors=[v])
    w = (Q.T @ v) ** 2 / 5
    torch.testing.assert_close(q.nodes[0], spectrum, rtol=0, atol=1e-10)
    torch.testing.assert_close(q.weights[0], w, rtol=0, atol=1e-10)
    mass = w * spectrum.abs()
    assert q.negative_mass == pytest.approx(float(mass[:2].sum() / mass.sum()), rel=1e-9)
    assert q.negative_fraction() == pytest.approx(float(w[:2].sum()), rel=1e-9)


def test_quadrature_arguments_are_checked() -> None:
    op = Counting(torch.eye(3, dtype=F64))
    for kwargs, name in (({"num_steps": 0}, "num_steps"), ({"num_runs": 0}, "num_runs")):
        with pytest.raises(ValueError, match=name):
            stochastic_lanczos_quadrature(op, 3, dtype=F64, **kwargs)
    with pytest.raises(ValueError, match="sigma"):
        gaussian_density(Quadrature(torch.zeros(1, 1, dtype=F64), torch.ones(1, 1, dtype=F64), 1), torch.zeros(3), 0.0)
    assert op.calls == 0
