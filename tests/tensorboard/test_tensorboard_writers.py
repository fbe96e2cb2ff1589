"""The TensorBoard writers against results that only implement the protocol (kind, scalars, curves, definitions).

Each call writes made-up firings into a real event file, read back with TensorBoard's own reader: the writers
know no result type, so a measure of one's own is written like the package's.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from ignite.engine import Engine, Events
from ignite.handlers import TensorboardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.util import tensor_util

from ignite_landscape.handlers.base import Firing
from ignite_landscape.results import Curve, Result
from ignite_landscape.tensorboard import (
    LandscapeLogHandler,
    ScalarsWriter,
    TextWriter,
    custom_scalars_layout,
    grid_mesh,
)
from tests.tensorboard.test_tensorboard import read

X = np.linspace(-1.0, 1.0, 5)
NODES = np.array([-0.5, 0.1, 2.0, 7.5, np.nan])
MASS = np.array([3.0, 10.0, 5.0, 2.0, 1.0])


@dataclass
class Toy(Result):
    """A result of one's own: every curve kind, made from ``level``."""

    level: float
    kind_: str = "toy"
    broken: bool = False
    extra_definitions: dict[str, str] = field(default_factory=dict)

    @property
    def kind(self) -> str:  # type: ignore[override]
        return self.kind_

    def scalars(self) -> dict[str, float]:
        return {"value": self.level, "value_lo": self.level - 1, "value_hi": self.level + 1}

    def definitions(self) -> dict[str, str]:
        return {"value": "the level", **self.extra_definitions}

    def curves(self) -> dict[str, Curve]:
        if self.broken:
            raise RuntimeError("no curves today")
        z = self.level + X[:, None] ** 2 + 2 * X[None, :] ** 2
        return {
            "line": Curve("line", x=X, y=self.level + X**2, extra={"accuracy": 1 - X**2 / 4}, overlay=True),
            "plane": Curve("grid", x=X, y=X, z=z),
            "path": Curve("path", x=X, y=X, z=z, extra={"path_x": [-0.5, 0.0], "path_y": [0.5, 0.0]}),
            "samples": Curve("histogram", x=[1.0, 2.0, 2.0, np.inf]),
            "spectrum": Curve("histogram", x=NODES, y=MASS),
            "layers": Curve("bars", y=[self.level, -self.level], labels=("fc1", "fc2")),
        }


def firing(epoch: int, result: Any, *, kind: str = "toy", skipped: bool = False, error: str | None = None) -> Firing:
    scalars = {"skipped": 1.0} if skipped else {**(result.scalars() if result else {}), "seconds": 0.5}
    definitions = {} if skipped else {**(result.definitions() if result else {}), "seconds": "wall time"}
    return Firing(
        epoch=epoch,
        iteration=10 * epoch,
        result=result,
        seconds=0.5,
        scalars=scalars,
        error=error,
        skipped=skipped,
        kind="" if skipped else kind,
        definitions=definitions,
    )


def call(handler: Any, tb: TensorboardLogger, engine: Engine, epoch: int, firings: dict[str, Firing]) -> None:
    engine.state.epoch, engine.state.iteration = epoch, 10 * epoch
    engine.state.landscape_firings = {**(getattr(engine.state, "landscape_firings", None) or {}), **firings}
    engine.state.landscape = {n: f.result for n, f in engine.state.landscape_firings.items()}
    handler(engine, tb, Events.EPOCH_COMPLETED)


def texts(acc: EventAccumulator, tag: str) -> list[tuple[int, str]]:
    for t in (tag, f"{tag}/text_summary"):  # tensorboardX appends /text_summary, torch's writer does not
        if t in acc.Tags()["tensors"]:
            return [(e.step, e.tensor_proto.string_val[0].decode()) for e in acc.Tensors(t)]
    return []


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """Three firings of a toy handler named like a sharpness one but of kind "toy", and a "spectrum" named curv."""
    logdir = tmp_path_factory.mktemp("toy")
    tb = TensorboardLogger(log_dir=str(logdir))
    engine = Engine(lambda e, b: None)
    handler = LandscapeLogHandler(max_slice_curves=2)
    spectrum = firing(1, None, kind="spectrum")
    spectrum.scalars.update({"lambda_1": 4.0, "lambda_2": 3.0, "lambda_10": 1.0, "stability_threshold": 10.0})
    call(handler, tb, engine, 1, {"sharpness": firing(1, Toy(1.0)), "curv": spectrum})
    call(handler, tb, engine, 2, {"sharpness": firing(2, Toy(2.0))})
    renamed = Toy(3.0, extra_definitions={"value_lo": "lower end"})
    call(handler, tb, engine, 3, {"sharpness": firing(3, renamed)})
    call(handler, tb, engine, 4, {"sharpness": firing(4, None, skipped=True)})
    tb.close()
    return read(logdir), handler


