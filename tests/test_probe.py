import random
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from ignite_landscape import Probe, hessian_density, hessian_eigenvalues, hessian_trace, preserved_state
from tests.helpers import classification_data, dense_hessian, mlp, small_cnn


def test_uneven_batches_equal_full_batch():
    model = small_cnn()
    x, y = classification_data(23, (1, 6, 6))
    full = Probe((x, y), F.cross_entropy)
    loader = DataLoader(TensorDataset(x, y), batch_size=5)  # 5+5+5+5+3
    split = Probe(loader, F.cross_entropy)
    assert split.batch_size == 5 and full.batch_size == 23
    v = torch.randn(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    results = []
    for probe in (full, split):
        with probe.session(model) as s:
            loss, grad = s.loss_and_grad()
            results.append((loss, grad, s.hvp(v), s.evaluate().accuracy))
    (l1, g1, h1, a1), (l2, g2, h2, a2) = results
    assert l1 == pytest.approx(l2, rel=1e-12)
    torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(h1, h2, rtol=1e-10, atol=1e-12)
    assert a1 == a2
    model.eval()
    H = dense_hessian(model, x, y, F.cross_entropy)
    torch.testing.assert_close(h2, H @ v, rtol=1e-10, atol=1e-12)


def test_hvp_without_graph_cache_matches_cached():
    model = mlp()
    x, y = classification_data(17, (5,))
    v = torch.randn(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    out = []
    for budget in (0, 1 << 30, 1):  # never, always, over budget after the first batch
        with Probe((x, y), F.cross_entropy, batch_size=4, max_graph_bytes=budget).session(model) as s:
            out.append(s.hvp(v))
    torch.testing.assert_close(out[0], out[1], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(out[0], out[2], rtol=1e-12, atol=1e-14)


def test_takes_first_samples_once_and_never_touches_training_rng():
    x, y = classification_data(50, (5,))
    loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)
    torch.manual_seed(5)
    before = torch.get_rng_state()
    probe = Probe(loader, F.cross_entropy, num_samples=20)
    assert torch.equal(torch.get_rng_state(), before)
    assert probe.num_samples == 20 and probe.targets.shape == (20,)
    # The kept samples are rows of the data set, fixed from now on.
    rows = {tuple(r.tolist()) for r in x}
    assert all(tuple(r.tolist()) in rows for r in probe.inputs)
    kept = probe.inputs.clone()
    probe.evaluate(mlp())
    assert torch.equal(probe.inputs, kept)


def test_fewer_samples_than_asked_uses_all():
    x, y = classification_data(7, (5,))
    assert Probe((x, y), F.cross_entropy, num_samples=100).num_samples == 7


def test_train_mode_probe_leaves_batchnorm_statistics_and_is_deterministic():
    model = small_cnn(dropout=0.3)
    model.eval()
    x, y = classification_data(12, (1, 6, 6))
    probe = Probe((x, y), F.cross_entropy, model_mode="train", batch_size=6)
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    a = probe.evaluate(model).loss
    b = probe.evaluate(model).loss
    assert a == b  # fixed dropout masks and batch statistics: the same function every time
    assert a != Probe((x, y), F.cross_entropy, model_mode="eval").evaluate(model).loss
    for k, v in model.state_dict().items():
        assert torch.equal(v, buffers[k]), k
    assert not model.training


def test_restoring_context_restores_everything_on_exception():
    model = small_cnn(dropout=0.5)
    model.train()
    model.conv.weight.grad = torch.ones_like(model.conv.weight)
    grad_obj = model.conv.weight.grad
    model.fc.bias.requires_grad_(False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    with pytest.raises(RuntimeError, match="boom"), preserved_state(model):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
            model.conv.weight.grad.mul_(3)
            model.fc.weight.grad = torch.zeros_like(model.fc.weight)
        model.fc.bias.requires_grad_(True)
        model.bn(torch.randn(4, 3, 2, 2, dtype=torch.float64))  # updates running stats
        model.eval()
        torch.rand(5), np.random.rand(3), random.random()
        raise RuntimeError("boom")
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert model.conv.weight.grad is grad_obj and torch.equal(grad_obj, torch.ones_like(grad_obj))
    assert model.fc.weight.grad is None
    assert not model.fc.bias.requires_grad
    assert all(m.training for m in model.modules())
    assert torch.equal(torch.get_rng_state(), rng[0])
    assert np.array_equal(np.random.get_state()[1], rng[1])
    assert random.getstate() == rng[2]


def _train(measure_between: bool) -> tuple[dict, list[float]]:
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    model = small_cnn(seed=0, dropout=0.3)
    model.train()
    x, y = classification_data(64, (1, 6, 6))
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    probes = [Probe(loader, F.cross_entropy, num_samples=24, model_mode=m, batch_size=10) for m in ("eval", "train")]
    losses = []
    for _ in range(2):
        for xb, yb in loader:
            opt.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if measure_between:
                for probe in probes:
                    hessian_eigenvalues(model, probe, k=2, which="both", max_iter=12)
                    hessian_trace(model, probe, num_hvps=6)
                    hessian_trace(model, probe, method="hutchinson", num_hvps=3)
                    hessian_density(model, probe, num_steps=4, num_runs=2)
                    probe.evaluate(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state.update({f"grad/{n}": p.grad.clone() for n, p in model.named_parameters()})
    state.update({f"opt/{i}": s["momentum_buffer"].clone() for i, s in enumerate(opt.state.values())})
    return state, losses


def test_training_is_bit_identical_with_measures_between_steps():
    plain_state, plain_losses = _train(False)
    probed_state, probed_losses = _train(True)
    assert plain_losses == probed_losses
    assert plain_state.keys() == probed_state.keys()
    for k in plain_state:
        assert torch.equal(plain_state[k], probed_state[k]), k
    assert torch.equal(plain_state["bn.num_batches_tracked"], torch.tensor(8))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_samples": 0}, ValueError, "num_samples"),
        ({"num_samples": -3}, ValueError, "num_samples"),
        ({"num_samples": 2.5}, TypeError, "num_samples"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"model_mode": "test"}, ValueError, "model_mode"),
        ({"prepare_batch": 3}, TypeError, "prepare_batch"),
    ],
)
def test_probe_rejects_bad_arguments(kwargs, error, match):
    x, y = classification_data(8, (5,))
    with pytest.raises(error, match=match):
        Probe((x, y), F.cross_entropy, **kwargs)


def test_probe_rejects_bad_data_and_loss():
    x, y = classification_data(8, (5,))
    with pytest.raises(ValueError, match="no samples"):
        Probe(DataLoader(TensorDataset(x[:0], y[:0]), batch_size=4), F.cross_entropy)
    with pytest.raises(ValueError, match="no samples"):
        Probe([], F.cross_entropy)
    with pytest.raises(TypeError, match="data"):
        Probe(None, F.cross_entropy)
    with pytest.raises(TypeError, match="loss_fn"):
        Probe((x, y), "cross_entropy")
    probe = Probe((x, y), lambda out, t: F.cross_entropy(out, t, reduction="none"))
    with pytest.raises(ValueError, match="loss_fn must return a scalar"):
        probe.evaluate(mlp())


def test_measures_reject_bad_arguments():
    model = mlp()
    x, y = classification_data(8, (5,))
    probe = Probe((x, y), F.cross_entropy)
    num_params = sum(p.numel() for p in model.parameters())
    for k in (0, -1, num_params):
        with pytest.raises(ValueError, match="k must"):
            hessian_eigenvalues(model, probe, k=k)
    with pytest.raises(TypeError, match="k must"):
        hessian_eigenvalues(model, probe, k=2.0)
    with pytest.raises(ValueError, match="which"):
        hessian_eigenvalues(model, probe, which="middle")
    with pytest.raises(ValueError, match="method"):
        hessian_trace(model, probe, method="exactly")  # "exact" is a method since issue 13
    frozen = mlp()
    for p in frozen.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        hessian_eigenvalues(frozen, probe)
    with pytest.raises(ValueError, match="params"):
        hessian_eigenvalues(model, probe, params="nonexistent")
    with pytest.raises(TypeError, match="model"):
        hessian_eigenvalues("model", probe)


def test_nan_loss_gives_nan_results_with_a_warning():
    model = mlp()
    x, y = classification_data(8, (5,))
    x[3, 0] = float("nan")
    probe = Probe((x, y), F.cross_entropy)
    with pytest.warns(RuntimeWarning):
        res = hessian_eigenvalues(model, probe, k=2)
    assert torch.isnan(res.eigenvalues).all() and not res.converged.any()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert np.isnan(hessian_trace(model, probe, num_hvps=6).value)
        dens = hessian_density(model, probe, num_steps=3, num_runs=1)
        assert np.isnan(dens.negative_mass) and torch.isnan(dens.density).all()
        assert np.isnan(probe.evaluate(model).loss)
