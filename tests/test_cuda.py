"""The same exactness and non-invasiveness on a CUDA device.

Skipped where no GPU is present (CI); run it where one is lent::

    python -m pytest -q tests/test_cuda.py

``IL_TEST_DEVICE=cpu`` runs the same checks on the CPU (to check the tests themselves).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from torch import nn

import ignite_landscape as il
from tests.helpers import classification_data, dense_hessian, small_cnn

DEVICE = torch.device(os.environ.get("IL_TEST_DEVICE", "cuda"))
pytestmark = pytest.mark.skipif(DEVICE.type == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device")


def _rng_state() -> torch.Tensor:
    return torch.cuda.get_rng_state(DEVICE) if DEVICE.type == "cuda" else torch.get_rng_state()


def _cnn_case() -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    model = small_cnn(seed=0).eval()  # float64, BatchNorm in eval mode
    x, y = classification_data(24, (1, 6, 6))
    return model, x, y, torch.linalg.eigvalsh(dense_hessian(model, x, y, F.cross_entropy))


def test_eigenvalues_and_trace_on_cuda_equal_the_dense_float64_hessian() -> None:
    model, x, y, evals = _cnn_case()
    model = model.to(DEVICE)
    probe = il.Probe((x.to(DEVICE), y.to(DEVICE)), F.cross_entropy, batch_size=10)
    res = il.hessian_eigenvalues(model, probe, k=3, which="both", tol=1e-10, max_iter=len(evals))
    expected = torch.cat([evals.flip(0)[:3], evals[:3].flip(0)])
    torch.testing.assert_close(res.eigenvalues.cpu(), expected, rtol=1e-6, atol=1e-10)
    trace = il.hessian_trace(model, probe, num_hvps=60, seed=0)
    assert abs(trace.value - float(evals.sum())) <= 3 * trace.stderr + 1e-9


def test_batched_slice_on_cuda_equals_point_by_point_and_brute_force() -> None:
    model, x, y, _ = _cnn_case()
    model = model.to(DEVICE)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    probe = il.Probe((x.to(DEVICE), y.to(DEVICE)), F.cross_entropy, batch_size=10)
    dirs = il.random_directions(model, 2, normalization="filter", seed=3)
    one = il.loss_slice(model, probe, dirs, steps=5)
    batched = il.loss_slice(model, probe, dirs, steps=5, batch_points=7)
    assert batched.batched
    torch.testing.assert_close(batched.loss, one.loss, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(batched.accuracy, one.accuracy, rtol=0, atol=1e-12)
    assert one.center_loss == probe.evaluate(model).loss
    work = copy.deepcopy(model)
    base = {n: p.detach().clone() for n, p in work.named_parameters()}
    coords = one.coords[0].tolist()
    for i, a in enumerate(coords):
        for j, b in enumerate(coords):
            with torch.no_grad():
                for n, p in work.named_parameters():
                    p.copy_(base[n] + a * dirs[0][n].to(DEVICE) + b * dirs[1][n].to(DEVICE))
            assert one.loss[i, j].item() == pytest.approx(probe.evaluate(work).loss, rel=1e-10)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def _round1_handlers(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[il.LandscapeHandler]:
    probe = il.Probe((x, y), F.cross_entropy, batch_size=16)
    train_probe = il.Probe((x, y), F.cross_entropy, batch_size=16, model_mode="train", seed=5)
    return [
        il.HessianSpectrum(model, probe, k=2, tol=1e-3),
        il.Sharpness(model, train_probe, rho=0.05),
        il.LossSlice(model, probe, steps=5),
        il.GradientNoiseScale(model, probe),
    ]


def _train(
    make_handlers: Callable[[nn.Module, torch.Tensor, torch.Tensor], list[il.LandscapeHandler]] | None,
    budget: il.Budget | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, list[int]]:
    """Three epochs of a dropout CNN on the device; the weights and the device RNG state afterwards."""
    torch.manual_seed(0)  # seeds the CUDA generators too
    model = small_cnn(seed=1, dropout=0.3).to(DEVICE)
    x, y = classification_data(48, (1, 6, 6), seed=2)
    x, y = x.to(DEVICE), y.to(DEVICE)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def step(engine: Engine, i: int) -> float:
        model.train()
        opt.zero_grad()
        loss = F.cross_entropy(model(x[i * 16 : i * 16 + 16]), y[i * 16 : i * 16 + 16])
        loss.backward()
        opt.step()
        return loss.item()

    trainer = Engine(step)
    handlers = make_handlers(model, x, y) if make_handlers is not None else []
    for h in handlers:
        h.attach(trainer, Events.EPOCH_COMPLETED, budget=budget)
    trainer.run(range(3), max_epochs=3)
    fired = [sum(f.error is None for f in h.history) for h in handlers]
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, _rng_state(), fired


def test_training_on_cuda_is_bit_identical_with_handlers_attached() -> None:
    plain, plain_rng, _ = _train(None)
    probed, probed_rng, fired = _train(_round1_handlers)
    assert fired == [3, 3, 3, 3]  # every handler measured at every epoch, without a failure
    for k in plain:
        assert torch.equal(plain[k], probed[k]), k
    assert torch.equal(plain_rng, probed_rng)


def _mlp_case() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    x = torch.randn(30, 5, dtype=torch.float64)
    return model, x, torch.arange(30) % 3


def _scalars(result: object) -> dict[str, float]:
    scalars = result.scalars() if hasattr(result, "scalars") else {"value": float(result.value)}
    return {k: float(v) for k, v in scalars.items() if k not in ("seconds",)}


# Every measure added in round 2, run on the device and on the CPU from the same float64 weights: the
# CPU results are checked against dense references in their own test files, so equality here carries
# that exactness over to the device.
NEW_MEASURES = {
    "ggn_eigenvalues": lambda m, p: il.hessian_eigenvalues(m, p, k=2, tol=1e-10, curvature="ggn"),
    "fisher_trace": lambda m, p: il.hessian_trace(m, p, num_hvps=12, curvature="fisher", seed=1),
    "empirical_fisher_density": lambda m, p: il.hessian_density(
        m, p, num_steps=8, num_runs=1, curvature="empirical_fisher"
    ),
    "gradient_overlap": lambda m, p: il.gradient_overlap(m, p, k=3, tol=1e-10),
    "directional_curvature": lambda m, p: il.directional_curvature(m, p, direction="gradient"),
    "batch_sharpness": lambda m, p: il.batch_sharpness(m, p, 8, num_batches=3, lr=0.1),
    "ggn_decomposition": lambda m, p: il.ggn_decomposition(m, p, k=4, trace_hvps=12),
    "gradient_statistics": lambda m, p: il.gradient_statistics(
        m, p, chunk_size=7, uncertainty="jackknife", jackknife_chunks=3
    ),
    "noise_scale_b_noise": lambda m, p: il.gradient_noise_scale(m, p, b_noise=True, population_size=100),
    "m_sharpness": lambda m, p: il.sharpness(m, p, rho=0.05, m=10),
    "jackknife_eigenvalues": lambda m, p: il.hessian_eigenvalues(
        m, p, k=2, tol=1e-10, uncertainty="jackknife", jackknife_chunks=3
    ),
}


@pytest.mark.parametrize("name", sorted(NEW_MEASURES))
def test_new_measures_on_the_device_equal_the_cpu(name: str) -> None:
    model, x, y = _mlp_case()
    cpu = NEW_MEASURES[name](model, il.Probe((x, y), F.cross_entropy, batch_size=10))
    dev_model = copy.deepcopy(model).to(DEVICE)
    dev = NEW_MEASURES[name](dev_model, il.Probe((x.to(DEVICE), y.to(DEVICE)), F.cross_entropy, batch_size=10))
    expected, got = _scalars(cpu), _scalars(dev)
    assert expected.keys() == got.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-10, nan_ok=True), key


def test_exact_trace_on_the_device_equals_the_cpu() -> None:
    pytest.importorskip("backpack", reason="the exact trace needs the 'exact' extra (BackPACK)")
    model, x, y = _mlp_case()
    cpu = il.hessian_trace(model, il.Probe((x, y), F.cross_entropy), method="exact")
    dev_model = copy.deepcopy(model).to(DEVICE)
    dev = il.hessian_trace(dev_model, il.Probe((x.to(DEVICE), y.to(DEVICE)), F.cross_entropy), method="exact")
    assert dev.value == pytest.approx(cpu.value, rel=1e-10)


def _round2_handlers(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[il.LandscapeHandler]:
    probe = il.Probe((x, y), F.cross_entropy, batch_size=16)
    spectrum = il.HessianSpectrum(model, probe, k=2, tol=1e-3, track_eigenspace=True, curvature="ggn")
    return [
        spectrum,
        il.GradientOverlap(model, probe, k=2, spectrum=spectrum),
        il.DirectionalCurvature(model, probe),
        il.GradientStatistics(model, probe),
        il.TrajectoryPlane(model, probe, steps=3),
    ]


def test_training_on_the_device_is_bit_identical_with_the_new_handlers() -> None:
    plain, plain_rng, _ = _train(None)
    probed, probed_rng, fired = _train(_round2_handlers, budget=il.Budget(10.0))
    assert all(n >= 1 for n in fired), fired
    for k in plain:
        assert torch.equal(plain[k], probed[k]), k
    assert torch.equal(plain_rng, probed_rng)