def test_scalars_and_the_epoch(toy_run):
    acc, _ = toy_run
    assert [(e.step, e.value) for e in acc.Scalars("landscape/sharpness/value")] == [(10, 1.0), (20, 2.0), (30, 3.0)]
    assert [(e.step, e.value) for e in acc.Scalars("landscape/sharpness/skipped")] == [(40, 1.0)]
    assert [(e.step, e.value) for e in acc.Scalars("landscape/epoch")] == [(10, 1), (20, 2), (30, 3), (40, 4)]
    assert [e.value for e in acc.Scalars("landscape/curv/lambda_10")] == [1.0]


def test_record_at_the_first_firing_and_when_it_changes(toy_run):
    acc, _ = toy_run
    records = texts(acc, "landscape/sharpness/record")
    assert [s for s, _ in records] == [10, 30]  # unchanged at 20, a skipped firing has none
    first, changed = (json.loads(t) for _, t in records)
    assert first == {"kind": "toy", "definitions": {"seconds": "wall time", "value": "the level"}}
    assert changed["definitions"]["value_lo"] == "lower end"


def test_data_round_trips_to_the_curves(toy_run):
    acc, _ = toy_run
    data = texts(acc, "landscape/sharpness/data")
    assert [s for s, _ in data] == [10, 20, 30]
    for (_, text), level in zip(data, (1.0, 2.0, 3.0)):
        back = {k: Curve.from_plain(v) for k, v in json.loads(text).items()}
        for key, curve in Toy(level).curves().items():
            assert back[key].kind == curve.kind
            np.testing.assert_allclose(back[key].x, curve.x, rtol=1e-8)
            np.testing.assert_allclose(back[key].y, curve.y, rtol=1e-8)
            np.testing.assert_allclose(back[key].z, curve.z, rtol=1e-8)
        assert back["layers"].labels == ("fc1", "fc2")


