"""``hutchinson`` and ``hutchpp`` on dense rotated float64 matrices: unbiased, honest standard errors, exact cases.

For Rademacher probes ``Var(zᵀAz) = 2(‖A‖_F² − Σ A_ii²)`` (closed form), so each estimator's spread over
independent seeds is known: the mean over seeds must sit within a few standard errors of ``tr(A)``, and
the reported standard error must match the empirical spread (not merely be small).
"""

from __future__ import annotations

import math

import pytest
import torch

from ignite_landscape.linalg import TRACE_METHODS, TraceEstimate, hutchinson, hutchpp
from tests.linalg import Counting, rotated

F64 = torch.float64
SEEDS = range(300)


def _rademacher_variance(A: torch.Tensor) -> float:
    return float(2 * ((A**2).sum() - (torch.diagonal(A) ** 2).sum()))


@pytest.fixture(scope="module")
def indefinite() -> torch.Tensor:
    # Mixed signs and a few large eigenvalues, as a Hessian has: tr(A) = 7.5 exactly.
    g = torch.Generator().manual_seed(20)
    bulk = torch.randn(36, generator=g, dtype=F64) * 0.5
    spectrum = torch.cat([torch.tensor([20.0, 12.0, -6.0, 5.0], dtype=F64), bulk])
    spectrum[-1] += 7.5 - float(spectrum.sum())
    A, _ = rotated(spectrum, seed=21)
    assert float(torch.trace(A)) == pytest.approx(7.5, abs=1e-10)
    return A


def test_a_diagonal_matrix_is_exact_for_every_probe() -> None:
    # zᵀDz = Σ D_ii z_i² = tr(D) for z_i = ±1: no variance at all.
    A = torch.diag(torch.tensor([3.0, -1.0, 0.5, 2.0], dtype=F64))
    est = hutchinson(Counting(A), 4, num_matvecs=5, seed=3, dtype=F64)
    assert est.value == pytest.approx(4.5, abs=1e-14) and est.stderr == pytest.approx(0.0, abs=1e-14)


def _over_seeds(method, A: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor, list[TraceEstimate]]:
    """Estimates of ``tr(A)`` with every seed: their values, reported stderr², and the estimates themselves."""
    op = Counting(A)
    estimates = [method(op, A.shape[0], num_matvecs=m, seed=s, dtype=F64) for s in SEEDS]
    # The cost reported is the cost paid.
    assert op.calls == m * len(SEEDS) and all(e.num_matvecs == m for e in estimates)
    values = torch.tensor([e.value for e in estimates], dtype=F64)
    return values, torch.tensor([e.stderr for e in estimates], dtype=F64) ** 2, estimates


def test_hutchinson_is_unbiased_with_an_honest_standard_error(indefinite: torch.Tensor) -> None:
    m = 8
    values, reported, estimates = _over_seeds(hutchinson, indefinite, m)
    assert {e.method for e in estimates} == {"hutchinson"}
    # The closed-form variance of one estimate, and the spread the seeds actually show, agree.
    expected_var = _rademacher_variance(indefinite) / m
    assert float(values.var()) == pytest.approx(expected_var, rel=0.25)
    assert abs(float(values.mean()) - 7.5) <= 4 * math.sqrt(expected_var / len(SEEDS))
    # Each reported stderr² is an unbiased estimate of that variance: their mean matches it.
    assert float(reported.mean()) == pytest.approx(expected_var, rel=0.15)
    # The samples are the quadratic forms themselves: their mean is the value.
    assert estimates[0].value == pytest.approx(sum(estimates[0].samples) / m, rel=1e-12)
    # ±2 stderr from 8 samples (a t-interval with 7 degrees of freedom) covers the trace about 91% of the time.
    covered = sum(abs(e.value - 7.5) <= 2 * e.stderr for e in estimates) / len(estimates)
    assert 0.82 <= covered <= 0.99


def test_hutchpp_is_unbiased_with_an_honest_standard_error(indefinite: torch.Tensor) -> None:
    m = 12
    values, reported, estimates = _over_seeds(hutchpp, indefinite, m)
    assert {e.method for e in estimates} == {"hutch++"}
    # E[value | sketch] = tr(QᵀAQ) + tr((I−QQᵀ)A) = tr(A), so the total variance is the mean conditional one,
    # which is what each stderr² estimates.
    assert float(values.var()) == pytest.approx(float(reported.mean()), rel=0.25)
    assert abs(float(values.mean()) - 7.5) <= 4 * math.sqrt(float(values.var()) / len(SEEDS))
    # Deflating the large eigenvalues pays: at the same budget Hutch++ spreads less than Hutchinson.
    assert float(values.var()) < 0.5 * _rademacher_variance(indefinite) / m


@pytest.mark.parametrize("rank", [1, 3, 4])
def test_hutchpp_is_exact_on_a_matrix_of_rank_at_most_its_sketch(rank: int) -> None:
    # 12 products: a sketch of 4 vectors spans the whole range of A, and the deflated rest is zero.
    spectrum = torch.zeros(50, dtype=F64)
    spectrum[:rank] = torch.tensor([9.0, -4.0, 2.5, 1.0], dtype=F64)[:rank]
    A, _ = rotated(spectrum, seed=22 + rank)
    est = hutchpp(Counting(A), 50, num_matvecs=12, seed=5, dtype=F64)
    assert est.value == pytest.approx(float(spectrum.sum()), abs=1e-11)
    assert est.stderr <= 1e-12 and max(abs(s) for s in est.samples) <= 1e-12
    # Hutchinson with the same budget is not exact on the same matrix (so the test above can tell them apart).
    assert abs(hutchinson(Counting(A), 50, num_matvecs=12, seed=5, dtype=F64).value - float(spectrum.sum())) > 1e-3


@pytest.mark.parametrize("method, budget", [(hutchinson, 1), (hutchpp, 5)])
def test_too_small_a_budget_is_refused(method, budget: int) -> None:
    op = Counting(torch.eye(5, dtype=F64))
    with pytest.raises(ValueError, match="num_matvecs"):
        method(op, 5, num_matvecs=budget, dtype=F64)
    assert op.calls == 0
    assert TRACE_METHODS == ("hutchinson", "hutch++")
