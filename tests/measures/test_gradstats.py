"""Gradient statistics against a loop of single-sample autograd.grad in float64 (the ground truth)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from torch import nn

import ignite_landscape as il
from ignite_landscape.measures.persample import per_sample_gradients, per_sample_moments
from tests.helpers import classification_data, dense_hessian, full_batch_trainer, mlp, small_cnn

WEIGHT = torch.tensor([0.5, 2.0, 1.25], dtype=torch.float64)

# (loss_fn, the per-sample "total" term, the normaliser of the whole probe objective)
LOSSES = {
    "mean": (F.cross_entropy, lambda out, y: F.cross_entropy(out, y, reduction="sum"), lambda y: len(y)),
    "sum": (
        nn.CrossEntropyLoss(reduction="sum"),
        lambda out, y: F.cross_entropy(out, y, reduction="sum"),
        lambda y: 1.0,
    ),
    "weighted_ignore": (
        nn.CrossEntropyLoss(weight=WEIGHT, ignore_index=1),
        lambda out, y: F.cross_entropy(out, y, weight=WEIGHT, ignore_index=1, reduction="sum"),
        lambda y: float(WEIGHT[y[y != 1]].sum()),
    ),
}


def loop_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """n·∇(sample i's share of the probe objective), one autograd.grad per sample: (n, P) float64."""
    _, total, normaliser = LOSSES[loss]
    n, norm = len(y), normaliser(y)
    rows = []
    for i in range(n):
        share = total(model(x[i : i + 1]), y[i : i + 1]) / norm
        gs = torch.autograd.grad(share * n, list(model.parameters()), allow_unused=True)
        rows.append(
            torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(gs, model.parameters())])
        )
    return torch.stack(rows).double()


def eval_model(make):
    model = make()
    model.eval()
    return model


@pytest.mark.parametrize("loss", sorted(LOSSES))
@pytest.mark.parametrize("make,shape", [(mlp, (5,)), (small_cnn, (1, 6, 6))])
def test_per_sample_gradients_equal_a_loop_of_single_sample_grads(make, shape, loss):
    model = eval_model(make)
    x, y = classification_data(23, shape)
    expected = loop_grads(model, x, y, loss)
    probe = il.Probe((x, y), LOSSES[loss][0], batch_size=7)
    with probe.session(model) as s:
        rows = [torch.cat([g.reshape(c, -1) for g in gs], 1) for c, gs in per_sample_gradients(s, 3)]
        full_grad = s.grad()
    got = torch.cat(rows)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)
    # Scaled so that their mean is the probe gradient, whatever the reduction.
    torch.testing.assert_close(got.mean(0), full_grad, rtol=0, atol=1e-12)


