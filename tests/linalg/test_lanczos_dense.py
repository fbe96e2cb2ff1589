"""``lanczos`` and ``lanczos_tridiagonal`` on dense rotated float64 matrices with known spectra.

Every Ritz pair is checked against the matrix itself: the residual ``‖A y − θ y‖`` is recomputed from
``A`` and the returned vector, and by the Bauer–Fike/Weyl bound some eigenvalue of ``A`` lies within that
residual of ``θ``; so a reported ``converged`` or residual that flatters the answer fails here.
"""

from __future__ import annotations

import pytest
import torch

from ignite_landscape.linalg import lanczos, lanczos_tridiagonal, tridiagonal_eigh
from tests.linalg import Counting, rotated

F64 = torch.float64


def _bulk(n: int, low: float, high: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return low + (high - low) * torch.rand(n, generator=g, dtype=F64)


def _check_pairs(A: torch.Tensor, spectrum: torch.Tensor, res, tol: float) -> None:
    """Residuals recomputed from ``A``; eigenvalues within them of the spectrum; ``converged`` earned."""
    assert res.eigenvectors is not None
    for theta, y, r, ok in zip(res.eigenvalues, res.eigenvectors, res.residuals, res.converged):
        assert float(y.norm()) == pytest.approx(1.0, abs=1e-10)
        true = float(torch.linalg.vector_norm(A @ y - theta * y))
        # Reported from stored products and floored at precision: never below the truth, and not inflated.
        assert true <= float(r) * (1 + 1e-6) + 1e-13
        assert float(r) <= max(2 * true, 16 * torch.finfo(F64).eps * float(spectrum.abs().max()) * 1.01)
        assert float((spectrum - theta).abs().min()) <= true + 1e-12
        if ok:
            assert true <= tol * abs(float(theta)) * (1 + 1e-6) + 1e-13


def test_largest_with_multiplicity_on_a_dense_matrix() -> None:
    spectrum = torch.cat([torch.tensor([10.0, 10.0, 9.0, 8.0], dtype=F64), _bulk(196, -1.0, 1.0, 1)])
    A, Q = rotated(spectrum, seed=2)
    op = Counting(A)
    res = lanczos(op, 200, k=4, tol=1e-9, dtype=F64, return_eigenvectors=True)
    torch.testing.assert_close(res.eigenvalues, torch.tensor([10.0, 10.0, 9.0, 8.0], dtype=F64), rtol=1e-9, atol=0)
    assert res.converged.all() and res.all_converged
    assert res.num_matvecs == op.calls < 200  # the count is the real one, and far below n
    _check_pairs(A, spectrum, res, 1e-9)
    # Both copies of 10: the two Ritz vectors are orthonormal and lie in the eigenspace span(Q[:, :2]).
    top = res.eigenvectors[:2]
    torch.testing.assert_close(top @ top.T, torch.eye(2, dtype=F64), rtol=0, atol=1e-8)
    inside = top @ Q[:, :2]
    torch.testing.assert_close(inside @ inside.T, torch.eye(2, dtype=F64), rtol=0, atol=1e-8)
    # Every Ritz value of the final projected matrix interlaces: inside [λmin, λmax].
    assert float(res.ritz_values.min()) >= float(spectrum.min()) - 1e-10
    assert float(res.ritz_values.max()) <= 10.0 + 1e-10


def test_smallest_end_is_algebraic_and_ascending() -> None:
    # Negative eigenvalues first, a repeated one among them; the largest-magnitude end (+6) is not wanted.
    spectrum = torch.cat([torch.tensor([-5.0, -5.0, -4.0, 6.0], dtype=F64), _bulk(146, -2.0, 3.0, 3)])
    A, _ = rotated(spectrum, seed=4)
    res = lanczos(Counting(A), 150, k=3, which="smallest", tol=1e-9, dtype=F64, return_eigenvectors=True)
    torch.testing.assert_close(res.eigenvalues, torch.tensor([-5.0, -5.0, -4.0], dtype=F64), rtol=1e-9, atol=0)
    assert res.converged.all()
    _check_pairs(A, spectrum, res, 1e-9)


def test_both_ends_largest_then_smallest() -> None:
    spectrum = torch.cat([torch.tensor([7.0, 6.0, -3.0, -2.0], dtype=F64), _bulk(116, -1.0, 4.0, 5)])
    A, _ = rotated(spectrum, seed=6)
    res = lanczos(Counting(A), 120, k=2, which="both", tol=1e-9, dtype=F64, return_eigenvectors=True)
    torch.testing.assert_close(res.eigenvalues, torch.tensor([7.0, 6.0, -2.0, -3.0], dtype=F64), rtol=1e-9, atol=0)
    assert res.converged.all()
    _check_pairs(A, spectrum, res, 1e-9)


def test_converged_flags_are_honest_when_the_budget_is_short() -> None:
    # A slowly decaying top (gaps of 1%) cannot be resolved to 1e-10 in 20 products.
    spectrum = torch.cat([torch.linspace(2.0, 1.9, 11, dtype=F64), _bulk(289, 0.0, 1.8, 7)])
    A, _ = rotated(spectrum, seed=8)
    op = Counting(A)
    res = lanczos(op, 300, k=3, tol=1e-10, max_iter=20, dtype=F64, return_eigenvectors=True)
    assert res.num_matvecs == op.calls == 20
    assert not res.all_converged
    assert all(float(r) > 1e-10 * abs(float(t)) for r, t, ok in zip(res.residuals, res.eigenvalues, res.converged))
    _check_pairs(A, spectrum, res, 1e-10)
    # A loose tolerance the same budget does reach: each converged claim is checked against A above.
    loose = lanczos(Counting(A), 300, k=1, tol=0.05, max_iter=20, dtype=F64, return_eigenvectors=True)
    assert loose.converged.all()
    _check_pairs(A, spectrum, loose, 0.05)


def test_low_rank_matrix_breaks_down_gracefully() -> None:
    # Rank 3: the Krylov space is exhausted after a few products; the iteration must stop with exact
    # eigenvalues and finite, honest residuals, not divide by a zero β or run to n.
    spectrum = torch.tensor([5.0, 3.0, 2.0] + [0.0] * 77, dtype=F64)
    A, Q = rotated(spectrum, seed=9)
    op = Counting(A)
    res = lanczos(op, 80, k=3, tol=1e-10, dtype=F64, return_eigenvectors=True)
    torch.testing.assert_close(res.eigenvalues, torch.tensor([5.0, 3.0, 2.0], dtype=F64), rtol=1e-12, atol=0)
    assert res.converged.all()
    assert torch.isfinite(res.residuals).all() and torch.isfinite(res.eigenvectors).all()
    # Exactly: the 2 random start vectors plus the 3-dimensional range; a little slack for a restart.
    assert res.num_matvecs == op.calls <= 2 + 3 + 2
    _check_pairs(A, spectrum, res, 1e-10)
    # The Ritz vectors are the eigenvectors (up to sign).
    torch.testing.assert_close((res.eigenvectors @ Q[:, :3]).abs(), torch.eye(3, dtype=F64), rtol=0, atol=1e-9)


def test_tridiagonal_recurrence_stops_at_an_invariant_subspace() -> None:
    # {1,1,1,2,2,3}: a single start vector sees three distinct eigenvalues, so β₂ = 0 ends the run there.
    spectrum = torch.tensor([1.0, 1.0, 1.0, 2.0, 2.0, 3.0], dtype=F64)
    A, _ = rotated(spectrum, seed=10)
    v0 = torch.randn(6, generator=torch.Generator().manual_seed(11), dtype=F64)
    alphas, betas, basis = lanczos_tridiagonal(Counting(A), v0, 6)
    assert len(alphas) == 3 and len(betas) == 3 and betas[-1] == 0.0
    torch.testing.assert_close(basis @ basis.T, torch.eye(3, dtype=F64), rtol=0, atol=1e-12)
    # The recurrence is A V = V T: T is the projection of A on the Krylov basis.
    theta, S = tridiagonal_eigh(alphas, betas)
    torch.testing.assert_close(basis @ A @ basis.T, (S * theta) @ S.T, rtol=0, atol=1e-12)
    torch.testing.assert_close(theta, torch.tensor([1.0, 2.0, 3.0], dtype=F64), rtol=0, atol=1e-12)
    # Restarting with a fresh vector orthogonal to it continues to the whole spectrum, multiplicities included.
    alphas, betas, basis = lanczos_tridiagonal(Counting(A), v0, 6, restart_seed=0)
    assert len(alphas) == 6
    torch.testing.assert_close(tridiagonal_eigh(alphas, betas)[0], spectrum, rtol=0, atol=1e-10)
    torch.testing.assert_close(basis @ basis.T, torch.eye(6, dtype=F64), rtol=0, atol=1e-10)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"k": 0}, ValueError, "k must"),
        ({"k": 10}, ValueError, "k must"),
        ({"k": 6, "which": "both"}, ValueError, "k must"),
        ({"which": "top"}, ValueError, "which"),
        ({"tol": 0.0}, ValueError, "tol"),
        ({"max_iter": 0}, ValueError, "max_iter"),
        ({"num_random": 0}, ValueError, "num_random"),
        ({"guard_tol": -1.0}, ValueError, "guard_tol"),
        ({"v0": torch.ones(9, dtype=F64)}, ValueError, "v0"),
        ({"k": 2.0}, TypeError, "k must be an int"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, error: type, match: str) -> None:
    A, _ = rotated(torch.arange(10.0), seed=12)
    op = Counting(A)
    with pytest.raises(error, match=match):
        lanczos(op, 10, dtype=F64, **{"k": 2, **kwargs})
    assert op.calls == 0  # refused before any product
