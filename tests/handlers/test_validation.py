"""Every handler option that cannot work is refused at construction, naming the option.

The check (and message) is the same the measure function applies on entry.
"""

from __future__ import annotations

import inspect
import math
import pydoc
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ignite_landscape as il
from tests.helpers import classification_data, mlp

# (handler, options, exception, word the message must contain)
CASES = [
    (il.HessianSpectrum, dict(k=0), ValueError, "k"),
    (il.HessianSpectrum, dict(k=1.5), TypeError, "k"),
    (il.HessianSpectrum, dict(k=10_000), ValueError, "k"),
    (il.HessianSpectrum, dict(which="top"), ValueError, "which"),
    (il.HessianSpectrum, dict(tol=0.0), ValueError, "tol"),
    (il.HessianSpectrum, dict(max_iter=0), ValueError, "max_iter"),
    (il.HessianSpectrum, dict(warm_start="yes"), TypeError, "warm_start"),
    (il.HessianSpectrum, dict(warm_start_noise=-0.1), ValueError, "warm_start_noise"),
    (il.HessianSpectrum, dict(warm_start_noise="0.1"), TypeError, "warm_start_noise"),
    (il.HessianSpectrum, dict(warm_start_noise=float("inf")), ValueError, "warm_start_noise"),
    (il.HessianTrace, dict(num_hvps=4), ValueError, "num_hvps"),  # Hutch++ needs 6
    (il.HessianTrace, dict(method="hutchinson", num_hvps=1), ValueError, "num_hvps"),  # no standard error
    (il.HessianTrace, dict(num_hvps=6.0), TypeError, "num_hvps"),
    (il.HessianTrace, dict(method="hutch"), ValueError, "method"),
    (il.HessianDensity, dict(num_steps=0), ValueError, "num_steps"),
    (il.HessianDensity, dict(num_runs=0), ValueError, "num_runs"),
    (il.HessianDensity, dict(grid_size=1), ValueError, "grid_size"),
    (il.HessianDensity, dict(sigma=0.0), ValueError, "sigma"),
    (il.HessianDensity, dict(sigma="wide"), TypeError, "sigma"),
    (il.Sharpness, dict(rho=0.0), ValueError, "rho"),
    (il.Sharpness, dict(rho=math.inf), ValueError, "rho"),
    (il.Sharpness, dict(rho="big"), TypeError, "rho"),
    (il.Sharpness, dict(method="worst"), ValueError, "method"),
    (il.Sharpness, dict(norm="l1"), ValueError, "norm"),
    (il.Sharpness, dict(adaptive="kwon"), ValueError, "adaptive"),
    (il.Sharpness, dict(steps=0), ValueError, "steps"),
    (il.Sharpness, dict(tol=-1e-3), ValueError, "tol"),
    (il.Sharpness, dict(num_samples=1), ValueError, "num_samples"),
    (il.Sharpness, dict(step_size=0.0), ValueError, "step_size"),
    (il.Sharpness, dict(schedule="linear"), ValueError, "schedule"),
    (il.Sharpness, dict(adaptive_eta=-0.01), ValueError, "adaptive_eta"),
    (il.LossSlice, dict(dims=1, steps=20), ValueError, "steps"),  # 0 is not on the grid
    (il.LossSlice, dict(dims=1, span=(0.5, 1.0)), ValueError, "span"),  # the weights are not on the line
    (il.LossSlice, dict(dims=1, span=(1.0, -1.0)), ValueError, "span"),
    (il.LossSlice, dict(dims=1, span=(-1.0, math.nan)), ValueError, "span"),
    (il.LossSlice, dict(dims=1, span=(-1.0,)), TypeError, "span"),
    (il.LossSlice, dict(dims=1, steps=1), ValueError, "steps"),
    (il.LossSlice, dict(dims=1, batch_points=0), ValueError, "batch_points"),
    (il.LossSlice, dict(dims=1, normalization="unit"), ValueError, "normalization"),
    (il.LossSlice, dict(dims=1, directions="pca"), ValueError, "directions"),
    (il.LossSlice, dict(dims=1, ignore_bias_bn=1), TypeError, "ignore_bias_bn"),
    (il.LossSlice, dict(dims=2, steps=10), ValueError, "steps"),
    (il.LossSlice, dict(dims=2, span=(0.5, 1.0)), ValueError, "span"),
    (il.LossSlice, dict(dims=3), ValueError, "dims"),
    (il.ModeConnectivity, dict(steps=1), ValueError, "steps"),
    (il.ModeConnectivity, dict(bn_batches=0), ValueError, "bn_batches"),
    (il.ModeConnectivity, dict(bn_loader=5), TypeError, "bn_loader"),
    (il.ModeConnectivity, dict(reference="initial"), ValueError, "reference"),
    (il.GradientNoiseScale, dict(method="exact"), ValueError, "method"),
    (il.GradientNoiseScale, dict(method="two_batch", small_batch=0), ValueError, "small_batch"),
    (il.GradientNoiseScale, dict(method="two_batch", small_batch=40), ValueError, "small_batch"),
    (il.GradientNoiseScale, dict(small_batch=4), ValueError, "small_batch"),  # per_sample has none
    (il.GradientNoiseScale, dict(chunk_size=0), ValueError, "chunk_size"),
    (il.GradientNoiseScale, dict(population_size=10), ValueError, "population_size"),  # fewer than the probe
    (il.GradientNoiseScale, dict(smoothing=1.0), ValueError, "smoothing"),
    (il.GradientNoiseScale, dict(smoothing="a lot"), TypeError, "smoothing"),
]


