"""Gradient overlap with the top-k eigenspace against a dense float64 eigendecomposition."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ignite_landscape import Probe
from ignite_landscape.measures.overlap import gradient_overlap
from tests.helpers import classification_data, dense_hessian, mlp
from tests.measures.test_directional import _dense_grad
from tests.test_curvature import dense_ggn

F = nn.functional


def _setup():
    model = mlp(seed=2)
    x, y = classification_data(40, (5,), seed=3)
    return model, x, y, Probe((x, y), F.cross_entropy, batch_size=16)


@pytest.mark.parametrize("curvature, k", [("hessian", 3), ("hessian", 1), ("ggn", 4)])
def test_overlap_matches_dense_eigendecomposition(curvature, k):
    model, x, y, probe = _setup()
    C = (
        dense_hessian(model, x, y, F.cross_entropy)
        if curvature == "hessian"
        else dense_ggn(model, x, y, F.cross_entropy)
    )
    evals, evecs = torch.linalg.eigh(C)
    top = evecs[:, -k:].flip(1)
    g = _dense_grad(model, x, y)
    expected = (top.T @ g) ** 2 / (g @ g)
    res = gradient_overlap(model, probe, k=k, curvature=curvature, tol=1e-10)
    assert res.k == k and not res.reused and res.num_hvps > 0
    assert torch.allclose(res.eigenvalues, evals[-k:].flip(0), rtol=1e-8, atol=0)
    assert torch.allclose(res.overlaps, expected, rtol=0, atol=1e-8)
    assert res.value == pytest.approx(float(expected.sum()), abs=1e-8)
    assert res.grad_norm == pytest.approx(float(g.norm()), rel=1e-10)


def test_given_eigenvectors_are_reused_without_products():
    model, x, y, probe = _setup()
    H = dense_hessian(model, x, y, F.cross_entropy)
    evals, evecs = torch.linalg.eigh(H)
    g = _dense_grad(model, x, y)
    rows = evecs.flip(1).T[:5]
    res = gradient_overlap(model, probe, k=4, eigenvectors=rows, eigenvalues=evals.flip(0)[:5])
    assert res.reused and res.num_hvps == 0
    assert res.value == pytest.approx(float(((rows[:4] @ g) ** 2).sum() / (g @ g)), abs=1e-12)
    assert torch.equal(res.eigenvalues, evals.flip(0)[:4])
    # The whole space: the overlap is 1.
    everything = gradient_overlap(model, probe, k=evecs.shape[0] - 1, eigenvectors=evecs.flip(1).T)
    top_missing = float((evecs[:, 0] @ g) ** 2 / (g @ g))
    assert everything.value == pytest.approx(1.0 - top_missing, abs=1e-12)


def test_overlap_arguments_are_checked():
    model, x, y, probe = _setup()
    with pytest.raises(ValueError, match="k must"):
        gradient_overlap(model, probe, k=0)
    with pytest.raises(TypeError, match="k must"):
        gradient_overlap(model, probe, k=2.0)
    with pytest.raises(ValueError, match="k must"):
        gradient_overlap(model, probe, k=10_000)
    with pytest.raises(ValueError, match="eigenvectors"):
        gradient_overlap(model, probe, k=3, eigenvectors=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="fewer than k"):
        gradient_overlap(model, probe, k=3, eigenvectors=torch.zeros(2, sum(p.numel() for p in model.parameters())))
    with pytest.raises(ValueError, match="curvature"):
        gradient_overlap(model, probe, curvature="H")
