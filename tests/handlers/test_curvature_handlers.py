"""The curvature handlers on a real digits trainer: training bit-identical, values equal to the measures."""

from __future__ import annotations

import math

import pytest
import torch
from ignite.engine import Engine, Events
from torch import nn

import ignite_landscape as il
from ignite_landscape.handlers.curvature import (
    BatchSharpness,
    DirectionalCurvature,
    GGNOutliers,
    GradientOverlap,
    LayerwiseCurvature,
)
from ignite_landscape.measures.directional import batch_sharpness, directional_curvature
from ignite_landscape.measures.overlap import gradient_overlap
from tests.handlers.test_handlers import Run, assert_same_state, plain_run  # noqa: F401  (fixture)
from tests.helpers import classification_data, dense_hessian, full_batch_trainer, mlp

F = nn.functional


def curvature_handlers(model, probe, optimizer):
    spectrum = il.HessianSpectrum(model, probe, k=3, optimizer=optimizer)
    small = il.Probe((probe.inputs[:32], probe.targets[:32]), nn.CrossEntropyLoss())  # for the costlier GGN runs
    hs = [
        spectrum,  # attached first: the overlap handler reuses its eigenvectors
        GradientOverlap(model, probe, k=3, spectrum=spectrum),
        GradientOverlap(model, small, k=2, curvature="ggn", tol=1e-2, name="overlap_ggn"),
        DirectionalCurvature(model, probe, "gradient", optimizer=optimizer),
        DirectionalCurvature(model, probe, "update", curvature="ggn", name="directional_update"),
        BatchSharpness(model, probe, num_batches=3, optimizer=optimizer),
        LayerwiseCurvature(model, probe, tol=1e-2, trace_hvps=6),
        GGNOutliers(model, small, k=3, tol=1e-2, trace_hvps=6),
        il.HessianTrace(model, probe, method="auto"),
    ]
    return {h.name: h for h in hs}


@pytest.fixture(scope="module")
def curvature_run():
    return Run(make_handlers=curvature_handlers).run(4)


def test_training_is_bit_identical_with_every_curvature_handler(curvature_run, plain_run):  # noqa: F811
    run = curvature_run
    assert run.losses == plain_run.losses
    for epoch in (1, 2, 3, 4):
        assert_same_state(run.snapshots[epoch], plain_run.snapshots[epoch])
    assert all(len(h.history) == 4 for h in run.handlers.values())
    failures = [(h.name, f.error) for h in run.handlers.values() for f in h.history if f.failed]
    assert not failures
    m = run.metrics[4]
    for key in (
        "landscape/overlap/value",
        "landscape/overlap_ggn/value",
        "landscape/directional/value",
        "landscape/directional_update/value",
        "landscape/batch_sharpness/value",
        "landscape/batch_sharpness/stderr",
        "landscape/ggn/num_outliers",
        "landscape/layers/trace/features.0",
        "landscape/layers/lambda_max/classifier.3",
        "landscape/trace/value",
    ):
        assert math.isfinite(m[key]), key
    assert m["landscape/overlap/reused"] == 1.0 and m["landscape/overlap/num_hvps"] == 0.0
    assert m["landscape/overlap_ggn/reused"] == 0.0
    assert m["landscape/batch_sharpness/threshold"] == pytest.approx(2 / 0.05)
    assert m["landscape/batch_sharpness/batch_size"] == 64.0  # read from the trainer's DataLoader
    assert 0.0 <= m["landscape/overlap/value"] <= 1.0 + 1e-12
    # DigitsCNN is a chain of supported layers: the traces are exact, and the layer traces add up to it.
    assert run.trainer.state.landscape["trace"].method == "exact"
    layers = run.trainer.state.landscape["layers"].layers
    assert all(layer.trace_stderr == 0.0 for layer in layers)
    assert sum(layer.trace for layer in layers) == pytest.approx(m["landscape/trace/value"], rel=1e-9)
    # History stays compact: no parameter-sized tensors.
    n = sum(p.numel() for p in run.model.parameters())
    for h in run.handlers.values():
        for f in h.history:
            for v in vars(f.result).values():
                assert not (isinstance(v, torch.Tensor) and v.numel() >= n), h.name