def _ids(case: tuple) -> str:
    cls, options, _, _ = case
    return f"{cls.__name__}-" + ",".join(f"{k}={v!r}" for k, v in options.items())


@pytest.fixture(scope="module")
def model_and_probe() -> tuple[nn.Module, il.Probe]:
    return mlp(), il.Probe(classification_data(40, (5,)), F.cross_entropy)


@pytest.mark.parametrize("case", CASES, ids=[_ids(c) for c in CASES])
def test_bad_handler_option_raises_at_construction(case, model_and_probe):
    cls, options, exc, word = case
    model, probe = model_and_probe
    with pytest.raises(exc, match=rf"\b{word}\b"):
        cls(model, probe, **options)


# The measure functions refuse the same options with the same message: one check serves both.
FUNCTIONS = {
    il.HessianTrace: lambda m, p, **o: il.hessian_trace(m, p, **o),
    il.HessianDensity: lambda m, p, **o: il.hessian_density(m, p, **o),
    il.Sharpness: lambda m, p, **o: il.sharpness(m, p, **o),
    il.LossSlice: lambda m, p, dims=1, **o: il.loss_slice(m, p, il.random_directions(m, dims), **o),
    il.ModeConnectivity: lambda m, p, **o: il.interpolate(m, m.state_dict(), m.state_dict(), p, **o),
    il.GradientNoiseScale: lambda m, p, **o: il.gradient_noise_scale(m, p, **o),
}
SHARED = [
    c
    for c in CASES
    if c[0] in FUNCTIONS
    and not set(c[1]) & {"directions", "normalization", "ignore_bias_bn", "reference", "smoothing"}
    and c[1].get("dims", 1) in (1, 2)
]


@pytest.mark.parametrize("case", SHARED, ids=[_ids(c) for c in SHARED])
def test_measure_function_refuses_the_same_option_with_the_same_message(case, model_and_probe):
    cls, options, exc, _ = case
    model, probe = model_and_probe
    with pytest.raises(exc) as from_handler:
        cls(model, probe, **options)
    with pytest.raises(exc) as from_function:
        FUNCTIONS[cls](model, probe, **options)
    assert str(from_function.value) == str(from_handler.value)


def test_good_options_construct_and_run(model_and_probe):
    # The boundary values of the checks above are accepted, and they do run.
    model, probe = model_and_probe
    from ignite.engine import Engine

    trainer = Engine(lambda e, b: None)
    handlers = [
        il.HessianTrace(model, probe, num_hvps=6, name="t1"),
        il.HessianTrace(model, probe, method="hutchinson", num_hvps=2, name="t2"),
        il.HessianDensity(model, probe, num_steps=1, num_runs=1, grid_size=2),
        il.Sharpness(model, probe, method="ascent", steps=1),
        il.LossSlice(model, probe, dims=1, steps=2, span=(0.0, 1.0)),
        il.LossSlice(model, probe, dims=2, steps=3),
        il.ModeConnectivity(model, probe, steps=2),
        il.GradientNoiseScale(model, probe, chunk_size=1, population_size=40, smoothing=0.0),
    ]
    for h in handlers:
        h.attach(trainer)
    trainer.run([0], max_epochs=1)
    for h in handlers:
        assert not h.last.failed, (h.name, h.last.error)
        assert all(math.isfinite(v) for v in h.last.scalars.values()), h.name


