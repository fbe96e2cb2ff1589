import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from ignite_landscape import Probe, gradient_noise_scale
from ignite_landscape import session as session_module
from ignite_landscape.measures import persample
from tests.helpers import classification_data, full_batch_trainer, mlp, small_cnn


def per_sample_grads(model, x, y):
    rows = []
    for i in range(len(y)):
        loss = F.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(model.parameters()))]))
    return torch.stack(rows).double()


@pytest.mark.parametrize("make,shape", [(mlp, (5,)), (small_cnn, (1, 6, 6))])
@pytest.mark.parametrize("population", [None, math.inf, 100])
@pytest.mark.parametrize("chunk_size", [None, 1, 3])
def test_per_sample_estimator_matches_direct_computation(make, shape, population, chunk_size):
    model = make()
    model.eval()
    x, y = classification_data(37, shape)
    g = per_sample_grads(model, x, y)
    n = len(y)
    g_bar = g.mean(0)
    trace_sigma = float(((g - g_bar) ** 2).sum() / (n - 1))  # tr of the unbiased sample covariance
    # Finite-population correction: E‖ḡ‖² = ‖G‖² + (1/n − 1/N)·tr(Σ); the probe's own population is its
    # one batch (N = n), where ‖G‖² = ‖ḡ‖² exactly.
    big_n = n if population is None else population
    grad_sq = float(g_bar @ g_bar) - (1 / n - 1 / big_n) * trace_sigma
    model.train()
    snap = {k: v.clone() for k, v in model.state_dict().items()}
    probe = Probe((x, y), F.cross_entropy, batch_size=10)
    res = gradient_noise_scale(model, probe, population_size=population, chunk_size=chunk_size)
    assert res.population_size == big_n
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
        (dict(chunk_size=0), ValueError, "chunk_size"),
        (dict(method="two_batch", chunk_size=4), ValueError, "chunk_size"),
        (dict(population_size=2.5), TypeError, "population_size"),
    ],
)
def test_bad_input(kwargs, exc, word):
    probe = Probe(classification_data(10, (5,)), F.cross_entropy)
    with pytest.raises(exc, match=word):
        gradient_noise_scale(mlp(), probe, **kwargs)


