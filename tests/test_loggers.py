"""Landscape results through Ignite's MLflowLogger into a real local MLflow tracking store (SQLite).

The test starts its own store in a temporary directory, trains with landscape handlers, the one-line
``OutputHandler`` recipe and :class:`~ignite_landscape.LandscapeArtifactHandler`, and reads metrics and
artifacts back through ``MlflowClient``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events

import ignite_landscape as il
from ignite_landscape.results import Curve
from tests.helpers import classification_data, small_cnn

try:
    import mlflow
    from ignite.handlers import MLflowLogger
    from mlflow.tracking import MlflowClient
except ImportError as exc:  # the dev extra installs mlflow; say so loudly when it is missing
    print(f"SKIPPED MLflow tests: mlflow cannot be imported ({exc}); pip install -e .[dev]")
    pytest.skip(f"mlflow cannot be imported ({exc})", allow_module_level=True)

EPOCHS = 2


@pytest.fixture(scope="module")
def mlflow_run(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        client = MlflowClient(uri)
        # Artifacts under the test's directory (the default would be ./mlruns in the working directory).
        experiment = client.create_experiment("landscape", artifact_location=(root / "artifacts").as_uri())
        mlflow.set_experiment(experiment_id=experiment)

        model = small_cnn(seed=0)
        x, y = classification_data(24, (1, 6, 6), seed=2)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

        def step(engine: Engine, batch: tuple[torch.Tensor, torch.Tensor]) -> float:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(batch[0]), batch[1])
            loss.backward()
            optimizer.step()
            return loss.item()

        trainer = Engine(step)
        probe = il.Probe((x, y), F.cross_entropy, batch_size=12)
        handlers = [
            il.HessianSpectrum(model, probe, k=2),
            il.Sharpness(model, probe),
            il.HessianDensity(model, probe, num_steps=5, num_runs=1),
            il.LossSlice(model, probe, dims=1, steps=5),
            il.LossSlice(model, probe, dims=2, steps=3),
            il.ModeConnectivity(model, probe, steps=3),
        ]
        for h in handlers:
            h.attach(trainer, Events.EPOCH_COMPLETED)
        mlflow_logger = MLflowLogger(tracking_uri=uri)
        # The one-line recipe every Ignite logger shares ...
        mlflow_logger.attach_output_handler(trainer, event_name=Events.EPOCH_COMPLETED, tag="train", metric_names="all")
        # ... and the handler that also sends the figures and curves.
        mlflow_logger.attach(trainer, log_handler=il.LandscapeArtifactHandler(), event_name=Events.EPOCH_COMPLETED)
        loader = [(x[i : i + 8], y[i : i + 8]) for i in range(0, 24, 8)]
        trainer.run(loader, max_epochs=EPOCHS)
        run_id = mlflow_logger.active_run.info.run_id
        mlflow_logger.close()
        yield client, run_id, {h.name: h for h in handlers}, root
    finally:
        mlflow.set_tracking_uri(previous)


def _artifacts(client: MlflowClient, run_id: str, path: str) -> list[str]:
    out = []
    for info in client.list_artifacts(run_id, path):
        out += _artifacts(client, run_id, info.path) if info.is_dir else [info.path]
    return out


def test_metrics_read_back_equal_the_handlers_history(mlflow_run):
    client, run_id, handlers, _ = mlflow_run
    for name, key in [("hessian", "lambda_max"), ("sharpness", "value"), ("connectivity", "loss_barrier")]:
        expected = [(f.iteration, f.scalars[key]) for f in handlers[name].history]
        assert len(expected) == EPOCHS
        got = sorted((m.step, m.value) for m in client.get_metric_history(run_id, f"landscape/{name}/{key}"))
        assert [s for s, _ in got] == [s for s, _ in expected]
        for (_, a), (_, b) in zip(got, expected):
            assert math.isfinite(b) and a == pytest.approx(b, rel=1e-12)
        # The OutputHandler recipe logs the same values under its tag (at the epoch, Ignite's default step).
        recipe = sorted((m.step, m.value) for m in client.get_metric_history(run_id, f"train landscape/{name}/{key}"))
        assert [v for _, v in recipe] == pytest.approx([v for _, v in expected], rel=1e-12)


def test_figures_and_curves_read_back(mlflow_run):
    client, run_id, handlers, root = mlflow_run
    files = _artifacts(client, run_id, "landscape")
    steps = [f.iteration for f in handlers["slice1d"].history]
    for name, kind in [
        ("slice1d", "slice"),
        ("slice2d", "slice"),
        ("slice2d", "slice_surface"),
        ("density", "density"),
        ("connectivity", "interpolation"),
    ]:
        expected = [f"landscape/{name}/{kind}/step_{s:09d}.png" for s in steps]
        assert sorted(p for p in files if p.startswith(f"landscape/{name}/{kind}/")) == expected
    png = Path(client.download_artifacts(run_id, f"landscape/slice2d/slice/step_{steps[-1]:09d}.png", str(root)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    # The curve behind the last 1D slice, as logged, equals the handler's result.
    data = Path(client.download_artifacts(run_id, f"landscape/slice1d/data/step_{steps[-1]:09d}.json", str(root)))
    curve = Curve.from_plain(json.loads(data.read_text())["slice"])
    result = handlers["slice1d"].history[-1].result
    assert curve.y.tolist() == pytest.approx(result.loss.tolist(), rel=1e-7)
    assert curve.x.tolist() == pytest.approx(result.coords[0].tolist(), rel=1e-7)
    # The handler's record: its kind and a definition per scalar.
    (record,) = [p for p in files if p.startswith("landscape/slice1d/record/")]
    record = json.loads(Path(client.download_artifacts(run_id, record, str(root))).read_text())
    assert record["kind"] == "slice1d" and "center_loss" in record["definitions"]
    summaries = [p for p in files if p.startswith("landscape/summary/")]
    assert len(summaries) == EPOCHS


def test_other_loggers_are_refused_with_a_clear_error():
    handler = il.LandscapeArtifactHandler()
    trainer = Engine(lambda e, b: None)
    trainer.state.landscape_firings = {}
    with pytest.raises(TypeError, match="MLflowLogger"):
        handler(trainer, object(), Events.EPOCH_COMPLETED)
    with pytest.raises(ValueError, match="max_slice_curves"):
        il.LandscapeArtifactHandler(max_slice_curves=0)
    with pytest.raises(TypeError, match="names"):
        il.LandscapeArtifactHandler(names="hessian")
