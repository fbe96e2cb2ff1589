import pytest
import torch
import torch.nn.functional as F

from ignite_landscape import Probe, gradient_noise_scale
from tests.helpers import classification_data, mlp, small_cnn


def per_sample_grads(model, x, y):
    rows = []
    for i in range(len(y)):
        loss = F.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(model.parameters()))]))
    return torch.stack(rows).double()


@pytest.mark.parametrize("make,shape", [(mlp, (5,)), (small_cnn, (1, 6, 6))])
def test_per_sample_estimator_matches_direct_computation(make, shape):
    model = make()
    model.eval()
    x, y = classification_data(37, shape)
    g = per_sample_grads(model, x, y)
    n = len(y)
    g_bar = g.mean(0)
    trace_sigma = float(((g - g_bar) ** 2).sum() / (n - 1))  # tr of the unbiased sample covariance
    grad_sq = float(g_bar @ g_bar) - trace_sigma / n  # unbiased ‖G‖²
    model.train()
    snap = {k: v.clone() for k, v in model.state_dict().items()}
    res = gradient_noise_scale(model, Probe((x, y), F.cross_entropy, batch_size=10))
    for k, v in model.state_dict().items():
        assert torch.equal(v, snap[k])
    assert res.estimator == "per_sample" and res.num_samples == n
    torch.testing.assert_close(res.trace_sigma, trace_sigma, rtol=1e-9, atol=0)
    torch.testing.assert_close(res.grad_norm_sq, grad_sq, rtol=1e-9, atol=0)
    torch.testing.assert_close(res.probe_grad_norm_sq, float(g_bar @ g_bar), rtol=1e-9, atol=0)
    if grad_sq > 0:
        torch.testing.assert_close(res.b_simple, trace_sigma / grad_sq, rtol=1e-9, atol=0)
    else:  # noise dominates the probe gradient: no finite batch size estimate
        assert res.b_simple == float("inf")
    assert set(res.scalars()) >= {"b_simple", "trace_sigma", "grad_norm_sq"}


def test_two_batch_with_batch_one_equals_per_sample():
    model = mlp()
    probe = Probe(classification_data(24, (5,)), F.cross_entropy, batch_size=5)
    a = gradient_noise_scale(model, probe)
    b = gradient_noise_scale(model, probe, method="two_batch", small_batch=1)
    assert b.estimator == "two_batch" and b.small_batch == 1
    torch.testing.assert_close(b.trace_sigma, a.trace_sigma, rtol=1e-9, atol=0)
    torch.testing.assert_close(b.grad_norm_sq, a.grad_norm_sq, rtol=1e-9, atol=0)


def test_two_batch_is_unbiased_over_random_splits():
    # Over random splits into disjoint batches of B, E‖g_B‖² = ‖ḡ‖² + tr(Σ)(1/B − 1/N) with the
    # unbiased tr(Σ): the two-batch estimate averages to the per-sample one.
    model = mlp()
    x, y = classification_data(32, (5,))
    probe = Probe((x, y), F.cross_entropy)
    exact = gradient_noise_scale(model, probe)
    runs = torch.tensor(
        [gradient_noise_scale(model, probe, method="two_batch", small_batch=4, seed=s).trace_sigma for s in range(40)],
        dtype=torch.float64,
    )
    stderr = float(runs.std() / len(runs) ** 0.5)
    assert abs(float(runs.mean()) - exact.trace_sigma) <= 3 * stderr, (float(runs.mean()), exact.trace_sigma, stderr)
    assert stderr < 0.2 * exact.trace_sigma


def test_two_batch_runs_in_train_mode_and_is_reproducible():
    model = small_cnn(dropout=0.2)
    probe = Probe(classification_data(32, (1, 6, 6)), F.cross_entropy, model_mode="train")
    rng = torch.get_rng_state()
    a = gradient_noise_scale(model, probe, method="two_batch", small_batch=8, seed=1)
    b = gradient_noise_scale(model, probe, method="two_batch", small_batch=8, seed=1)
    assert torch.equal(torch.get_rng_state(), rng)
    assert a.trace_sigma == b.trace_sigma and a.small_batch == 8
    with pytest.raises(ValueError, match="model_mode"):
        gradient_noise_scale(model, probe)


@pytest.mark.parametrize(
    "kwargs,exc,word",
    [
        (dict(method="exact"), ValueError, "method"),
        (dict(method="two_batch", small_batch=0), ValueError, "small_batch"),
        (dict(method="two_batch", small_batch=10), ValueError, "small_batch"),
        (dict(method="two_batch", small_batch=2.5), TypeError, "small_batch"),
    ],
)
def test_bad_input(kwargs, exc, word):
    probe = Probe(classification_data(10, (5,)), F.cross_entropy)
    with pytest.raises(exc, match=word):
        gradient_noise_scale(mlp(), probe, **kwargs)
