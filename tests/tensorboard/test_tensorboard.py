"""What LandscapeLogHandler writes, read back with TensorBoard's own reader and served by a real server."""

from __future__ import annotations

import json
import math
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from ignite.handlers import TensorboardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.util import tensor_util
from torch import nn

import ignite_landscape as il
from ignite_landscape.results import Curve
from ignite_landscape.tensorboard import MAX_MESH_VERTICES, grid_mesh
from tests.handlers.test_handlers import Run, shared_full_run

EVERY_KIND = {"size_guidance": {"scalars": 0, "histograms": 0, "images": 0, "tensors": 0}}


def read(logdir: Path) -> EventAccumulator:
    (event_file,) = Path(logdir).glob("events.out.tfevents.*")
    acc = EventAccumulator(str(event_file), **EVERY_KIND)
    acc.Reload()
    return acc


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    run, logdir = shared_full_run(tmp_path_factory)
    return run, logdir, read(logdir)


def test_ignite_picked_tensorboardx(full):
    run, _, _ = full
    assert run.writer_module.startswith("tensorboardX")


def test_scalars_one_value_per_firing_equal_to_engine_metrics(full):
    run, _, acc = full
    tags = set(acc.Tags()["scalars"])
    keys = set(run.metrics[4])
    assert keys <= tags, sorted(keys - tags)
    assert {t for t in tags if t.startswith("landscape/")} == keys | {"landscape/epoch"}
    # The trainer's epoch at each written step, for pairing with metrics logged at epochs.
    assert [(e.step, e.value) for e in acc.Scalars("landscape/epoch")] == [(10, 1), (20, 2), (30, 3), (40, 4)]
    for key in keys:
        events = acc.Scalars(key)
        # Logged at the trainer's iteration (10 per epoch), whatever event fired the handler.
        assert [e.step for e in events] == [10, 20, 30, 40], key
        for e in events:
            expected = np.float32(run.metrics[e.step // 10][key])
            assert e.value == expected or (math.isnan(e.value) and math.isnan(expected)), (key, e.step)


def test_histograms_of_eigenvalues_and_density(full):
    run, _, acc = full
    eig = acc.Histograms("landscape/hessian/eigenvalues")
    assert [e.step for e in eig] == [10, 20, 30, 40]
    for e, firing in zip(eig, run.handlers["hessian"].history):
        values = firing.result.eigenvalues
        assert e.histogram_value.num == len(values) == 3
        assert e.histogram_value.max == pytest.approx(float(values.max()), rel=1e-6)
        assert e.histogram_value.min == pytest.approx(float(values.min()), rel=1e-6)
    dens = acc.Histograms("landscape/density/spectrum")
    assert [e.step for e in dens] == [10, 20, 30, 40]
    for e, firing in zip(dens, run.handlers["density"].history):
        # The SLQ measure holds all P eigenvalues; its first moment is SLQ's trace estimate.
        assert e.histogram_value.num == pytest.approx(firing.result.num_params, rel=1e-9)
        assert e.histogram_value.sum == pytest.approx(firing.result.trace, rel=1e-6)
        assert sum(e.histogram_value.bucket) == pytest.approx(firing.result.num_params, rel=1e-9)


def test_figures(full):
    _, _, acc = full
    for tag in (
        "landscape/slice1d/slice",
        "landscape/slice2d/slice",
        "landscape/density/density",
        "landscape/connectivity/interpolation",
    ):
        images = acc.Images(tag)
        assert [i.step for i in images] == [10, 20, 30, 40], tag
        assert all(i.encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n" and i.width > 200 for i in images), tag


def test_mesh_of_the_2d_slice(full):
    run, _, acc = full
    content = acc.PluginTagToContent("mesh")
    assert content, "no mesh summaries"
    by_tag = {t: acc.Tensors(t) for t in content}
    arrays = {t: tensor_util.make_ndarray(v[-1].tensor_proto) for t, v in by_tag.items()}
    assert all([e.step for e in v] == [10, 20, 30, 40] for v in by_tag.values())
    shapes = sorted(a.shape for a in arrays.values())
    steps = run.handlers["slice2d"].steps
    # vertices and colours: one per grid point; faces: two triangles per cell.
    assert shapes == sorted([(1, steps * steps, 3), (1, steps * steps, 3), (1, 2 * (steps - 1) ** 2, 3)])
    config = json.loads(re.search(rb"(\{.*\})", next(iter(content.values()))).group(1))
    assert config["camera"]["position"] and config["material"]["side"] == 2


def test_text_summary_and_custom_scalars_layout(full):
    run, _, acc = full
    texts = acc.Tensors("landscape/summary/text_summary")
    assert [t.step for t in texts] == [10, 20, 30, 40]
    last = texts[-1].tensor_proto.string_val[0].decode()
    assert "| hessian | 4 | 40 | lambda_max |" in last
    layouts = acc.Tensors("custom_scalars__config__")
    assert len(layouts) == 1  # written once
    layout = layout_pb2.Layout()
    layout.ParseFromString(tensor_util.make_ndarray(layouts[0].tensor_proto).item())
    charts = {c.title: list(c.multiline.tag) for cat in layout.category for c in cat.chart}
    scalar_tags = acc.Tags()["scalars"]

    assert all(t in scalar_tags for tags in charts.values() for t in tags)  # exact tags, each one logged
    assert charts["Hessian eigenvalues and stability threshold"] == [
        "landscape/hessian/lambda_1",
        "landscape/hessian/lambda_2",
        "landscape/hessian/lambda_3",
        "landscape/hessian/stability_threshold",
    ]
    assert charts["Sharpness variants"] == ["landscape/sharpness/value"]
    assert charts["Hessian trace"] == ["landscape/density/trace", "landscape/trace/value"]
    assert "landscape/connectivity/loss_barrier" in charts["Mode connectivity barriers"]


def few_handlers(model, probe, optimizer):
    hs = [
        il.HessianSpectrum(model, probe, k=2, optimizer=optimizer),
        il.HessianDensity(model, probe, num_steps=6, num_runs=1, grid_size=64),
        il.LossSlice(model, probe, dims=1, steps=5),
        il.LossSlice(model, probe, dims=2, steps=5),
        il.ModeConnectivity(model, probe, steps=3),
    ]
    return {h.name: h for h in hs}


def test_torch_summary_writer_and_global_step_transform(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # Ignite falls back to torch's SummaryWriter
    run = Run(make_handlers=few_handlers)
    tb = TensorboardLogger(log_dir=str(tmp_path))
    assert type(tb.writer).__module__.startswith("torch.utils.tensorboard")
    tb.attach(
        run.trainer,
        log_handler=il.LandscapeLogHandler(global_step_transform=lambda engine, event: engine.state.epoch),
        event_name=Events.EPOCH_COMPLETED | Events.COMPLETED,  # fires twice at the end: logged once
    )
    run.run(2)
    tb.close()
    acc = read(tmp_path)
    for key in run.metrics[2]:
        assert [e.step for e in acc.Scalars(key)] == [1, 2], key
        assert [e.value for e in acc.Scalars(key)] == pytest.approx(
            [run.metrics[1][key], run.metrics[2][key]], rel=1e-6, nan_ok=True
        )
    assert [e.step for e in acc.Histograms("landscape/hessian/eigenvalues")] == [1, 2]
    assert [e.step for e in acc.Histograms("landscape/density/spectrum")] == [1, 2]
    assert {"landscape/slice1d/slice", "landscape/slice2d/slice"} <= set(acc.Tags()["images"])
    assert len(acc.PluginTagToContent("mesh")) == 3
    assert [t.step for t in acc.Tensors("landscape/summary/text_summary")] == [1, 2]
    assert len(acc.Tensors("custom_scalars__config__")) == 1


def test_named_handlers_get_their_charts_figures_and_records_by_kind(tmp_path):
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    probe = il.Probe((torch.randn(16, 3), torch.randint(0, 2, (16,))), F.cross_entropy)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = Engine(lambda e, b: None)
    for h in (
        il.HessianSpectrum(model, probe, k=2, optimizer=optimizer, name="curv"),
        il.LossSlice(model, probe, dims=2, steps=5, name="plane"),
        il.Sharpness(model, probe, name="sam05"),
        il.Sharpness(model, probe, rho=0.1, name="wide"),
    ):
        h.attach(trainer)
    tb = TensorboardLogger(log_dir=str(tmp_path))
    tb.attach(trainer, log_handler=il.LandscapeLogHandler(), event_name=Events.EPOCH_COMPLETED)
    trainer.run([0], max_epochs=2)
    tb.close()
    acc = read(tmp_path)
    layout = layout_pb2.Layout()
    layout.ParseFromString(tensor_util.make_ndarray(acc.Tensors("custom_scalars__config__")[-1].tensor_proto).item())
    charts = {c.title: list(c.multiline.tag) for cat in layout.category for c in cat.chart}
    assert charts["Hessian eigenvalues and stability threshold"] == [
        "landscape/curv/lambda_1",
        "landscape/curv/lambda_2",
        "landscape/curv/stability_threshold",
    ]
    assert charts["Sharpness variants"] == ["landscape/sam05/value", "landscape/wide/value"]
    assert charts["Slice centre loss"] == ["landscape/plane/center_loss"]
    assert [i.step for i in acc.Images("landscape/plane/slice")] == [1, 2]
    assert "landscape/plane/slice_surface" in json.dumps(list(acc.PluginTagToContent("mesh")))
    records = {
        n: json.loads(acc.Tensors(f"landscape/{n}/record/text_summary")[0].tensor_proto.string_val[0])
        for n in ("curv", "plane", "sam05")
    }
    assert {n: r["kind"] for n, r in records.items()} == {"curv": "spectrum", "plane": "slice2d", "sam05": "sharpness"}
    assert records["sam05"]["definitions"]["value"]  # one sentence per scalar


def tiny_engine(every: int):
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    probe = il.Probe((torch.randn(16, 3), torch.randint(0, 2, (16,))), F.cross_entropy)
    trainer = Engine(lambda e, b: None)
    il.Sharpness(model, probe).attach(trainer, Events.EPOCH_COMPLETED(every=every))
    return trainer


def test_stale_results_are_not_logged_again(tmp_path):
    trainer = tiny_engine(every=2)
    tb = TensorboardLogger(log_dir=str(tmp_path))
    tb.attach(trainer, log_handler=il.LandscapeLogHandler(), event_name=Events.EPOCH_COMPLETED)
    trainer.run([0], max_epochs=5)
    tb.close()
    assert [e.step for e in read(tmp_path).Scalars("landscape/sharpness/value")] == [2, 4]


def test_only_rank_zero_writes(tmp_path, monkeypatch):
    import ignite.distributed as idist

    monkeypatch.setattr(idist, "get_rank", lambda: 1)
    trainer = tiny_engine(every=1)
    tb = TensorboardLogger(log_dir=str(tmp_path))
    tb.attach(trainer, log_handler=il.LandscapeLogHandler(), event_name=Events.EPOCH_COMPLETED)
    trainer.run([0], max_epochs=2)
    tb.close()
    assert "landscape/sharpness/value" in trainer.state.metrics  # the measure ran on every rank
    assert read(tmp_path).Tags()["scalars"] == []


def test_log_handler_bad_input():
    with pytest.raises(TypeError, match="global_step_transform"):
        il.LandscapeLogHandler(global_step_transform=3)
    with pytest.raises(TypeError, match="names"):
        il.LandscapeLogHandler(names="hessian")
    with pytest.raises(ValueError, match="max_mesh_faces"):
        il.LandscapeLogHandler(max_mesh_faces=1)
    with pytest.raises(RuntimeError, match="TensorboardLogger"):
        il.LandscapeLogHandler()(Engine(lambda e, b: None), object(), Events.EPOCH_COMPLETED)


def grid_curve(steps: int) -> Curve:
    c = torch.linspace(-1, 1, steps, dtype=torch.float64)
    loss = 0.5 + c[:, None] ** 2 + 3 * c[None, :] ** 2 + 0.3 * c[:, None] * c[None, :]
    loss[0, 0] = float("inf")  # an overflowing corner must not break the mesh
    return Curve("grid", x=c, y=c, z=loss)


@pytest.mark.parametrize("steps,max_faces", [(7, 20000), (301, 5000), (301, 200000)])
def test_mesh_fits_the_viewer_and_the_camera_frames_it(steps, max_faces):
    vertices, colors, faces, config = grid_mesh(grid_curve(steps), max_faces=max_faces)
    v, f = vertices[0].double(), faces[0]
    assert f.shape[0] <= max_faces and v.shape[0] <= MAX_MESH_VERTICES
    assert int(f.min()) == 0 and int(f.max()) == v.shape[0] - 1
    assert torch.isfinite(v).all()
    # Colours follow the height (viridis: dark at the bottom, bright at the top).
    low, high = int(v[:, 1].argmin()), int(v[:, 1].argmax())
    assert colors[0, low].sum() < colors[0, high].sum()
    # The viewer centres the geometry; project every vertex with the configured camera (aspect 1,
    # the narrowest canvas) and require it inside the frustum and filling a good part of it.
    cam = config["camera"]
    center = (v.max(0).values + v.min(0).values) / 2
    pos, target = torch.tensor(cam["position"], dtype=torch.float64), torch.tensor(cam["lookAt"], dtype=torch.float64)
    fwd = (target - pos) / (target - pos).norm()
    right = torch.linalg.cross(fwd, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    right = right / right.norm()
    up = torch.linalg.cross(right, fwd)
    d = (v - center) - pos
    depth = d @ fwd
    assert (depth > cam["near"]).all() and (depth < cam["far"]).all()
    half = math.tan(math.radians(cam["fov"]) / 2)
    ndc = torch.stack([(d @ right) / (depth * half), (d @ up) / (depth * half)], 1)
    assert ndc.abs().max() <= 0.95
    assert ndc.abs().max() >= 0.5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read().decode())


def test_real_tensorboard_server_serves_our_scalars(full):
    run, logdir, _ = full
    port = free_port()
    cmd = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--load_fast", "false", "--reload_interval", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    wanted = set(run.metrics[4])
    answered = False
    tags: set[str] = set()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                out = proc.stdout.read().decode(errors="replace")[-2000:]
                pytest.skip(f"tensorboard exited with {proc.returncode} before serving: {out}")
            try:
                data = get_json(f"{base}/data/plugin/scalars/tags")
                answered = True
            except OSError:
                time.sleep(0.5)
                continue
            tags = {t for run_tags in data.values() for t in run_tags}
            if wanted <= tags:
                break
            time.sleep(0.5)
        if not answered:
            pytest.skip("tensorboard did not answer HTTP requests within 120 s")
        assert wanted <= tags, sorted(wanted - tags)
        (run_name,) = data.keys()
        query = urllib.parse.urlencode({"run": run_name, "tag": "landscape/hessian/lambda_max"})
        series = get_json(f"{base}/data/plugin/scalars/scalars?{query}")
        assert [s[1] for s in series] == [10, 20, 30, 40]  # the trainer's iteration at each epoch end
        assert [s[2] for s in series] == pytest.approx(
            [run.metrics[e]["landscape/hessian/lambda_max"] for e in (1, 2, 3, 4)], rel=1e-6
        )
        assert "landscape/slice2d/slice_surface" in json.dumps(get_json(f"{base}/data/plugin/mesh/tags"))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("transform", [None, "double"])
def test_mixed_events_log_every_firing_at_increasing_steps(tmp_path, transform):
    # 7 iterations per epoch, 3 epochs: iteration firings every 5, epoch firings, COMPLETED at iteration 21.
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    probe = il.Probe((torch.randn(16, 3), torch.randint(0, 2, (16,))), F.cross_entropy)
    trainer = Engine(lambda e, b: None)
    event = Events.ITERATION_COMPLETED(every=5) | Events.EPOCH_COMPLETED | Events.COMPLETED
    handler = il.Sharpness(model, probe)
    handler.attach(trainer, event)
    step_fn = None if transform is None else (lambda engine, event_name: 2 * engine.state.iteration)
    tb = TensorboardLogger(log_dir=str(tmp_path))
    tb.attach(trainer, log_handler=il.LandscapeLogHandler(global_step_transform=step_fn), event_name=event)
    trainer.run(list(range(7)), max_epochs=3)
    tb.close()
    fired = [f.iteration for f in handler.history]
    assert fired == [5, 7, 10, 14, 15, 20, 21]  # COMPLETED coincides with the epoch-3 firing: computed once
    scale = 1 if transform is None else 2
    acc = read(tmp_path)
    for tag in ("landscape/sharpness/value", "landscape/sharpness/seconds"):
        assert [e.step for e in acc.Scalars(tag)] == [scale * i for i in fired], tag
    assert [t.step for t in acc.Tensors("landscape/summary/text_summary")] == [scale * i for i in fired]


def test_completed_alone_lands_at_the_last_iteration(tmp_path):
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    probe = il.Probe((torch.randn(16, 3), torch.randint(0, 2, (16,))), F.cross_entropy)
    trainer = Engine(lambda e, b: None)
    event = Events.ITERATION_COMPLETED(every=5) | Events.COMPLETED
    il.Sharpness(model, probe).attach(trainer, event)
    tb = TensorboardLogger(log_dir=str(tmp_path))
    tb.attach(trainer, log_handler=il.LandscapeLogHandler(), event_name=event)
    trainer.run(list(range(4)), max_epochs=3)  # 12 iterations: firings at 5, 10, then COMPLETED at 12
    tb.close()
    assert [e.step for e in read(tmp_path).Scalars("landscape/sharpness/value")] == [5, 10, 12]