@pytest.mark.parametrize("chunk_size", [1, 4, None])
@pytest.mark.parametrize("loss", ["mean", "weighted_ignore"])
def test_gsnr_fisher_trace_and_norms_equal_dense_computations(chunk_size, loss):
    model = eval_model(small_cnn)
    x, y = classification_data(30, (1, 6, 6), seed=4)
    g = loop_grads(model, x, y, loss)
    n = len(y)
    mean, var = g.mean(0), g.var(0, unbiased=True)
    ok = var > 0
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    probe = il.Probe((x, y), LOSSES[loss][0], batch_size=8)
    res = il.gradient_statistics(model, probe, chunk_size=chunk_size)
    for k, v in model.state_dict().items():
        assert torch.equal(v, snapshot[k]), k
    torch.testing.assert_close(res.sample_norms, g.norm(dim=1), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(res.fisher_trace, float((g**2).sum() / n), rtol=1e-10, atol=0)
    torch.testing.assert_close(res.gsnr, float((mean[ok] ** 2 / var[ok]).mean()), rtol=1e-9, atol=0)
    torch.testing.assert_close(res.trace_sigma, float(var.sum()), rtol=1e-10, atol=0)
    torch.testing.assert_close(res.grad_norm, float(mean.norm()), rtol=1e-10, atol=0)
    assert res.gsnr_coordinates == int(ok.sum()) and res.num_samples == n
    # Per layer: the same mean over each module's coordinates.
    offset = 0
    for name, module in (("conv", model.conv), ("bn", model.bn), ("fc", model.fc)):
        size = sum(p.numel() for p in module.parameters())
        sl = slice(offset, offset + size)
        offset += size
        expected = float((mean[sl][ok[sl]] ** 2 / var[sl][ok[sl]]).mean())
        torch.testing.assert_close(res.layer_gsnr[name], expected, rtol=1e-9, atol=0)
    scalars = res.scalars()
    assert scalars["gsnr/fc"] == res.layer_gsnr["fc"]
    torch.testing.assert_close(scalars["sample_norm_max"], float(g.norm(dim=1).max()), rtol=1e-10, atol=0)


def test_zero_variance_coordinates_are_left_out_of_the_gsnr():
    # A hidden unit whose input weights are zero and tanh(0) = 0: its outgoing weights get no gradient.
    model = mlp()
    with torch.no_grad():
        model[0].weight[0].zero_()
        model[0].bias[0] = 0.0
    x, y = classification_data(12, (5,))
    res = il.gradient_statistics(model, il.Probe((x, y), F.cross_entropy))
    g = loop_grads(model, x, y, "mean")
    var = g.var(0)
    assert int((var == 0).sum()) >= 3  # the unit's three outgoing weights
    assert res.gsnr_coordinates == int((var > 0).sum())
    assert math.isfinite(res.gsnr)


def test_per_sample_moments_match_the_noise_scale():
    model = eval_model(mlp)
    probe = il.Probe(classification_data(20, (5,)), F.cross_entropy, batch_size=6)
    with probe.session(model) as s:
        m = per_sample_moments(s, 4)
    noise = il.gradient_noise_scale(model, probe, chunk_size=4)
    torch.testing.assert_close(float(m.m2.sum()) / 19, noise.trace_sigma, rtol=1e-12, atol=0)


def test_distance_from_init_and_update_per_layer():
    model = mlp()
    names = [n for n, _ in model.named_parameters()]
    torch.manual_seed(5)
    initial = {n: p.detach() + 0.1 * torch.randn_like(p) for n, p in model.named_parameters()}
    previous = {n: p.detach() + 0.01 * torch.randn_like(p) for n, p in model.named_parameters()}
    probe = il.Probe(classification_data(10, (5,)), F.cross_entropy)
    res = il.gradient_statistics(model, probe, initial=initial, previous=previous)
    theta = {n: p.detach() for n, p in model.named_parameters()}
    dist = math.sqrt(sum(float(((theta[n] - initial[n]) ** 2).sum()) for n in names))
    upd = math.sqrt(sum(float(((theta[n] - previous[n]) ** 2).sum()) for n in names))
    norm = math.sqrt(sum(float((theta[n] ** 2).sum()) for n in names))
    torch.testing.assert_close(res.distance_from_init, dist, rtol=1e-12, atol=0)
    torch.testing.assert_close(res.update_norm, upd, rtol=1e-12, atol=0)
    torch.testing.assert_close(res.relative_update, upd / norm, rtol=1e-12, atol=0)
    for layer in ("0", "2"):
        ps = [f"{layer}.weight", f"{layer}.bias"]
        d = math.sqrt(sum(float(((theta[n] - previous[n]) ** 2).sum()) for n in ps))
        w = math.sqrt(sum(float((theta[n] ** 2).sum()) for n in ps))
        torch.testing.assert_close(res.layer_update_norm[layer], d, rtol=1e-12, atol=0)
        torch.testing.assert_close(res.layer_relative_update[layer], d / w, rtol=1e-12, atol=0)
    assert set(res.scalars()) >= {"distance_from_init", "update_norm/0", "relative_update/2"}


def test_train_mode_probe_and_bad_input_are_refused():
    model = small_cnn()
    data = classification_data(16, (1, 6, 6))
    train_probe = il.Probe(data, F.cross_entropy, model_mode="train")
    with pytest.raises(ValueError, match="model_mode='eval'"):
        il.gradient_statistics(model, train_probe)
    with pytest.raises(ValueError, match="model_mode='eval'"):
        il.GradientStatistics(model, train_probe)
    probe = il.Probe(data, F.cross_entropy)
    with pytest.raises(ValueError, match="chunk_size"):
        il.GradientStatistics(model, probe, chunk_size=0)
    with pytest.raises(TypeError, match="chunk_size"):
        il.gradient_statistics(model, probe, chunk_size=1.5)
    with pytest.raises(ValueError, match="initial"):
        il.gradient_statistics(model, probe, initial={"fc.weight": torch.zeros(3, 48)})
    with pytest.raises(ValueError, match="2 samples"):
        il.GradientStatistics(model, il.Probe((data[0][:1], data[1][:1]), F.cross_entropy))


def test_handler_measures_distance_and_updates_between_firings():
    torch.manual_seed(0)
    model = mlp()
    x, y = classification_data(32, (5,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    weights: list[dict[str, torch.Tensor]] = []

    trainer = full_batch_trainer(model, opt, x, y)
    trainer.add_event_handler(
        Events.STARTED, lambda _: weights.append({n: p.detach().clone() for n, p in model.named_parameters()})
    )
    handler = il.GradientStatistics(model, il.Probe((x, y), F.cross_entropy))
    handler.attach(trainer, Events.ITERATION_COMPLETED(every=2))
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED(every=2),
        lambda _: weights.append({n: p.detach().clone() for n, p in model.named_parameters()}),
    )
    trainer.run([0] * 6, max_epochs=1)
    assert len(handler.history) == 3
    init = torch.cat([w.reshape(-1) for w in weights[0].values()])
    for k, firing in enumerate(handler.history):
        now = torch.cat([w.reshape(-1) for w in weights[k + 1].values()])
        before = torch.cat([w.reshape(-1) for w in weights[k].values()])
        torch.testing.assert_close(firing.scalars["distance_from_init"], float((now - init).norm()), rtol=1e-12, atol=0)
        torch.testing.assert_close(firing.scalars["update_norm"], float((now - before).norm()), rtol=1e-12, atol=0)
        assert firing.result.sample_norms is None  # the history keeps the summary only
    assert trainer.state.landscape["gradstats"].sample_norms.shape == (32,)
    # The state holds θ₀ and the previous weights: a new handler continues from them.
    other = il.GradientStatistics(model, il.Probe((x, y), F.cross_entropy))
    other.load_state_dict(handler.state_dict())
    other.attach(full_batch_trainer(model, opt, x, y))
    torch.testing.assert_close(torch.cat([v.reshape(-1) for v in other.initial.values()]), init, rtol=0, atol=0)


# -- the curvature-aware noise scale B_noise = tr(HΣ)/(GᵀHG) ---------------------------------------------
def dense_b_noise(model, x, y, population: float) -> tuple[float, float, float]:
    """(tr(HΣ̂), GᵀHG estimate, B_noise) from the dense float64 Hessian and looped per-sample gradients."""
    h = dense_hessian(model, x, y, F.cross_entropy)
    g = loop_grads(model, x, y, "mean")
    n = len(y)
    g_bar = g.mean(0)
    sigma = (g - g_bar).T @ (g - g_bar) / (n - 1)
    trace_h_sigma = float(torch.trace(h @ sigma))
    ghg = float(g_bar @ h @ g_bar) - (1 / n - 1 / population) * trace_h_sigma
    return trace_h_sigma, ghg, trace_h_sigma / ghg


@pytest.mark.parametrize("population", [None, math.inf, 100])
@pytest.mark.parametrize("make,shape", [(mlp, (5,)), (small_cnn, (1, 6, 6))])
def test_b_noise_equals_the_dense_computation(make, shape, population):
    model = eval_model(make)
    x, y = classification_data(21, shape, seed=6)
    trace_h_sigma, ghg, b_noise = dense_b_noise(model, x, y, len(y) if population is None else population)
    probe = il.Probe((x, y), F.cross_entropy, batch_size=8)
    res = il.gradient_noise_scale(model, probe, population_size=population, chunk_size=5)
    assert ghg > 0 and res.num_hvps == len(y) + 1
    torch.testing.assert_close(res.trace_h_sigma, trace_h_sigma, rtol=1e-9, atol=0)
    torch.testing.assert_close(res.grad_curvature, ghg, rtol=1e-9, atol=0)
    torch.testing.assert_close(res.b_noise, b_noise, rtol=1e-9, atol=0)
    assert {"b_noise", "trace_h_sigma", "grad_curvature"} <= set(res.scalars())


def test_two_batch_b_noise_equals_the_dense_split_formula():
    from ignite_landscape.linalg import generator

    model = eval_model(mlp)
    x, y = classification_data(24, (5,), seed=7)
    n, small = len(y), 4
    h = dense_hessian(model, x, y, F.cross_entropy)
    g = loop_grads(model, x, y, "mean")
    perm = torch.randperm(n, generator=generator(3))
    batch_ghg = [float(g[idx].mean(0) @ h @ g[idx].mean(0)) for idx in perm.split(small)]
    g_bar = g.mean(0)
    trace_h_sigma = (sum(batch_ghg) / len(batch_ghg) - float(g_bar @ h @ g_bar)) / (1 / small - 1 / n)
    probe = il.Probe((x, y), F.cross_entropy)
    res = il.gradient_noise_scale(model, probe, method="two_batch", small_batch=small, seed=3)
    torch.testing.assert_close(res.trace_h_sigma, trace_h_sigma, rtol=1e-9, atol=0)
    torch.testing.assert_close(res.grad_curvature, float(g_bar @ h @ g_bar), rtol=1e-9, atol=0)  # N = n
    # With batches of one sample the two-batch estimate is the per-sample one.
    one = il.gradient_noise_scale(model, probe, method="two_batch", small_batch=1)
    per_sample = il.gradient_noise_scale(model, probe)
    torch.testing.assert_close(one.b_noise, per_sample.b_noise, rtol=1e-9, atol=0)


def test_b_noise_off_costs_nothing_and_the_handler_asks_for_it():
    model = eval_model(mlp)
    probe = il.Probe(classification_data(16, (5,)), F.cross_entropy)
    off = il.gradient_noise_scale(model, probe, b_noise=False)
    assert off.b_noise is None and off.num_hvps == 0 and "b_noise" not in off.scalars()
    with pytest.raises(TypeError, match="b_noise"):
        il.gradient_noise_scale(model, probe, b_noise="yes")
    with pytest.raises(TypeError, match="b_noise"):
        il.GradientNoiseScale(model, probe, b_noise=None)
    trainer = Engine(lambda e, b: None)
    il.GradientNoiseScale(model, probe, name="plain").attach(trainer)
    il.GradientNoiseScale(model, probe, b_noise=True).attach(trainer)
    trainer.run([0], max_epochs=1)
    metrics = trainer.state.metrics
    assert "landscape/plain/b_noise" not in metrics
    torch.testing.assert_close(
        metrics["landscape/noise_scale/b_noise"], il.gradient_noise_scale(model, probe).b_noise, rtol=1e-12, atol=0
    )