def test_whole_population_gives_a_finite_noise_scale_where_the_infinite_one_is_inf():
    # Near a minimum of the probe loss the noise dominates: the infinite-population estimate
    # ‖ḡ‖² − tr(Σ)/n is negative (B = inf), but a probe holding the whole data set knows ‖G‖² = ‖ḡ‖².
    x, y = classification_data(40, (5,))
    model = mlp(seed=3)
    opt = torch.optim.LBFGS(model.parameters(), max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    opt.step(closure)
    model.zero_grad(set_to_none=True)
    g = per_sample_grads(model, x, y)
    g_bar = g.mean(0)
    trace_sigma = float(((g - g_bar) ** 2).sum() / 39)
    assert float(g_bar @ g_bar) - trace_sigma / 40 < 0 < float(g_bar @ g_bar)  # the regime of the bug
    probe = Probe((x, y), F.cross_entropy)
    assert probe.population_size == 40
    res = gradient_noise_scale(model, probe)
    assert math.isfinite(res.b_simple)
    torch.testing.assert_close(res.b_simple, trace_sigma / float(g_bar @ g_bar), rtol=1e-9, atol=0)
    assert gradient_noise_scale(model, probe, population_size=math.inf).b_simple == math.inf


def test_finite_population_estimate_is_unbiased_over_subsamples():
    # Probes of n = 6 drawn without replacement from N = 30 samples: the corrected ‖G‖² estimate
    # averages to the population's ‖G‖² (and tr(Σ) to the population's sample covariance trace).
    x, y = classification_data(30, (5,))
    model = mlp(seed=1)
    g = per_sample_grads(model, x, y)
    big_g = g.mean(0)
    exact_sq = float(big_g @ big_g)
    exact_tr = float(((g - big_g) ** 2).sum() / 29)
    gen = torch.Generator().manual_seed(0)
    est = []
    for _ in range(300):
        idx = torch.randperm(30, generator=gen)[:6]
        res = gradient_noise_scale(model, Probe((x[idx], y[idx]), F.cross_entropy, population_size=30))
        est.append((res.grad_norm_sq, res.trace_sigma))
    est = torch.tensor(est, dtype=torch.float64)
    mean, stderr = est.mean(0), est.std(0) / math.sqrt(len(est))
    assert abs(float(mean[0]) - exact_sq) <= 3 * float(stderr[0]), (float(mean[0]), exact_sq, float(stderr[0]))
    assert abs(float(mean[1]) - exact_tr) <= 3 * float(stderr[1])
    assert float(stderr[0]) < 0.2 * exact_sq  # the test has power
    # Without the correction (N = ∞) the same draws are biased low by tr(Σ)/N.
    bias = exact_tr / 30
    assert bias > 4 * float(stderr[0])


def test_chunks_bound_the_per_sample_gradients_held_at_once(monkeypatch):
    model = mlp()
    model.eval()
    x, y = classification_data(37, (5,))
    probe = Probe((x, y), F.cross_entropy, batch_size=37)
    largest = []
    real_vmap = session_module.vmap

    def counting_vmap(fn, *args, **kwargs):
        mapped = real_vmap(fn, *args, **kwargs)

        def run(*a):
            out = mapped(*a)
            largest.append(max(t.shape[0] for t in out))
            return out

        return run

    monkeypatch.setattr(session_module, "vmap", counting_vmap)
    results = {}
    for chunk in (1, 4, 37):
        largest.clear()
        results[chunk] = gradient_noise_scale(model, probe, chunk_size=chunk)
        assert max(largest) == chunk and len(largest) == math.ceil(37 / chunk)
        assert results[chunk].chunk_size == chunk
    for chunk in (1, 4):
        torch.testing.assert_close(results[chunk].trace_sigma, results[37].trace_sigma, rtol=1e-12, atol=0)
        torch.testing.assert_close(results[chunk].grad_norm_sq, results[37].grad_norm_sq, rtol=1e-12, atol=0)
    # The default chunk fits CHUNK_BYTES: with room for 5 per-sample gradients, 5 at a time.
    numel = sum(p.numel() for p in model.parameters())
    monkeypatch.setattr(persample, "CHUNK_BYTES", 5 * numel * 8 + 7)
    largest.clear()
    res = gradient_noise_scale(model, probe)
    assert max(largest) == 5 and res.chunk_size == 5
    torch.testing.assert_close(res.trace_sigma, results[37].trace_sigma, rtol=1e-12, atol=0)


def test_probe_population_size():
    x, y = classification_data(50, (5,))
    assert Probe((x, y), F.cross_entropy, num_samples=10).population_size == 50  # one batch: its rows
    loader = DataLoader(TensorDataset(x, y), batch_size=8, drop_last=True)
    assert Probe(loader, F.cross_entropy, num_samples=10).population_size == 50  # len(dataset)
    batches = [(x[:20], y[:20]), (x[20:], y[20:])]
    assert Probe(batches, F.cross_entropy, num_samples=100).population_size == 50  # read to its end
    assert Probe(batches, F.cross_entropy, num_samples=10).population_size is None  # unknown
    assert Probe(batches, F.cross_entropy, num_samples=10, population_size=1000).population_size == 1000
    with pytest.raises(ValueError, match="population_size"):
        Probe((x, y), F.cross_entropy, num_samples=10, population_size=5)
    with pytest.raises(ValueError, match="population_size"):
        Probe((x, y), F.cross_entropy, population_size=0)
    with pytest.raises(ValueError, match="population_size"):
        gradient_noise_scale(mlp(), Probe((x, y), F.cross_entropy, num_samples=10), population_size=5)


def test_handler_smooths_numerator_and_denominator_separately():
    from ignite.engine import Events

    from ignite_landscape import GradientNoiseScale

    model = mlp(seed=4)
    x, y = classification_data(40, (5,))
    probe = Probe((x, y), F.cross_entropy)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)

    trainer = full_batch_trainer(model, opt, x, y)
    beta = 0.6
    handler = GradientNoiseScale(model, probe, smoothing=beta)
    handler.attach(trainer, Events.EPOCH_COMPLETED)
    trainer.run([0], max_epochs=4)
    tr = [f.scalars["trace_sigma"] for f in handler.history]
    gs = [f.scalars["grad_norm_sq"] for f in handler.history]
    assert len(set(tr)) == 4  # the weights moved: every firing differs
    for t, firing in enumerate(handler.history, 1):
        weights = [(1 - beta) * beta ** (t - k) for k in range(1, t + 1)]
        norm = sum(weights)  # = 1 − β^t: the bias correction
        tr_s = sum(w * v for w, v in zip(weights, tr)) / norm
        g_s = sum(w * v for w, v in zip(weights, gs)) / norm
        torch.testing.assert_close(firing.scalars["trace_sigma_smoothed"], tr_s, rtol=1e-12, atol=0)
        torch.testing.assert_close(firing.scalars["grad_norm_sq_smoothed"], g_s, rtol=1e-12, atol=0)
        torch.testing.assert_close(firing.scalars["b_simple_smoothed"], tr_s / g_s, rtol=1e-12, atol=0)
        torch.testing.assert_close(firing.scalars["b_simple"], tr[t - 1] / gs[t - 1], rtol=1e-12, atol=0)
    # The averages survive a checkpoint: a resumed handler continues them.
    resumed = GradientNoiseScale(model, probe, smoothing=beta)
    resumed.load_state_dict(handler.state_dict())
    assert resumed.smoothed() == handler.smoothed()


def test_digits_main_job_logs_only_finite_scalars(tmp_path):
    # Every handler of the main job, at small settings: no inf or NaN reaches the event file (the noise
    # scale was logged as inf once the infinite-population estimate of ‖G‖² went negative).
    from examples import digits
    from ignite_landscape.report import load_run

    argv = ["--epochs", "2", "--probe-samples", "128", "--slice-steps", "3", "--top-k", "2", "--trace-hvps", "6"]
    argv += ["--density-steps", "3", "--every", "1", "--output-dir", str(tmp_path), "--run-name", "finite"]
    run = load_run(digits.main(argv))
    landscape = [tag for tag in run.scalars if tag.startswith("landscape/")]
    assert "landscape/noise_scale/b_simple" in landscape and "landscape/noise_scale/b_simple_smoothed" in landscape
    for tag, series in run.scalars.items():
        assert bool(torch.isfinite(torch.as_tensor(series.values)).all()), (tag, series.values)
