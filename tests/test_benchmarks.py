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


def test_products_benchmark_times_every_matrix_against_the_hvp():
    out = run_script("benchmarks/bench_products.py", "--quick", "--samples", "16")
    rows = {line.split()[1]: float(line.split()[-1]) for line in out.stdout.splitlines() if line.startswith("    16")}
    assert set(rows) == {"hessian", "ggn", "fisher", "empirical_fisher", "gradient"}
    assert rows["hessian"] == 1.0 and all(r > 0 for r in rows.values())


def test_state_benchmark_no_handler_grows_by_a_parameter_vector_per_firing_but_the_trajectory():
    out = run_script("benchmarks/bench_state.py", "--firings", "2", "--samples", "32")
    lines = out.stdout.splitlines()
    params = int(lines[0].split("P = ")[1].split()[0])
    rows = {line.split()[0]: [float(x) for x in line.split()[1:]] for line in lines[2:]}
    assert len(rows) == 15
    for name, (_, _, growth, history) in rows.items():
        assert history < 4 * params / 8, name  # a history record is far smaller than one parameter vector
        if name != "trajectory":  # the path keeps one point per firing, up to max_points
            assert growth < 4 * params / 8, name
    # The spectrum keeps its warm start, the 5 eigenvectors (5 float32 vectors of P), and no more.
    assert 5 * 4 * params <= rows["hessian"][0] * 1024 < 6 * 4 * params
    assert rows["trajectory"][2] >= 4 * params


def test_newcomers_benchmark_no_warm_start_silently_misses_what_a_cold_start_finds():
    # The first 12 drawn operators of the default seed hold newcomers 0.3-50% above the old k-th; the version that
    # dealt the old guard's vector (--rows k+1 at 7975b19) lost 4 of them, each reported converged.
    out = run_script("benchmarks/bench_newcomers.py", "--cases", "12", "--rows", "k+1")
    summary = [line for line in out.stdout.splitlines() if line.startswith("warm starts that missed")]
    assert summary == ["warm starts that missed what the cold start found: 0, of which reported converged: 0"]
    assert len([line for line in out.stdout.splitlines() if line.startswith("n=")]) == 12
