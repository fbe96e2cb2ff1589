"""Smoke runs of the budget and seed-scale benchmarks (tiny settings), and the data they build."""

from __future__ import annotations

import json
import math
import re

import torch

from benchmarks.bench_scale import cifar_shaped_digits, peak_memory
from tests.helpers import run_script


def test_cifar_shaped_digits():
    x, y = cifar_shaped_digits(40)
    assert x.shape == (40, 3, 32, 32) and y.shape == (40,)
    assert torch.equal(x[:, 0], x[:, 2])  # the gray channel repeated
    assert abs(float(x.mean())) < 1e-5 and abs(float(x.std()) - 1) < 1e-4
    assert set(y.tolist()) <= set(range(10))


def test_peak_memory_sees_an_allocation():
    wall, cpu, peak, out = peak_memory(
        lambda: torch.ones(64 * 2**20, dtype=torch.uint8).add_(1).sum(), torch.device("cpu")
    )
    assert int(out) == 2 * 64 * 2**20
    assert peak >= 60 * 2**20 and wall > 0 and cpu >= 0


def test_scale_benchmark_runs(tmp_path):
    out_json = tmp_path / "rows.json"
    handlers = "sharpness,connectivity"
    out = run_script(
        "benchmarks/bench_scale.py", "--quick", "--models", "resnet", "--handlers", handlers, "--json", str(out_json)
    )
    rows = json.loads(out_json.read_text())
    assert [r["handler"] for r in rows] == handlers.split(",")
    for r in rows:
        assert not r["failed"] and r["model"] == "resnet"
        assert math.isfinite(r["cpu_seconds"]) and r["cpu_seconds"] > 0 and r["train_cpu_seconds"] > 0
    assert "training pass over the same 16 samples" in out.stdout


def test_budget_benchmark_runs():
    out = run_script("benchmarks/bench_budget.py", "--quick", "--epochs", "1", "--clock", "cpu")
    assert "training bit-identical with and without the handlers: True" in out.stdout
    # One epoch is too short for the fraction to bind (first firings always run); the fake-clock tests in
    # test_budget.py check the decisions, this only that the script measures and reports.
    ratio = float(re.search(r"\(ratio ([0-9.]+)\)", out.stdout).group(1))
    assert ratio > 0 and "measured overhead in cpu time:" in out.stdout
    ran = [int(m) for m in re.findall(r"^\S+\s+(\d+)\s+\d+\s+[0-9.]+$", out.stdout, flags=re.M)]
    assert len(ran) == 4 and all(n >= 1 for n in ran)
