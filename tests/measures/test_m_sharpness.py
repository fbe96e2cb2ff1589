"""m-sharpness (Foret et al. 2021): the mean over disjoint probe chunks of each chunk's own sharpness."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Engine
from torch import nn

import ignite_landscape as il
from tests.helpers import classification_data, mlp


def sam_sharpness_by_hand(model: nn.Module, x: torch.Tensor, y: torch.Tensor, rho: float) -> float:
    """L(θ + ρ·g/‖g‖) − L(θ) of the mean cross-entropy on (x, y), with plain autograd and a perturbed copy."""
    params = list(model.parameters())
    loss = F.cross_entropy(model(x), y)
    g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss, params)])
    theta = torch.nn.utils.parameters_to_vector(params).detach()
    other = mlp()
    torch.nn.utils.vector_to_parameters(theta + rho * g / g.norm(), other.parameters())
    with torch.no_grad():
        return float(F.cross_entropy(other(x), y) - loss)


@pytest.mark.parametrize("m", [4, 7])
def test_m_sharpness_is_the_mean_of_each_chunks_own_sam_sharpness(m):
    model = mlp()
    x, y = classification_data(30, (5,), seed=8)
    probe = il.Probe((x, y), F.cross_entropy, batch_size=6)
    res = il.sharpness(model, probe, rho=0.1, m=m)
    k = 30 // m  # the last 30 mod m samples are left out
    chunks = torch.tensor(
        [sam_sharpness_by_hand(model, x[i * m : (i + 1) * m], y[i * m : (i + 1) * m], 0.1) for i in range(k)],
        dtype=torch.float64,
    )
    assert res.m == m and res.num_chunks == k
    torch.testing.assert_close(res.value, float(chunks.mean()), rtol=1e-10, atol=0)
    torch.testing.assert_close(res.stderr, float(chunks.std() / k**0.5), rtol=1e-9, atol=0)
    assert res.value > 0 and res.scalars()["num_chunks"] == float(k)
    # m-sharpness differs from the sharpness of the whole probe (each chunk has its own worst case) ...
    whole = il.sharpness(model, probe, rho=0.1)
    assert abs(res.value - whole.value) > 1e-3 * whole.value
    # ... and m = n is the whole probe.
    torch.testing.assert_close(il.sharpness(model, probe, rho=0.1, m=30).value, whole.value, rtol=1e-12, atol=0)


def test_m_sharpness_options_and_handler():
    model = mlp()
    probe = il.Probe(classification_data(12, (5,)), F.cross_entropy)
    with pytest.raises(ValueError, match="m must be at most"):
        il.sharpness(model, probe, m=13)
    with pytest.raises(ValueError, match="m must be at least"):
        il.Sharpness(model, probe, m=0)
    with pytest.raises(ValueError, match="m must be at most"):
        il.Sharpness(model, probe, m=20)
    trainer = Engine(lambda e, b: None)
    il.Sharpness(model, probe, rho=0.1, m=4, method="ascent", steps=5).attach(trainer)
    trainer.run([0], max_epochs=1)
    expected = il.sharpness(model, probe, rho=0.1, m=4, method="ascent", steps=5)
    assert trainer.state.metrics["landscape/sharpness/value"] == expected.value
    assert trainer.state.metrics["landscape/sharpness/stderr"] == expected.stderr
    assert trainer.state.metrics["landscape/sharpness/num_chunks"] == 3.0
