"""No behaviour change: the main job's logged scalars and report values match the pre-redesign golden file.

Regenerate ``tests/golden/digits.json`` only for an intended change of the numbers
(``python -m tests.golden.capture``), and say why in the commit.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from tests.golden.capture import GOLDEN, capture

# Event files store scalars as float32; the same computation gives the same float32 bits. The tolerance
# only absorbs a change of summation order (a few float32 ulps), nothing a real change would hide in.
RTOL = 1e-6


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, str) or isinstance(b, str) or a is None or b is None:
        return a == b
    return math.isclose(a, b, rel_tol=RTOL, abs_tol=1e-12)


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return capture(tmp_path_factory.mktemp("golden"))


@pytest.fixture(scope="module")
def golden() -> dict[str, Any]:
    return json.loads(GOLDEN.read_text(encoding="utf-8"))


def test_every_logged_scalar_matches_the_golden_run(fresh: dict[str, Any], golden: dict[str, Any]) -> None:
    assert fresh["argv"] == golden["argv"]
    assert sorted(fresh["scalars"]) == sorted(golden["scalars"])
    bad = []
    for tag, points in golden["scalars"].items():
        now = fresh["scalars"][tag]
        if [s for s, _ in now] != [s for s, _ in points]:
            bad.append(f"{tag}: steps {[s for s, _ in now]} != {[s for s, _ in points]}")
        bad += [f"{tag}@{s}: {v!r} != {g!r}" for (s, v), (_, g) in zip(now, points) if not _close(v, g)]
    assert not bad, "\n".join(bad[:40])


def test_report_summary_matches_the_golden_run(fresh: dict[str, Any], golden: dict[str, Any]) -> None:
    assert fresh["figures"] == golden["figures"]
    for now, then in zip(fresh["summary_rows"], golden["summary_rows"], strict=True):
        assert sorted(now) == sorted(then)
        assert all(_close(now[k], then[k]) for k in then), {k: (now[k], then[k]) for k in then}
    key = lambda c: (c["metric"], c["scope"])  # noqa: E731
    assert sorted(map(key, fresh["correlations"])) == sorted(map(key, golden["correlations"]))
    now = {key(c): c for c in fresh["correlations"]}
    for c in golden["correlations"]:
        assert all(_close(now[key(c)][k], c[k]) for k in ("n", "pearson", "kendall")), (c, now[key(c)])