def test_handler_values_equal_the_measures_at_the_same_weights():
    model = mlp()
    x, y = classification_data(24, (5,))
    probe = il.Probe((x, y), F.cross_entropy, batch_size=7)
    trainer = Engine(lambda engine, batch: None)
    spectrum = il.HessianSpectrum(model, probe, k=2, tol=1e-10)
    handlers = [
        spectrum,
        GradientOverlap(model, probe, k=2, spectrum=spectrum),
        DirectionalCurvature(model, probe, lr=0.5),
        BatchSharpness(model, probe, batch_size=6, num_batches=4, seed=3),
    ]
    for h in handlers:
        h.attach(trainer, Events.EPOCH_COMPLETED)
    trainer.run([0], max_epochs=1)
    m = trainer.state.metrics
    ref = directional_curvature(model, probe, "gradient")
    assert m["landscape/directional/value"] == ref.value
    assert m["landscape/directional/threshold"] == 4.0 and m["landscape/directional/ratio"] == ref.value / 4.0
    assert m["landscape/batch_sharpness/value"] == batch_sharpness(model, probe, 6, num_batches=4, seed=3).value
    # The reused eigenvectors give the overlap of the dense eigendecomposition.
    H = dense_hessian(model, x, y, F.cross_entropy)
    evecs = torch.linalg.eigh(H).eigenvectors[:, -2:]
    g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))])
    assert m["landscape/overlap/reused"] == 1.0
    assert m["landscape/overlap/value"] == pytest.approx(float(((evecs.T @ g) ** 2).sum() / (g @ g)), abs=1e-8)
    assert m["landscape/overlap/value"] == pytest.approx(gradient_overlap(model, probe, k=2, tol=1e-10).value, abs=1e-8)


def test_update_direction_is_the_last_step():
    model = mlp()
    x, y = classification_data(24, (5,))
    probe = il.Probe((x, y), F.cross_entropy)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = {}

    def step(engine, batch):
        seen["before"] = {k: v.detach().clone() for k, v in model.named_parameters()}
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    trainer = Engine(step)
    handler = DirectionalCurvature(model, probe, "update")
    handler.attach(trainer, Events.ITERATION_COMPLETED)
    trainer.run([0, 1, 2], max_epochs=1)
    expected = directional_curvature(model, probe, "update", previous=seen["before"])
    assert handler.history[-1].scalars["value"] == expected.value
    assert len(handler.history) == 3 and not any(f.failed for f in handler.history)


def test_curvature_handler_options_are_checked():
    model = mlp()
    probe = il.Probe(classification_data(24, (5,)), F.cross_entropy)
    with pytest.raises(ValueError, match="direction"):
        DirectionalCurvature(model, probe, "updates")
    with pytest.raises(ValueError, match="curvature"):
        DirectionalCurvature(model, probe, curvature="fim")
    with pytest.raises(ValueError, match="lr"):
        DirectionalCurvature(model, probe, lr=-1.0)
    with pytest.raises(ValueError, match="batch_size"):
        BatchSharpness(model, probe, batch_size=25)
    with pytest.raises(ValueError, match="num_batches"):
        BatchSharpness(model, probe, batch_size=4, num_batches=1)
    with pytest.raises(ValueError, match="k must"):
        GradientOverlap(model, probe, k=0)
    with pytest.raises(ValueError, match="curvature"):
        GradientOverlap(model, probe, k=2, curvature="ggn", spectrum=il.HessianSpectrum(model, probe))
    with pytest.raises(TypeError, match="spectrum"):
        GradientOverlap(model, probe, k=2, spectrum=object())
    with pytest.raises(ValueError, match="trace_method"):
        LayerwiseCurvature(model, probe, trace_method="hutchinson")
    with pytest.raises(ValueError, match="ratio"):
        GGNOutliers(model, probe, ratio=1.0)


def sgd_trainer() -> tuple[nn.Module, il.Probe, torch.optim.Optimizer, Engine]:
    """An MLP, a 24-sample probe, plain SGD and a trainer of full-batch steps on the probe's samples."""
    model = mlp()
    probe = il.Probe(classification_data(24, (5,)), F.cross_entropy)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return model, probe, opt, full_batch_trainer(model, opt, probe.inputs, probe.targets)


