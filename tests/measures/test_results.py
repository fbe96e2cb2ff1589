"""Every result of the package implements the Result protocol: kind, scalars, curves and their definitions.

Each result is built for real on a tiny float64 model through the public measure functions; its curves
must hold the result's own arrays and survive a JSON round trip, and every scalar it logs must be defined.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import pkgutil

import numpy as np
import pytest
import torch

import ignite_landscape.measures as measures_pkg
from ignite_landscape import Probe
from ignite_landscape.measures.connectivity import interpolate
from ignite_landscape.measures.diagonal import hessian_diagonal
from ignite_landscape.measures.diagonal_profile import DiagonalProfileOptions, diagonal_profile
from ignite_landscape.measures.directional import batch_sharpness, directional_curvature
from ignite_landscape.measures.directions import random_directions
from ignite_landscape.measures.gradstats import gradient_statistics
from ignite_landscape.measures.layerwise import LAYER_QUANTITIES, layerwise_curvature_result
from ignite_landscape.measures.noise import gradient_noise_scale
from ignite_landscape.measures.outliers import ggn_decomposition
from ignite_landscape.measures.overlap import gradient_overlap
from ignite_landscape.measures.sharpness import sharpness
from ignite_landscape.measures.slices import loss_slice
from ignite_landscape.measures.spectrum import hessian_density, hessian_eigenvalues, hessian_trace
from ignite_landscape.measures.trajectory import trajectory_plane
from ignite_landscape.results import KINDS, Curve, Result, record_of
from tests.helpers import classification_data, dense_hessian, mlp, moved

N = 24
CHUNKS = 4
# Kinds of measures added in one module after KINDS was written: writers and the report read them through the
# protocol alone (no reader looks them up by name), so results.py does not list them.
MODULE_KINDS = ("diagonal_profile",)


@pytest.fixture(scope="module")
def setup():
    model = mlp(0, d_in=4, hidden=5, d_out=3)
    x, y = classification_data(N, (4,), seed=0)
    probe = Probe((x, y), torch.nn.functional.cross_entropy, population_size=1000)
    return model, probe, x, y


# One builder per result (and per variant whose scalars or definitions differ).
BUILDERS = {
    "spectrum_both": lambda m, p: hessian_eigenvalues(
        m, p, k=2, which="both", uncertainty="jackknife", jackknife_chunks=CHUNKS
    ),
    "spectrum_smallest": lambda m, p: hessian_eigenvalues(
        m, p, k=2, which="smallest", uncertainty="jackknife", jackknife_chunks=CHUNKS
    ),
    "spectrum_ggn": lambda m, p: hessian_eigenvalues(m, p, k=3, curvature="ggn"),
    "trace": lambda m, p: hessian_trace(m, p, num_hvps=12, uncertainty="jackknife", jackknife_chunks=CHUNKS),
    "trace_hutchinson": lambda m, p: hessian_trace(m, p, method="hutchinson", num_hvps=6),
    "trace_exact": lambda m, p: hessian_trace(m, p, method="exact"),
    "density": lambda m, p: hessian_density(m, p, num_steps=6, num_runs=2, grid_size=64),
    "sharpness_sam": lambda m, p: sharpness(m, p, rho=0.05, method="sam"),
    "sharpness_ascent": lambda m, p: sharpness(m, p, rho=0.05, method="ascent", norm="linf", adaptive="asam", steps=5),
    "sharpness_average": lambda m, p: sharpness(
        m, p, rho=0.01, method="average", num_samples=4, uncertainty="jackknife", jackknife_chunks=CHUNKS
    ),
    "sharpness_m": lambda m, p: sharpness(m, p, rho=0.05, method="sam", m=6),
    "slice1d": lambda m, p: loss_slice(m, p, random_directions(m, 1, seed=0), steps=5),
    "slice2d": lambda m, p: loss_slice(m, p, random_directions(m, 2, seed=0), steps=4, span=(-1.0, 0.5)),
    "connectivity": lambda m, p: interpolate(m, m.state_dict(), moved(m, 0.3, 1), p, steps=5),
    "noise_scale": lambda m, p: gradient_noise_scale(m, p),
    "noise_scale_two_batch": lambda m, p: gradient_noise_scale(m, p, method="two_batch", small_batch=4),
    "trajectory": lambda m, p: trajectory_plane(
        m, p, [moved(m, 0.1 * i, i) for i in range(1, 5)], steps=5, iterations=[10, 20, 30, 40]
    ),
    "layerwise": lambda m, p: layerwise_curvature_result(m, p, trace_method="hutch++", exact_below=8),
    "gradstats": lambda m, p: gradient_statistics(
        m, p, initial=moved(m, 0.2, 2), previous=moved(m, 0.01, 3), uncertainty="jackknife", jackknife_chunks=CHUNKS
    ),
    "overlap": lambda m, p: gradient_overlap(m, p, k=2),
    "directional": lambda m, p: directional_curvature(m, p, curvature="ggn"),
    "batch_sharpness": lambda m, p: batch_sharpness(m, p, 8, num_batches=3, lr=0.1),
    "ggn": lambda m, p: ggn_decomposition(m, p, k=4, trace_hvps=12),
    "diagonal": lambda m, p: hessian_diagonal(m, p),
    "diagonal_profile": lambda m, p: diagonal_profile(m, p, DiagonalProfileOptions(method="hutchinson", num_hvps=4)),
}


@pytest.fixture(scope="module")
def results(setup):
    model, probe, _, _ = setup
    return {name: build(model, probe) for name, build in BUILDERS.items()}


def _result_classes() -> set[type]:
    """Every class of ``ignite_landscape.measures`` with a ``scalars`` method (the results)."""
    found = set()
    for info in pkgutil.iter_modules(measures_pkg.__path__):
        module = importlib.import_module(f"ignite_landscape.measures.{info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__ and callable(getattr(cls, "scalars", None)):
                found.add(cls)
    return found


def _close(a, b) -> None:
    # to_plain keeps 8 significant digits.
    np.testing.assert_allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), rtol=1e-7, atol=0)


def test_every_result_class_is_built_here(results):
    classes = _result_classes()
    assert len(classes) >= 15
    assert classes == {type(r) for r in results.values()}
    assert all(issubclass(cls, Result) and dataclasses.is_dataclass(cls) for cls in classes)


def test_the_kinds_cover_the_package(results):
    assert {r.kind for r in results.values()} == set(KINDS) | set(MODULE_KINDS)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_protocol(results, name):
    result = results[name]
    assert isinstance(result, Result)
    assert result.kind in KINDS + MODULE_KINDS
    definitions = result.definitions()
    scalars = result.scalars()
    assert scalars and all(isinstance(v, float) for v in scalars.values())
    for key in [*scalars, *result.curves()]:
        assert isinstance(definitions.get(key), str) and len(definitions[key]) > 10, key
    record = record_of(result, {"threshold": "2/η"})
    assert record["kind"] == result.kind
    assert record["definitions"] == {**definitions, "threshold": "2/η"}
    json.dumps(record)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_curves_round_trip(results, name):
    for key, curve in results[name].curves().items():
        assert isinstance(curve, Curve)
        back = Curve.from_plain(json.loads(json.dumps(curve.to_plain())))
        assert (back.kind, back.labels, back.xlabel, back.ylabel, back.overlay) == (
            curve.kind,
            curve.labels,
            curve.xlabel,
            curve.ylabel,
            curve.overlay,
        ), key
        for field in ("x", "y", "z"):
            _close(getattr(back, field), getattr(curve, field))
        assert set(back.extra) == set(curve.extra)
        for k, v in curve.extra.items():
            if isinstance(v, np.ndarray):
                _close(back.extra[k], v)
            else:
                assert back.extra[k] == v


def test_spectrum_curve_and_definitions(results):
    r = results["spectrum_both"]
    curve = r.curves()["eigenvalues"]
    assert curve.kind == "histogram" and curve.y.size == 0
    _close(curve.x, r.eigenvalues)
    d = r.definitions()
    assert f"{CHUNKS} leave-one-chunk-out" in d["lambda_1_stderr"]
    assert "tol 0.0001" in d["lambda_max"] and "Hessian-vector products" in d["lambda_max"]
    assert "Gauss-Newton" in results["spectrum_ggn"].definitions()["lambda_max"]
    assert "lambda_min_2_hi" in results["spectrum_smallest"].definitions()


def test_trace_definitions_name_the_method(results):
    assert "Hutch++" in results["trace"].definitions()["value"]
    assert "jackknife" in results["trace"].definitions()["stderr"]
    assert "Hutchinson" in results["trace_hutchinson"].definitions()["value"]
    assert "exact" in results["trace_exact"].definitions()["value"]


def test_density_curves_hold_its_arrays(results, setup):
    r = results["density"]
    curves = r.curves()
    line = curves["density"]
    assert line.kind == "line" and line.xlabel == "eigenvalue"
    _close(line.x, r.grid)
    _close(line.y, r.density)
    hist = curves["spectrum"]
    assert hist.kind == "histogram"
    # Fewer steps than parameters: no run ends early, each run's weights sum to 1, so the counts sum to P.
    assert hist.x.size == r.nodes.numel()
    assert abs(hist.y.sum() - r.num_params) <= 1e-6 * r.num_params
    # The histogram is the same spectral measure: its first moment is SLQ's trace.
    assert abs((hist.x * hist.y).sum() - r.trace) <= 1e-9 * abs(r.trace)


def test_density_spectrum_drops_padding_and_hits_the_true_eigenvalues(setup):
    _, _, x, y = setup
    small = torch.nn.Linear(4, 2).double()
    torch.nn.init.normal_(small.weight, generator=torch.Generator().manual_seed(1))
    r = hessian_density(small, Probe((x, y % 2), torch.nn.functional.cross_entropy), num_steps=40, num_runs=2)
    assert r.mask is not None and not bool(r.mask.all())  # runs ended early: there is padding to drop
    hist = r.curves()["spectrum"]
    assert hist.x.size == int(r.mask.sum())
    assert abs(hist.y.sum() - r.num_params) <= 1e-6 * r.num_params
    H = dense_hessian(small, x, y % 2, torch.nn.functional.cross_entropy)
    true = torch.linalg.eigvalsh(H).numpy()
    scale = float(np.abs(true).max())
    # A node with real weight is an eigenvalue (an exact Krylov space); weightless nodes may be anything.
    heavy = hist.x[hist.y > 1e-6 * r.num_params]
    assert heavy.size > 0
    assert np.abs(heavy[:, None] - true[None, :]).min(axis=1).max() < 1e-6 * scale


def test_slice_curves(results):
    one, two = results["slice1d"], results["slice2d"]
    assert (one.kind, two.kind) == ("slice1d", "slice2d")
    line = one.curves()["slice"]
    assert line.kind == "line" and line.overlay
    _close(line.y, one.loss)
    assert line.y[line.x == 0.0].tolist() == [one.center_loss]
    _close(line.extra["accuracy"], one.accuracy)
    grid = two.curves()["slice"]
    assert grid.kind == "grid" and not grid.overlay
    _close(grid.x, two.coords[0])
    _close(grid.y, two.coords[1])
    _close(grid.z, two.loss)
    _close(grid.extra["accuracy"], two.accuracy)
    assert "[-1, 0.5]" in two.definitions()["min_loss"]


def test_interpolation_curve(results):
    r = results["connectivity"]
    line = r.curves()["interpolation"]
    _close(line.x, r.alphas)
    _close(line.y, r.loss)
    _close(line.extra["error"], r.error)
    assert float(line.extra["loss_barrier"]) == r.loss_barrier
    assert line.extra["bn_recalibrated"] is False
    assert "chord" in r.definitions()["loss_barrier"]


def test_trajectory_path_curve(results):
    r = results["trajectory"]
    path = r.curves()["plane"]
    assert path.kind == "path"
    _close(path.z, r.slice.loss)
    _close(path.extra["path_x"], r.coords[:, 0])
    _close(path.extra["path_y"], r.coords[:, 1])
    _close(path.extra["explained_variance"], r.explained_variance)
    assert path.extra["iterations"].tolist() == [10.0, 20.0, 30.0, 40.0]


def test_layerwise_bars(results):
    r = results["layerwise"]
    curves = r.curves()
    assert set(curves) == set(LAYER_QUANTITIES)
    scalars = r.scalars()
    for quantity, bars in curves.items():
        assert bars.kind == "bars" and list(bars.labels) == r.labels()
        _close(bars.y, [scalars[f"{quantity}/{label}"] for label in r.labels()])
    d = r.definitions()
    assert "25 parameters" in d["trace/0"] and "18 parameters" in d["trace/2"]
    for label, layer in zip(r.labels(), r.layers):
        assert ("Hutch++" in d[f"trace/{label}"]) == (layer.trace_stderr != 0)


def test_gradstats_histogram_curve(results):
    r = results["gradstats"]
    assert set(r.histograms()) == {"sample_grad_norms"}
    hist = r.curves()["sample_grad_norms"]
    assert hist.kind == "histogram"
    _close(hist.x, r.sample_norms)
    d = r.definitions()
    assert f"{CHUNKS} leave-one-chunk-out" in d["gsnr_stderr"]
    assert {"gsnr_lo", "fisher_trace_hi", "distance_from_init", "update_norm/0"} <= set(d)
    assert dataclasses.replace(r, sample_norms=None).curves() == {}


def test_sharpness_definitions_carry_the_options(results):
    sam = results["sharpness_sam"].definitions()["value"]
    assert "ρ = 0.05" in sam and "SAM" in sam and "‖δ‖₂" in sam
    ascent = results["sharpness_ascent"].definitions()["value"]
    assert "‖δ‖∞" in ascent and "Kwon" in ascent and "ascent" in ascent
    average = results["sharpness_average"].definitions()
    assert "4 random perturbations" in average["value"] and f"{CHUNKS} leave-one-chunk-out" in average["stderr"]
    assert "m = 6" in results["sharpness_m"].definitions()["value"]


def test_noise_definitions_carry_the_population(results):
    d = results["noise_scale"].definitions()
    assert "N = 1000" in d["grad_norm_sq"] and f"n = {N}" in d["b_simple"]
    assert "B_s = 4" in results["noise_scale_two_batch"].definitions()["trace_sigma"]