def test_a_figure_per_drawable_curve_and_a_mesh_per_grid(toy_run):
    acc, _ = toy_run
    images = set(acc.Tags()["images"])
    assert {"landscape/sharpness/line", "landscape/sharpness/plane", "landscape/sharpness/path"} <= images
    assert "landscape/sharpness/layers" in images
    for tag in ("landscape/sharpness/line", "landscape/sharpness/plane", "landscape/sharpness/layers"):
        assert [i.step for i in acc.Images(tag)] == [10, 20, 30]
        assert all(i.encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n" for i in acc.Images(tag))
    meshes = acc.PluginTagToContent("mesh")
    assert meshes and all(t.startswith("landscape/sharpness/plane_surface") for t in meshes)
    vertices = [t for t in meshes if tensor_util.make_ndarray(acc.Tensors(t)[-1].tensor_proto).shape == (1, 25, 3)]
    assert len(vertices) == 2  # vertices and colours of the 5 × 5 grid (the path gets no mesh)


def test_histograms_plain_and_weighted(toy_run):
    acc, _ = toy_run
    (plain, *_) = acc.Histograms("landscape/sharpness/samples")
    assert plain.histogram_value.num == 3 and plain.histogram_value.max == 2.0  # the inf sample is left out
    weighted = acc.Histograms("landscape/sharpness/spectrum")[-1].histogram_value
    keep = np.isfinite(NODES)
    assert weighted.num == pytest.approx(MASS[keep].sum())
    assert weighted.sum == pytest.approx((MASS[keep] * NODES[keep]).sum())
    assert weighted.sum_squares == pytest.approx((MASS[keep] * NODES[keep] ** 2).sum())
    assert sum(weighted.bucket) == pytest.approx(MASS[keep].sum())
    assert (weighted.min, weighted.max) == (-0.5, 7.5)


def test_overlay_lines_and_bars_accumulate_over_firings(toy_run):
    _, handler = toy_run
    (figures,) = [p for p in handler.parts if type(p).__name__ == "FiguresWriter"]
    line = figures.history.add("sharpness", "line", "next", Toy(9.0).curves()["line"])
    assert [label for label, _ in line] == ["epoch 3", "next"]  # max_slice_curves=2
    bars = figures.history.add("sharpness", "layers", "next", Toy(9.0).curves()["layers"])
    assert [label for label, _ in bars] == ["epoch 1", "epoch 2", "epoch 3", "next"]


def test_layout_charts_are_keyed_by_kind_not_by_name(toy_run):
    acc, _ = toy_run
    layouts = acc.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout()
    layout.ParseFromString(tensor_util.make_ndarray(layouts[-1].tensor_proto).item())
    charts = {c.title: list(c.multiline.tag) for cat in layout.category for c in cat.chart if c.HasField("multiline")}
    assert charts["Hessian eigenvalues and stability threshold"] == [
        "landscape/curv/lambda_1",
        "landscape/curv/lambda_2",
        "landscape/curv/lambda_10",
        "landscape/curv/stability_threshold",
    ]
    assert "Sharpness variants" not in charts  # "sharpness" is only the toy's name
    assert charts["Seconds per firing"] == ["landscape/curv/seconds", "landscape/sharpness/seconds"]
    margins = [list(c.margin.series) for cat in layout.category for c in cat.chart if c.HasField("margin")]
    assert [(s.value, s.lower, s.upper) for (s,) in margins] == [
        ("landscape/sharpness/value", "landscape/sharpness/value_lo", "landscape/sharpness/value_hi")
    ]
    assert len(layouts) == 1  # no firing after the first brought a new chart tag


def test_layout_of_several_handlers_of_one_kind():
    layout = custom_scalars_layout(
        {
            "sam05": ("sharpness", ["value", "rho"]),
            "asc": ("sharpness", ["value"]),
            "tr": ("trace", ["value", "stderr"]),
            "dens": ("density", ["trace", "lambda_max"]),
            "mine": ("", ["value"]),
        }
    )["landscape"]
    assert layout["Sharpness variants"] == ["Multiline", ["landscape/asc/value", "landscape/sam05/value"]]
    assert layout["Hessian trace"] == ["Multiline", ["landscape/dens/trace", "landscape/tr/value"]]
    assert "Gradient noise scale" not in layout


def test_a_result_whose_curves_fail_still_logs_its_scalars(tmp_path, caplog):
    tb = TensorboardLogger(log_dir=str(tmp_path))
    with caplog.at_level(logging.WARNING):
        call(LandscapeLogHandler(), tb, Engine(lambda e, b: None), 1, {"toy": firing(1, Toy(1.0, broken=True))})
    tb.close()
    acc = read(tmp_path)
    assert [e.value for e in acc.Scalars("landscape/toy/value")] == [1.0]
    assert acc.Tags()["images"] == [] and "no curves today" in caplog.text


def test_a_part_alone_writes_only_its_part(tmp_path):
    tb = TensorboardLogger(log_dir=str(tmp_path))
    engine = Engine(lambda e, b: None)
    call(ScalarsWriter(names=["a"]), tb, engine, 1, {"a": firing(1, Toy(1.0)), "b": firing(1, Toy(5.0))})
    call(TextWriter(), tb, engine, 1, {})
    tb.close()
    acc = read(tmp_path)
    assert {t for t in acc.Tags()["scalars"]} == {
        "landscape/epoch",
        *(f"landscape/a/{k}" for k in firing(1, Toy(1.0)).scalars),
    }
    assert acc.Tags()["images"] == [] and acc.Tags()["histograms"] == []
    assert texts(acc, "landscape/b/record") and texts(acc, "landscape/summary")


def test_options_switch_parts_off(tmp_path):
    tb = TensorboardLogger(log_dir=str(tmp_path))
    handler = LandscapeLogHandler(figures=False, mesh=False, histograms=False, text=False, custom_scalars=False)
    call(handler, tb, Engine(lambda e, b: None), 1, {"toy": firing(1, Toy(1.0))})
    tb.close()
    tags = read(tmp_path).Tags()
    assert tags["images"] == [] and tags["histograms"] == [] and tags["tensors"] == []
    assert "landscape/toy/value" in tags["scalars"]


def test_grid_mesh_refuses_other_curves():
    with pytest.raises(ValueError, match="grid"):
        grid_mesh(Curve("line", x=[0.0, 1.0], y=[1.0, 2.0]))
    with pytest.raises(ValueError, match="max_faces"):
        grid_mesh(Toy(1.0).curves()["plane"], max_faces=1)
