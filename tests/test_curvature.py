"""Curvature operators (GGN, Fisher, empirical Fisher) against dense float64 matrices built with autograd."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from ignite_landscape import Probe, hessian_density, hessian_eigenvalues, hessian_trace
from ignite_landscape.curvature import CURVATURES, check_curvature, curvature_operator, fisher_labels
from tests.helpers import classification_data, dense_hessian, mlp, small_cnn

F = nn.functional


def _flat_fn(model, x):
    """θ ↦ model outputs (flattened parameters in named_parameters order)."""
    named = dict(model.named_parameters())
    names = list(named)
    shapes = [named[n].shape for n in names]
    sizes = [named[n].numel() for n in names]
    buffers = dict(model.named_buffers())

    def f(theta):
        ps = [c.view(s) for c, s in zip(theta.split(sizes), shapes)]
        return functional_call(model, {**buffers, **dict(zip(names, ps))}, (x,))

    theta0 = torch.cat([named[n].detach().reshape(-1) for n in names])
    return f, theta0


def dense_ggn(model, x, y, loss_fn):
    f, theta = _flat_fn(model, x)
    out = f(theta).detach()
    J = torch.autograd.functional.jacobian(f, theta).reshape(out.numel(), -1)
    H_out = torch.autograd.functional.hessian(lambda o: loss_fn(o.view_as(out), y), out.reshape(-1))
    return J.T @ H_out @ J


def dense_empirical_fisher(model, x, y, loss_fn):
    f, theta = _flat_fn(model, x)
    n = x.shape[0]

    def per_sample(t):
        out = f(t)
        return torch.stack([loss_fn(out[i : i + 1], y[i : i + 1]) for i in range(n)])

    G = torch.autograd.functional.jacobian(per_sample, theta)  # n × P per-sample gradients
    return G.T @ G / n


def operator_matrix(model, probe, curvature, seed=0):
    with probe.session(model) as s:
        op = curvature_operator(s, curvature, seed=seed)
        eye = torch.eye(s.space.numel, dtype=torch.float64)
        return torch.stack([op(eye[i]) for i in range(s.space.numel)])


CASES = {
    "mlp_tanh_ce": lambda: (mlp(), *classification_data(20, (5,)), F.cross_entropy),
    "cnn_bn_eval_ce": lambda: (small_cnn(), *classification_data(12, (1, 6, 6)), F.cross_entropy),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_ggn_operator_equals_dense_jt_h_j(case):
    model, x, y, loss_fn = CASES[case]()
    probe = Probe((x, y), loss_fn, batch_size=7)
    G = operator_matrix(model, probe, "ggn")
    ref = dense_ggn(model.eval(), x, y, loss_fn)
    assert torch.allclose(G, ref, rtol=0, atol=1e-12 * ref.abs().max())
    # Convex loss: positive semi-definite; and H - G is not zero for a tanh network (the residual exists).
    assert float(torch.linalg.eigvalsh(0.5 * (G + G.T))[0]) > -1e-12 * float(ref.abs().max())
    H = dense_hessian(model, x, y, loss_fn)
    assert float((H - ref).abs().max()) > 1e-6


def test_ggn_of_mse_regression_equals_dense():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 6), nn.Sigmoid(), nn.Linear(6, 2)).double()
    x, y = torch.randn(15, 4, dtype=torch.float64), torch.randn(15, 2, dtype=torch.float64)
    probe = Probe((x, y), F.mse_loss, batch_size=4)
    G = operator_matrix(model, probe, "ggn")
    ref = dense_ggn(model, x, y, F.mse_loss)
    assert torch.allclose(G, ref, rtol=0, atol=1e-12 * ref.abs().max())


def test_ggn_equals_hessian_for_a_linear_model():
    # Model linear in θ: the residual R = Σ (∂ℓ/∂f) ∇²f vanishes, so G = H exactly.
    model = nn.Linear(4, 3).double()
    x, y = classification_data(16, (4,), classes=3)
    probe = Probe((x, y), F.cross_entropy, batch_size=5)
    G = operator_matrix(model, probe, "ggn")
    H = operator_matrix(model, probe, "hessian")
    assert torch.allclose(G, H, rtol=0, atol=1e-13 * H.abs().max())


def test_empirical_fisher_operator_equals_per_sample_outer_products():
    model, x, y, loss_fn = CASES["mlp_tanh_ce"]()
    probe = Probe((x, y), loss_fn, batch_size=6)
    Fm = operator_matrix(model, probe, "empirical_fisher")
    ref = dense_empirical_fisher(model, x, y, loss_fn)
    assert torch.allclose(Fm, ref, rtol=0, atol=1e-12 * ref.abs().max())


def test_fisher_is_the_empirical_fisher_of_the_sampled_labels():
    model, x, y, loss_fn = CASES["mlp_tanh_ce"]()
    probe = Probe((x, y), loss_fn, batch_size=6)
    labels = fisher_labels(model, probe, seed=4)
    assert labels.shape == y.shape and labels.dtype == y.dtype
    assert not torch.equal(labels, fisher_labels(model, probe, seed=5))  # the seed matters
    Fm = operator_matrix(model, probe, "fisher", seed=4)
    ref = dense_empirical_fisher(model, x, labels, loss_fn)
    assert torch.allclose(Fm, ref, rtol=0, atol=1e-12 * ref.abs().max())
    # Same seed, same matrix; and the labels do not depend on the batch split.
    other = Probe((x, y), loss_fn, batch_size=20)
    assert torch.equal(fisher_labels(model, other, seed=4), labels)


def test_fisher_averages_to_the_ggn():
    # E_ŷ[∇ℓ∇ℓᵀ] = H_out for the cross-entropy: the mean of many Monte-Carlo Fishers approaches G.
    model, x, y, loss_fn = CASES["mlp_tanh_ce"]()
    probe = Probe((x, y), loss_fn)
    ref = dense_ggn(model, x, y, loss_fn)
    traces = []
    for seed in range(60):
        labels = fisher_labels(model, probe, seed=seed)
        traces.append(float(dense_empirical_fisher(model, x, labels, loss_fn).trace()))
    t = torch.tensor(traces, dtype=torch.float64)
    stderr = float(t.std() / len(traces) ** 0.5)
    assert abs(float(t.mean()) - float(ref.trace())) < 4 * stderr


def test_fisher_refuses_non_classification_outputs():
    model = nn.Linear(3, 2).double()
    x, y = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64)
    probe = Probe((x, y), F.mse_loss)
    with probe.session(model) as s:
        op = curvature_operator(s, "fisher")
        with pytest.raises(ValueError, match="fisher"):
            op(torch.ones(s.space.numel, dtype=torch.float64))


def test_curvature_argument_is_checked():
    assert check_curvature("ggn") == "ggn"
    assert CURVATURES == ("hessian", "ggn", "fisher", "empirical_fisher")
    with pytest.raises(ValueError, match="curvature"):
        check_curvature("gauss-newton")
    model, x, y, loss_fn = CASES["mlp_tanh_ce"]()
    with Probe((x, y), loss_fn).session(model) as s:
        with pytest.raises(ValueError, match="curvature"):
            curvature_operator(s, "kfac")


def test_fisher_refused_with_batchnorm_in_train_mode():
    model, x, y, loss_fn = CASES["cnn_bn_eval_ce"]()
    probe = Probe((x, y), loss_fn, model_mode="train")
    with probe.session(model) as s:
        with pytest.raises(ValueError, match="model_mode"):
            curvature_operator(s, "empirical_fisher")


@pytest.mark.parametrize("curvature", ["fisher", "empirical_fisher"])
@pytest.mark.parametrize(
    "loss_fn",
    [
        nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)),
        nn.CrossEntropyLoss(ignore_index=2),
    ],
    ids=["class_weights", "ignore_index"],
)
def test_fisher_refuses_unequally_weighted_samples(curvature, loss_fn):
    # A 1/N weight per sample would be silently wrong here: the objective weights samples by class
    # or drops the ignored ones.
    torch.manual_seed(0)
    model = nn.Linear(4, 3).double()
    x, y = torch.randn(12, 4, dtype=torch.float64), torch.arange(12) % 3
    with Probe((x, y), loss_fn).session(model) as s:
        with pytest.raises(ValueError, match="unequally"):
            curvature_operator(s, curvature)
        curvature_operator(s, "ggn")  # the GGN follows the objective's own weights


def test_fisher_accepts_equal_weights_and_unused_ignore_index():
    torch.manual_seed(0)
    model = nn.Linear(4, 3).double()
    x, y = torch.randn(12, 4, dtype=torch.float64), torch.arange(12) % 3
    plain = operator_matrix(model, Probe((x, y), nn.CrossEntropyLoss()), "empirical_fisher")
    unused = operator_matrix(model, Probe((x, y), nn.CrossEntropyLoss(ignore_index=7)), "empirical_fisher")
    torch.testing.assert_close(unused, plain, rtol=1e-12, atol=1e-14)


def _dense(curvature, model, x, y, loss_fn, probe):
    if curvature == "ggn":
        return dense_ggn(model, x, y, loss_fn)
    if curvature == "empirical_fisher":
        return dense_empirical_fisher(model, x, y, loss_fn)
    return dense_empirical_fisher(model, x, fisher_labels(model, probe, seed=0), loss_fn)


@pytest.mark.parametrize("curvature", ["ggn", "fisher", "empirical_fisher"])
def test_spectrum_trace_and_density_of_each_curvature_match_dense(curvature):
    model, x, y, loss_fn = CASES["mlp_tanh_ce"]()
    probe = Probe((x, y), loss_fn, batch_size=8)
    C = _dense(curvature, model, x, y, loss_fn, probe)
    exact = torch.linalg.eigvalsh(0.5 * (C + C.T)).flip(0)
    res = hessian_eigenvalues(model, probe, k=3, tol=1e-10, curvature=curvature)
    assert torch.allclose(res.eigenvalues, exact[:3], rtol=1e-6, atol=0)
    # Hutch++ whose sketch spans the whole space (P = 66 ≤ num_hvps // 3) computes the trace exactly.
    n = sum(p.numel() for p in model.parameters())
    tr = hessian_trace(model, probe, num_hvps=3 * n, curvature=curvature)
    assert tr.curvature == curvature and tr.num_hvps == 3 * n
    assert tr.value == pytest.approx(float(C.trace()), rel=1e-6)
    # Stochastic Lanczos quadrature of the same operator: its extreme node converges to λ_max.
    dens = hessian_density(model, probe, num_steps=40, num_runs=1, curvature=curvature)
    assert dens.lambda_max == pytest.approx(float(exact[0]), rel=1e-6)
    assert dens.lambda_min > -1e-8 * float(exact[0])  # Fisher and GGN are positive semi-definite here


def test_hessian_curvature_is_the_default():
    model, x, y, loss_fn = CASES["mlp_tanh_ce"]()
    probe = Probe((x, y), loss_fn)
    a = hessian_eigenvalues(model, probe, k=2, tol=1e-8)
    b = hessian_eigenvalues(model, probe, k=2, tol=1e-8, curvature="hessian")
    assert torch.equal(a.eigenvalues, b.eigenvalues)
    with pytest.raises(ValueError, match="curvature"):
        hessian_eigenvalues(model, probe, curvature="GGN")
    with pytest.raises(ValueError, match="curvature"):
        hessian_density(model, probe, curvature="hessian2")


class _DictOutput(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return {"logits": self.inner(x), "aux": x.sum()}


@pytest.mark.parametrize("curvature", ["ggn", "fisher", "empirical_fisher"])
def test_curvature_acts_on_the_transformed_prediction(curvature):
    # Model outputs a dict; output_transform picks the logits: the same matrices as the plain model's.
    model, x, y, loss_fn = CASES["mlp_tanh_ce"]()
    wrapped = _DictOutput(model)
    plain = operator_matrix(model, Probe((x, y), loss_fn, batch_size=6), curvature, seed=2)
    probe = Probe((x, y), loss_fn, batch_size=6, output_transform=lambda out: out["logits"])
    assert torch.allclose(operator_matrix(wrapped, probe, curvature, seed=2), plain, rtol=0, atol=1e-14)


def test_empirical_fisher_of_a_summed_loss_weights_each_sample_once():
    # L = Σ ℓ_n: F = Σ ∇ℓ_n ∇ℓ_nᵀ, N times the mean loss's (1/N) Σ ∇ℓ_n ∇ℓ_nᵀ; the GGN scales the same way.
    model, x, y, _ = CASES["mlp_tanh_ce"]()
    n = x.shape[0]
    for curvature in ("empirical_fisher", "fisher", "ggn"):
        mean = operator_matrix(model, Probe((x, y), nn.CrossEntropyLoss(), batch_size=7), curvature)
        total = operator_matrix(model, Probe((x, y), nn.CrossEntropyLoss(reduction="sum"), batch_size=7), curvature)
        assert torch.allclose(total, n * mean, rtol=0, atol=1e-12 * float(total.abs().max()))
