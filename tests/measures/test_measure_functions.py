"""Every measure module's ``measure_<f>``: the plain function of validated options behind ``f`` and its handler.

``f(model, probe, **keywords)`` builds the options and calls ``measure_<f>``, so both give the same numbers to
the bit; the handlers run ``measure_<f>`` directly and import no private name of a measure module; every
``measure_<f>`` follows the one calling convention of ``ignite_landscape.measures``.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
import torch

import ignite_landscape.handlers as handlers_pkg
import ignite_landscape.measures as m
from ignite_landscape import Probe
from ignite_landscape.handlers.measure import MeasureHandler
from ignite_landscape.measures.layerwise import layerwise_curvature_result
from tests.helpers import classification_data, dense_hessian, mlp, moved

N = 20
HANDLERS_DIR = Path(handlers_pkg.__file__).parent
MEASURE_FUNCTIONS = sorted(n for n in m.__all__ if n.startswith("measure_"))


@pytest.fixture(scope="module")
def setup():
    model = mlp(0, d_in=4, hidden=5, d_out=3)
    x, y = classification_data(N, (4,), seed=0)
    return model, Probe((x, y), torch.nn.functional.cross_entropy, population_size=500), x, y


# name: (keyword call, measure_<f> call) on the same inputs, seed 3 wherever a seed is taken.
PAIRS = {
    "sharpness": (
        lambda mod, p: m.sharpness(mod, p, rho=0.1, method="ascent", steps=4, seed=3),
        lambda mod, p: m.measure_sharpness(mod, p, m.SharpnessOptions(rho=0.1, method="ascent", steps=4), 3),
    ),
    "sharpness_jackknife": (
        lambda mod, p: m.sharpness(mod, p, rho=0.1, uncertainty="jackknife", jackknife_chunks=4, seed=3),
        lambda mod, p: m.measure_sharpness(
            mod, p, m.SharpnessOptions(0.1, uncertainty="jackknife", jackknife_chunks=4), 3
        ),
    ),
    "hessian_eigenvalues": (
        lambda mod, p: m.hessian_eigenvalues(
            mod, p, k=3, which="both", seed=3, uncertainty="jackknife", jackknife_chunks=4
        ),
        lambda mod, p: m.measure_hessian_eigenvalues(
            mod, p, m.SpectrumOptions(k=3, which="both", uncertainty="jackknife", jackknife_chunks=4), 3
        ),
    ),
    "hessian_trace": (
        lambda mod, p: m.hessian_trace(mod, p, num_hvps=12, seed=3, uncertainty="jackknife", jackknife_chunks=4),
        lambda mod, p: m.measure_hessian_trace(
            mod, p, m.TraceOptions(num_hvps=12, uncertainty="jackknife", jackknife_chunks=4), 3
        ),
    ),
    "hessian_density": (
        lambda mod, p: m.hessian_density(mod, p, num_steps=6, num_runs=2, seed=3),
        lambda mod, p: m.measure_hessian_density(mod, p, m.DensityOptions(num_steps=6, num_runs=2), 3),
    ),
    "layerwise_curvature": (
        lambda mod, p: layerwise_curvature_result(mod, p, trace_method="hutch++", exact_below=8, seed=3),
        lambda mod, p: m.measure_layerwise_curvature(
            mod, p, m.LayerwiseOptions(trace_method="hutch++", exact_below=8), 3
        ),
    ),
    "gradient_noise_scale": (
        lambda mod, p: m.gradient_noise_scale(mod, p, method="two_batch", small_batch=4, seed=3),
        lambda mod, p: m.measure_gradient_noise_scale(mod, p, m.NoiseOptions(method="two_batch", small_batch=4), 3),
    ),
    "ggn_decomposition": (
        lambda mod, p: m.ggn_decomposition(mod, p, k=4, trace_hvps=12, seed=3),
        lambda mod, p: m.measure_ggn_decomposition(mod, p, m.GGNOptions(k=4, trace_hvps=12), 3),
    ),
    "gradient_overlap": (
        lambda mod, p: m.gradient_overlap(mod, p, k=2, seed=3),
        lambda mod, p: m.measure_gradient_overlap(mod, p, m.OverlapOptions(k=2), 3),
    ),
    "directional_curvature": (
        lambda mod, p: m.directional_curvature(
            mod, p, "update", previous=moved(mod, 0.1, 1), curvature="fisher", seed=3
        ),
        lambda mod, p: m.measure_directional_curvature(
            mod, p, m.DirectionalOptions("update", "fisher"), 3, previous=moved(mod, 0.1, 1)
        ),
    ),
    "batch_sharpness": (
        lambda mod, p: m.batch_sharpness(mod, p, 5, num_batches=3, lr=0.1, seed=3),
        lambda mod, p: m.measure_batch_sharpness(mod, p, m.BatchSharpnessOptions(5, 3, 0.1), 3),
    ),
    "gradient_statistics": (
        lambda mod, p: m.gradient_statistics(mod, p, initial=moved(mod, 0.1, 1), previous=moved(mod, 0.01, 2)),
        lambda mod, p: m.measure_gradient_statistics(
            mod, p, m.GradStatsOptions(), initial=moved(mod, 0.1, 1), previous=moved(mod, 0.01, 2)
        ),
    ),
    "loss_slice": (
        lambda mod, p: m.loss_slice(mod, p, m.random_directions(mod, 2, seed=3), steps=5),
        lambda mod, p: m.measure_loss_slice(
            mod, p, m.SliceOptions(steps=5), directions=m.random_directions(mod, 2, seed=3)
        ),
    ),
    "trajectory_plane": (
        lambda mod, p: m.trajectory_plane(mod, p, [moved(mod, 0.1, s) for s in range(4)], steps=5),
        lambda mod, p: m.measure_trajectory_plane(
            mod, p, m.TrajectoryOptions(steps=5), trajectory=[moved(mod, 0.1, s) for s in range(4)]
        ),
    ),
    "interpolate": (
        lambda mod, p: m.interpolate(mod, moved(mod, 0.3, 1), mod, p, steps=5),
        lambda mod, p: m.measure_interpolate(
            mod, p, m.InterpolationOptions(steps=5), weights_a=moved(mod, 0.3, 1), weights_b=mod
        ),
    ),
}


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_the_keyword_function_is_its_measure_function(setup, name):
    model, probe, _, _ = setup
    by_keywords, by_options = PAIRS[name]
    a, b = by_keywords(model, probe), by_options(model, probe)
    assert type(a) is type(b)
    sa, sb = a.scalars(), b.scalars()
    assert sa.keys() == sb.keys() and sa
    for key in sa:
        assert torch.equal(torch.tensor(sa[key]), torch.tensor(sb[key])), key  # bit for bit, NaN included


def test_every_measure_function_is_exercised():
    assert sorted(f"measure_{n}" for n in PAIRS if not n.endswith("_jackknife")) == MEASURE_FUNCTIONS


def test_measure_hessian_eigenvalues_against_the_dense_hessian(setup):
    model, probe, x, y = setup
    eig = torch.linalg.eigvalsh(dense_hessian(model, x, y, torch.nn.functional.cross_entropy))
    res = m.measure_hessian_eigenvalues(model, probe, m.SpectrumOptions(k=2, which="both", tol=1e-10), seed=1)
    torch.testing.assert_close(
        res.eigenvalues.double(), torch.cat([eig[-2:].flip(0), eig[:2].flip(0)]), rtol=1e-7, atol=1e-9
    )


def test_measure_layerwise_curvature_against_the_dense_hessian_blocks(setup):
    model, probe, x, y = setup
    H = dense_hessian(model, x, y, torch.nn.functional.cross_entropy)
    options = m.LayerwiseOptions(trace_method="hutch++", exact_below=10_000)  # every block formed densely
    res = m.measure_layerwise_curvature(model, probe, options)
    sizes = [p.numel() for p in model.parameters()]
    offsets = torch.tensor([0, *sizes]).cumsum(0).tolist()
    blocks = {}
    for i, (name, _) in enumerate(model.named_parameters()):
        blocks.setdefault(name.rpartition(".")[0], []).extend(range(offsets[i], offsets[i + 1]))
    assert [layer.name for layer in res.layers] == list(blocks)
    for layer in res.layers:
        block = H[blocks[layer.name]][:, blocks[layer.name]]
        assert layer.trace == pytest.approx(float(block.trace()), rel=1e-10, abs=1e-12)
        assert layer.lambda_max == pytest.approx(float(torch.linalg.eigvalsh(block)[-1]), rel=1e-10, abs=1e-12)
    with pytest.raises(ValueError, match="params"):
        m.measure_layerwise_curvature(model, probe, options, params="0")


def test_measure_batch_sharpness_needs_a_batch_size(setup):
    model, probe, _, _ = setup
    with pytest.raises(ValueError, match="batch_size"):
        m.measure_batch_sharpness(model, probe, m.BatchSharpnessOptions(None, 3))


@pytest.mark.parametrize("name", MEASURE_FUNCTIONS)
def test_measure_functions_follow_one_calling_convention(name):
    params = list(inspect.signature(getattr(m, name)).parameters.values())
    assert [p.name for p in params[:3]] == ["model", "probe", "options"], name
    assert all(p.kind is p.POSITIONAL_OR_KEYWORD and p.default is p.empty for p in params[:3]), name
    rest = params[3:]
    if rest and rest[0].name == "seed":  # a randomised measure: seed=0, params=None, as MeasureHandler passes them
        assert [(p.name, p.default) for p in rest[:2]] == [("seed", 0), ("params", None)], name
        rest = rest[2:]
    assert all(p.kind is p.KEYWORD_ONLY for p in rest), name  # everything else by keyword
    assert all(p.default is None for p in rest if p.name == "params"), name


def test_handlers_run_public_measure_functions():
    named = [cls for cls in vars(handlers_pkg).values() if isinstance(cls, type) and issubclass(cls, MeasureHandler)]
    runs = {cls.__name__: cls.measure for cls in named if cls.measure is not None}
    assert len(runs) >= 5
    for handler, function in runs.items():
        assert function.__name__.startswith("measure_") and getattr(m, function.__name__) is function, handler


def test_handlers_import_no_private_name_of_a_measure_module():
    imported = []
    for path in sorted(HANDLERS_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ignite_landscape.measures"):
                imported += [(path.name, a.name) for a in node.names]
    assert any(n.startswith("measure_") for _, n in imported)
    assert [(f, n) for f, n in imported if n.startswith("_")] == []
