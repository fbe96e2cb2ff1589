"""The outlier rule on constructed spectra, and H = G + R against dense matrices."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ignite_landscape import Probe
from ignite_landscape.measures.outliers import count_outliers, ggn_decomposition
from tests.helpers import classification_data, dense_hessian, mlp
from tests.test_curvature import dense_ggn

F = nn.functional


def _bulk(m: int, top: float = 1.0) -> torch.Tensor:
    # A continuous bulk: eigenvalues of a Marchenko-Pastur-like sample, neighbours within a few percent.
    return torch.linspace(top, 0.2 * top, m, dtype=torch.float64)


@pytest.mark.parametrize("num_outliers", [1, 3, 10])
def test_outliers_spread_over_decades_are_all_counted(num_outliers):
    # Outliers spread over two decades (λ_1 ≫ λ_2 as in trained classifiers), then a bulk 4× below the last.
    outliers = torch.logspace(2, 0.6, num_outliers, dtype=torch.float64)
    spectrum = torch.cat([outliers, _bulk(15, top=float(outliers[-1]) / 4)])
    assert count_outliers(spectrum) == num_outliers
    assert count_outliers(spectrum[torch.randperm(spectrum.numel())]) == num_outliers  # order does not matter


def test_no_break_means_no_outliers():
    assert count_outliers(_bulk(20)) == 0
    assert count_outliers(torch.arange(1, 30, dtype=torch.float64) ** -0.5) == 0  # a power law, ratios < 1.42
    assert count_outliers(torch.zeros(5, dtype=torch.float64)) == 0


def test_rank_deficient_spectrum_counts_the_nonzero_eigenvalues():
    # A rank-2 PSD matrix: round-off "zeros" on both sides of 0 are one bulk at zero.
    spectrum = torch.tensor([3.0, 2.5, 1e-15, -2e-15, 0.0], dtype=torch.float64)
    assert count_outliers(spectrum) == 2


def test_ratio_sets_the_break():
    spectrum = torch.tensor([10.0, 6.0, 1.0, 0.9], dtype=torch.float64)
    assert count_outliers(spectrum) == 2
    assert count_outliers(spectrum, ratio=1.5) == 2  # the deepest break wins over 10/6 = 1.67
    assert count_outliers(spectrum, ratio=7.0) == 0
    with pytest.raises(ValueError, match="ratio"):
        count_outliers(spectrum, ratio=1.0)
    with pytest.raises(ValueError, match="eigenvalues"):
        count_outliers(torch.zeros(0))


def test_decomposition_matches_dense_h_g_r():
    model = mlp(seed=4)
    x, y = classification_data(30, (5,), seed=5)
    probe = Probe((x, y), F.cross_entropy, batch_size=11)
    H = dense_hessian(model, x, y, F.cross_entropy)
    G = dense_ggn(model, x, y, F.cross_entropy)
    R = H - G
    n = H.shape[0]
    res = ggn_decomposition(model, probe, tol=1e-10, trace_hvps=3 * n)
    eh, eg, er = (torch.linalg.eigvalsh(0.5 * (A + A.T)) for A in (H, G, R))
    assert res.num_classes == 3 and res.ggn_eigenvalues.numel() == 8  # 2C + 2
    assert res.lambda_max_hessian == pytest.approx(float(eh[-1]), rel=1e-6)
    assert res.lambda_max_ggn == pytest.approx(float(eg[-1]), rel=1e-6)
    assert res.lambda_max_residual == pytest.approx(float(er[-1]), rel=1e-6)
    assert res.lambda_min_residual == pytest.approx(float(er[0]), rel=1e-6)
    assert torch.allclose(res.ggn_eigenvalues, eg.flip(0)[:8], rtol=1e-6, atol=1e-10 * float(eg[-1]))
    assert res.trace_hessian == pytest.approx(float(H.trace()), rel=1e-6)
    assert res.trace_ggn == pytest.approx(float(G.trace()), rel=1e-6)
    assert res.trace_residual == pytest.approx(float(R.trace()), rel=1e-6, abs=1e-9)
    assert res.num_outliers == count_outliers(eg.flip(0)[:8])
