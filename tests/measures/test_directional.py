"""Directional curvature and batch sharpness against dense float64 Hessians and brute-force loops."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ignite_landscape import Probe
from ignite_landscape.measures.directional import batch_sharpness, directional_curvature, minibatch_indices
from tests.helpers import classification_data, dense_hessian, mlp
from tests.test_curvature import dense_ggn

F = nn.functional


def _setup(n=24):
    model = mlp()
    x, y = classification_data(n, (5,))
    return model, x, y, Probe((x, y), F.cross_entropy, batch_size=7)


def _dense_grad(model, x, y):
    loss = F.cross_entropy(model(x), y)
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(model.parameters()))])


def test_curvature_along_eigenvectors_is_the_eigenvalue():
    model, x, y, probe = _setup()
    H = dense_hessian(model, x, y, F.cross_entropy)
    evals, evecs = torch.linalg.eigh(H)
    for i in (0, len(evals) // 2, len(evals) - 1):
        res = directional_curvature(model, probe, direction=evecs[:, i] * 3.0)
        assert res.direction == "custom" and res.num_hvps == 1
        assert res.direction_norm == pytest.approx(3.0, rel=1e-12)
        assert res.value == pytest.approx(float(evals[i]), rel=1e-8, abs=1e-10 * float(evals.abs().max()))


def test_curvature_along_gradient_and_update_match_dense():
    model, x, y, probe = _setup()
    H = dense_hessian(model, x, y, F.cross_entropy)
    g = _dense_grad(model, x, y)
    res = directional_curvature(model, probe, "gradient")
    expected = float(g @ H @ g / (g @ g))
    assert res.direction == "gradient"
    assert res.value == pytest.approx(expected, rel=1e-8)
    assert res.direction_norm == pytest.approx(float(g.norm()), rel=1e-10)
    # An update d = θ − θ_prev as a dict of the weights before it.
    torch.manual_seed(5)
    d = torch.randn_like(g)
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    sizes = [p.numel() for p in model.parameters()]
    prev = {n: c.view_as(p) for (n, p), c in zip(model.named_parameters(), (theta - d).split(sizes))}
    upd = directional_curvature(model, probe, "update", previous=prev)
    assert upd.direction == "update"
    assert upd.value == pytest.approx(float(d @ H @ d / (d @ d)), rel=1e-8)


def test_ggn_curvature_along_gradient_matches_dense_ggn():
    model, x, y, probe = _setup()
    G = dense_ggn(model, x, y, F.cross_entropy)
    g = _dense_grad(model, x, y)
    res = directional_curvature(model, probe, "gradient", curvature="ggn")
    assert res.curvature == "ggn"
    assert res.value == pytest.approx(float(g @ G @ g / (g @ g)), rel=1e-8)


def test_directional_arguments_are_checked():
    model, x, y, probe = _setup()
    with pytest.raises(ValueError, match="previous"):
        directional_curvature(model, probe, "update")
    with pytest.raises(ValueError, match="direction"):
        directional_curvature(model, probe, "hessian")
    with pytest.raises(ValueError, match="direction"):
        directional_curvature(model, probe, torch.zeros(3))
    with pytest.raises(ValueError, match="zero"):
        directional_curvature(model, probe, torch.zeros(sum(p.numel() for p in model.parameters())))
    with pytest.raises(TypeError, match="direction"):
        directional_curvature(model, probe, 3.0)
    with pytest.raises(ValueError, match="curvature"):
        directional_curvature(model, probe, curvature="kfac")


def test_minibatches_are_seeded_and_without_repeats():
    a = minibatch_indices(10, 4, 5, seed=3)
    assert a == a and all(torch.equal(u, v) for u, v in zip(a, minibatch_indices(10, 4, 5, seed=3)))
    assert len(a) == 5 and all(len(set(b.tolist())) == 4 for b in a)
    assert not all(torch.equal(u, v) for u, v in zip(a, minibatch_indices(10, 4, 5, seed=4)))
    with pytest.raises(ValueError, match="batch_size"):
        minibatch_indices(10, 11, 2)


def test_batch_sharpness_equals_a_brute_force_loop():
    model, x, y, probe = _setup(n=30)
    res = batch_sharpness(model, probe, batch_size=8, num_batches=6, seed=2, lr=0.1)
    expected = []
    for idx in minibatch_indices(30, 8, 6, seed=2):
        xb, yb = x[idx], y[idx]
        H = dense_hessian(model, xb, yb, F.cross_entropy)
        g = _dense_grad(model, xb, yb)
        expected.append(float(g @ H @ g / (g @ g)))
    t = torch.tensor(expected, dtype=torch.float64)
    assert res.values == pytest.approx(expected, rel=1e-9)
    assert res.value == pytest.approx(float(t.mean()), rel=1e-9)
    assert res.stderr == pytest.approx(float(t.std() / 6**0.5), rel=1e-9)
    assert res.num_hvps == 6 and res.batch_size == 8
    sc = res.scalars()
    assert sc["threshold"] == pytest.approx(20.0) and sc["ratio"] == pytest.approx(res.value / 20.0)
    # Mini-batch curvature differs from the full-batch one (it is the point of the measure).
    full = directional_curvature(model, probe, "gradient").value
    assert abs(res.value - full) > 1e-6


def test_batch_sharpness_arguments_are_checked():
    model, x, y, probe = _setup()
    with pytest.raises(ValueError, match="batch_size"):
        batch_sharpness(model, probe, batch_size=0)
    with pytest.raises(ValueError, match="batch_size"):
        batch_sharpness(model, probe, batch_size=1000)
    with pytest.raises(TypeError, match="num_batches"):
        batch_sharpness(model, probe, batch_size=4, num_batches=2.5)
    with pytest.raises(ValueError, match="num_batches"):
        batch_sharpness(model, probe, batch_size=4, num_batches=1)
    with pytest.raises(ValueError, match="lr"):
        batch_sharpness(model, probe, batch_size=4, lr=-1.0)