def test_layerwise_heatmap_and_scalars_in_tensorboard(tmp_path):
    from ignite.handlers import TensorboardLogger

    from tests.tensorboard.test_tensorboard import read

    model, probe, opt, trainer = sgd_trainer()
    x, y = probe.inputs, probe.targets
    handler = LayerwiseCurvature(model, probe, tol=1e-8)
    handler.attach(trainer, Events.EPOCH_COMPLETED)
    tb = TensorboardLogger(log_dir=str(tmp_path))
    tb.attach(trainer, log_handler=il.LandscapeLogHandler(), event_name=Events.EPOCH_COMPLETED)
    trainer.run([0, 1], max_epochs=3)
    tb.close()
    acc = read(tmp_path)
    images = acc.Tags()["images"]
    # A layers × firings heatmap per bars curve, at landscape/<name>/<curve key>.
    assert "landscape/layers/trace" in images and "landscape/layers/lambda_max" in images
    assert len(acc.Images("landscape/layers/trace")) == 3
    # One scalar per layer and quantity, equal to the dense Hessian blocks at the last weights.
    values = [e.value for e in acc.Scalars("landscape/layers/trace/0")]
    assert len(values) == 3
    H = dense_hessian(model, x, y, F.cross_entropy)
    n0 = sum(p.numel() for p in model[0].parameters())
    assert values[-1] == pytest.approx(float(H[:n0, :n0].trace()), rel=1e-5)  # float32 event values
    lam = [e.value for e in acc.Scalars("landscape/layers/lambda_max/2")]
    assert lam[-1] == pytest.approx(float(torch.linalg.eigvalsh(H[n0:, n0:])[-1]), rel=1e-5)


def test_spectrum_trace_and_density_handlers_take_curvature():
    model = mlp()
    x, y = classification_data(24, (5,))
    probe = il.Probe((x, y), F.cross_entropy, batch_size=7)
    trainer = Engine(lambda engine, batch: None)
    handlers = [
        il.HessianSpectrum(model, probe, k=2, tol=1e-10, warm_start=False, curvature="ggn"),
        il.HessianTrace(model, probe, num_hvps=9, curvature="empirical_fisher"),
        il.HessianDensity(model, probe, num_steps=6, num_runs=1, curvature="fisher"),
    ]
    for h in handlers:
        h.attach(trainer, Events.EPOCH_COMPLETED)
    trainer.run([0], max_epochs=1)
    m = trainer.state.metrics
    ggn = il.hessian_eigenvalues(model, probe, k=2, tol=1e-10, curvature="ggn")
    assert m["landscape/hessian/lambda_1"] == float(ggn.eigenvalues[0])
    assert m["landscape/trace/value"] == il.hessian_trace(model, probe, num_hvps=9, curvature="empirical_fisher").value
    dens = il.hessian_density(model, probe, num_steps=6, num_runs=1, curvature="fisher")
    assert m["landscape/density/lambda_max"] == dens.lambda_max
    with pytest.raises(ValueError, match="curvature"):
        il.HessianTrace(model, probe, method="exact", curvature="ggn")
    with pytest.raises(ValueError, match="curvature"):
        il.HessianSpectrum(model, probe, curvature="hessian-ggn")
    with pytest.raises(ValueError, match="curvature"):
        il.HessianDensity(model, probe, curvature="")


def test_report_draws_the_curvature_figure(tmp_path):
    from ignite.handlers import TensorboardLogger

    from ignite_landscape.report import write_report

    model, probe, opt, trainer = sgd_trainer()
    for h in (
        GradientOverlap(model, probe, k=2),
        BatchSharpness(model, probe, batch_size=8, num_batches=3, optimizer=opt),
        DirectionalCurvature(model, probe, optimizer=opt),
        GGNOutliers(model, probe, k=5),
    ):
        h.attach(trainer, Events.EPOCH_COMPLETED)
    tb = TensorboardLogger(log_dir=str(tmp_path / "run"))
    tb.attach(trainer, log_handler=il.LandscapeLogHandler(figures=False), event_name=Events.EPOCH_COMPLETED)
    trainer.run([0], max_epochs=3)
    tb.close()
    ggn = trainer.state.landscape["ggn"]
    assert trainer.state.metrics["landscape/ggn/ggn_lambda_1"] == float(ggn.ggn_eigenvalues[0])
    assert ggn.num_classes == 3 and ggn.ggn_eigenvalues.numel() == 5
    report = write_report([tmp_path / "run"], tmp_path / "out")
    assert "curvature" in report.figures and report.figures["curvature"].stat().st_size > 0
