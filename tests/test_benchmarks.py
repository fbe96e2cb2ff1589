"""The slice benchmark's floor visits the very points loss_slice evaluates, and the script runs end to end."""

import copy

import torch
import torch.nn.functional as F

from benchmarks.bench_slices import _plane_points
from ignite_landscape import Probe, loss_slice, random_directions
from tests.helpers import classification_data, run_script, small_cnn


def test_floor_points_are_the_slice_points():
    model = small_cnn().eval()
    x, y = classification_data(16, (1, 6, 6))
    probe = Probe((x, y), F.cross_entropy)
    dirs = random_directions(model, 2, "filter", seed=1)
    res = loss_slice(model, probe, dirs, steps=5)
    grid = _plane_points(model, dirs, 5)
    scratch = copy.deepcopy(model)
    losses = []
    for w in grid:
        torch.nn.utils.vector_to_parameters(w, list(scratch.parameters()))
        losses.append(probe.evaluate(scratch).loss)
    torch.testing.assert_close(torch.tensor(losses, dtype=torch.float64), res.loss.reshape(-1), rtol=1e-5, atol=1e-7)


def test_slice_benchmark_runs():
    out = run_script("benchmarks/bench_slices.py", "--quick", "--samples", "128")
    assert "centre exact: True" in out.stdout
    assert "allocator: freed memory reused" in out.stdout  # the script re-executed itself with the settings
    assert "ours / floor, our plane:" in out.stdout and "beyond the forward" in out.stdout
