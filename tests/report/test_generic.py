"""The report draws every curve of a kind it has no dedicated figure for, by the curve's kind alone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ignite_landscape.report.events import RunData
from ignite_landscape.report.generic import figure_other_curves
from ignite_landscape.results import Curve


def _run(kind: str) -> RunData:
    curves = {
        "line": Curve("line", x=[0.0, 1.0, 2.0], y=[1.0, 0.5, 0.25], overlay=True),
        "grid": Curve("grid", x=[0.0, 1.0], y=[0.0, 1.0, 2.0], z=np.arange(6.0).reshape(2, 3) + 1),
        "path": Curve(
            "path", x=[0.0, 1.0], y=[0.0, 1.0], z=[[1.0, 2.0], [3.0, 4.0]], extra={"path_x": [0, 1], "path_y": [1, 0]}
        ),
        "histogram": Curve("histogram", x=[0.1, 0.2, 0.2, 0.9]),
        "bars": Curve("bars", y=[1.0, 2.0], labels=("a", "b")),
    }
    data = json.dumps({k: c.to_plain() for k, c in curves.items()})
    record = json.dumps({"kind": kind, "definitions": {"value": "a number"}})
    return RunData(
        name="r",
        path=Path("."),
        texts={"landscape/own/record": [(1, record)], "landscape/own/data": [(1, data), (2, data)]},
    )


def test_every_curve_kind_of_an_unknown_kind_is_drawn(tmp_path: Path) -> None:
    written = figure_other_curves([_run("my_measure")], tmp_path)
    assert sorted(written) == [f"own_{k}" for k in sorted(("line", "grid", "path", "histogram", "bars"))]
    for path in written.values():
        assert path.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("kind", ["spectrum", "slice2d"])
def test_kinds_with_a_figure_of_their_own_are_left_to_it(kind: str, tmp_path: Path) -> None:
    assert figure_other_curves([_run(kind)], tmp_path) == {}