def test_option_errors_come_before_probe_errors():
    # Options are checked before the model and probe are looked at: the message names the option even
    # when the probe would also be refused.
    tiny = il.Probe((torch.randn(1, 5, dtype=torch.float64), torch.zeros(1, dtype=torch.long)), F.cross_entropy)
    with pytest.raises(ValueError, match="method"):
        il.GradientNoiseScale(mlp(), tiny, method="exact")
    with pytest.raises(ValueError, match="2 samples"):
        il.GradientNoiseScale(mlp(), tiny)


# -- every option of every handler: declared once, validated at construction, documented -------------
HANDLERS = [
    il.HessianSpectrum,
    il.HessianTrace,
    il.HessianDensity,
    il.Sharpness,
    il.LossSlice,
    il.ModeConnectivity,
    il.GradientNoiseScale,
    il.DirectionalCurvature,
    il.BatchSharpness,
    il.GradientOverlap,
    il.LayerwiseCurvature,
    il.GGNOutliers,
    il.GradientStatistics,
    il.TrajectoryPlane,
]
BASE_KEYWORDS = {"name", "params", "seed", "on_error", "progress", "progress_after", "guard"}


def _options(cls: type) -> list[inspect.Parameter]:
    return [p for p in list(inspect.signature(cls).parameters.values())[2:] if p.name not in BASE_KEYWORDS]


def _bad_values(annotation: object) -> list[object]:
    """A value of no accepted type, and one of a plausible type but out of range or unknown."""
    text = str(annotation)
    if "bool" in text and "str" not in text and "int" not in text:
        typed: list[object] = ["yes"]
    elif "str" in text:
        typed = ["nope"]
    elif "int" in text or "float" in text or "tuple" in text:
        typed = [-1]
    else:  # an optimizer, a loader, a handler: only the wrong type
        typed = []
    return [object(), *typed]


OPTION_CASES = [(cls, p.name, bad) for cls in HANDLERS for p in _options(cls) for bad in _bad_values(p.annotation)]


@pytest.mark.parametrize(
    "cls,option,bad",
    OPTION_CASES,
    ids=[f"{c.__name__}-{o}-{type(b).__name__}" for c, o, b in OPTION_CASES],
)
def test_every_option_of_every_handler_is_validated_at_construction(cls, option, bad, model_and_probe):
    model, probe = model_and_probe
    with pytest.raises((TypeError, ValueError), match=rf"\b{option}\b"):
        cls(model, probe, **{option: bad})


def test_every_handler_has_options():
    # The parametrisation above covers them all: no handler without declared options.
    counts = {cls.__name__: len(_options(cls)) for cls in HANDLERS}
    assert all(n >= 1 for n in counts.values()), counts
    assert sum(counts.values()) >= 60, counts


@pytest.mark.parametrize("cls", HANDLERS, ids=[c.__name__ for c in HANDLERS])
def test_help_lists_every_option_with_its_default(cls):
    text = pydoc.render_doc(cls, renderer=pydoc.plaintext)
    for p in _options(cls):
        assert re.search(rf"\b{p.name}: .+ Default: ``{re.escape(repr(p.default))}``", text), (cls.__name__, p.name)
        assert f"{p.name}: see the options." not in text, (cls.__name__, p.name)  # every option described
    # The signature shown by help() is the constructor's, not (*args, **kwargs).
    assert "**kwargs" not in str(inspect.signature(cls)) and "model" in str(inspect.signature(cls))


def test_options_keep_their_positions_and_read_as_attributes(model_and_probe):
    model, probe = model_and_probe
    h = il.Sharpness(model, probe, 0.1, "ascent", name="sam")
    assert (h.rho, h.method, h.name) == (0.1, "ascent", "sam")
    assert h.options == h.options_type(rho=0.1, method="ascent")
    with pytest.raises(AttributeError, match="rho"):
        h.rho = 0.2
    s = il.LossSlice(model, probe, 2)
    assert (s.name, s.steps, s.normalization) == ("slice2d", 11, "filter")
    with pytest.raises(TypeError, match="rhoo"):
        il.Sharpness(model, probe, rhoo=0.1)
    with pytest.raises(TypeError):
        il.Sharpness(model, probe, 0.1, "sam", "l2", False, 100)  # steps is keyword-only


def test_handlers_record_a_probe_definition(model_and_probe):
    from ignite.engine import Engine

    model, probe = model_and_probe
    trainer = Engine(lambda e, b: None)
    h = il.HessianTrace(model, probe, num_hvps=6)
    h.attach(trainer)
    trainer.run([0], max_epochs=1)
    assert h.last.definitions["probe"] == (
        f"40 fixed samples, model in eval mode, objective {probe.decomposition.description}"
    )
