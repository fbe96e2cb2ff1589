"""The Hessian diagonal profile against dense float64 Hessians, and streamed through the generic handler alone."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events, create_supervised_trainer
from ignite.handlers import TensorboardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from ignite_landscape import LandscapeLogHandler, Probe, report
from ignite_landscape.handlers.measure import Measure
from ignite_landscape.linalg.random import generator, rademacher
from ignite_landscape.linalg.trace import hutchinson
from ignite_landscape.measures.diagonal import ExactUnsupportedError
from ignite_landscape.measures.diagonal_profile import (
    DiagonalProfile,
    DiagonalProfileOptions,
    diagonal_profile,
    hutchinson_diagonal,
)
from ignite_landscape.report.events import load_run
from tests.helpers import classification_data, dense_hessian

F = nn.functional


def tanh_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()


def gelu_mlp(seed: int = 0) -> nn.Module:
    # BackPACK has no second-derivative rule for GELU: the exact method refuses it.
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.GELU(), nn.Linear(6, 3)).double()


def blocks(model: nn.Module, diag: torch.Tensor) -> dict[str, torch.Tensor]:
    """Entries of ``diag`` (in parameter order) grouped by owning module."""
    out: dict[str, list[torch.Tensor]] = {}
    offset = 0
    for name, p in model.named_parameters():
        out.setdefault(name.rsplit(".", 1)[0], []).append(diag[offset : offset + p.numel()])
        offset += p.numel()
    return {k: torch.cat(v) for k, v in out.items()}


def test_exact_profile_equals_the_dense_hessian_diagonal():
    pytest.importorskip("backpack")
    model = tanh_mlp()
    x, y = classification_data(23, (5,), classes=3)
    before = copy.deepcopy(model.state_dict())
    probe = Probe((x, y), F.cross_entropy, batch_size=5)  # uneven chunks: 5+5+5+5+3
    prof = diagonal_profile(model, probe, DiagonalProfileOptions(method="exact", bins=9))
    ref = dense_hessian(model, x, y, F.cross_entropy).diagonal()
    scale = float(ref.abs().max())
    assert prof.method == "exact" and prof.num_hvps == 0 and prof.stderr == 0.0 and prof.fallback is None
    assert prof.num_params == ref.numel() == 7 * 5 + 7 + 3 * 7 + 3
    assert abs(prof.value - float(ref.sum())) <= 1e-10 * scale
    assert abs(prof.largest - float(ref.max())) <= 1e-10 * scale
    assert abs(prof.smallest - float(ref.min())) <= 1e-10 * scale
    ref_blocks = blocks(model, ref)
    assert prof.layers == ("0", "2") and prof.layer_sizes == (42, 24)
    for label, trace, neg in zip(prof.layers, prof.layer_traces, prof.layer_negative_fractions):
        assert abs(trace - float(ref_blocks[label].sum())) <= 1e-10 * scale
        assert neg == float((ref_blocks[label] < 0).double().mean())
    assert prof.negative_fraction == float((ref < 0).double().mean())
    assert 0 < prof.negative_fraction < 1  # tanh's curvature makes some entries negative: the fraction is tested
    # The histogram: the dense diagonal binned by numpy over the same edges (last bin closed), summing to P.
    assert len(prof.edges) == 10 and prof.edges[0] == prof.smallest and prof.edges[-1] == prof.largest
    expected, _ = np.histogram(ref.numpy(), bins=np.array(prof.edges))
    assert list(prof.counts) == expected.tolist() and sum(prof.counts) == prof.num_params
    assert prof.below == prof.above == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_hutchinson_diagonal_on_a_dense_matrix():
    g = torch.Generator().manual_seed(3)
    n = 30
    B = torch.randn(n, n, generator=g, dtype=torch.float64)
    A = B + B.T
    m = 4000
    est, samples = hutchinson_diagonal(lambda v: A @ v, n, num_matvecs=m, seed=7, blocks=[10, 20], dtype=A.dtype)
    # The same vectors drawn again: the estimate is the mean of z ⊙ Az over them, to round-off.
    gen = generator(7)
    zs = torch.stack([rademacher(n, gen, dtype=A.dtype) for _ in range(m)])
    products = zs * (zs @ A)
    torch.testing.assert_close(est, products.mean(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(samples[:, 0], products[:, :10].sum(1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(samples[:, 1], products[:, 10:].sum(1), rtol=1e-12, atol=1e-12)
    # Its sum is Hutchinson's trace estimate with the same seed.
    assert float(est.sum()) == pytest.approx(
        hutchinson(lambda v: A @ v, n, num_matvecs=m, seed=7, dtype=A.dtype).value, rel=1e-10
    )
    # Unbiased, with the closed-form variance Σ_{j≠i} A_ij² per entry: every entry within 5 standard errors.
    var = (A**2).sum(1) - A.diagonal() ** 2
    z = (est - A.diagonal()) / (var / m).sqrt()
    assert float(z.abs().max()) < 5
    with pytest.raises(ValueError, match="blocks"):
        hutchinson_diagonal(lambda v: A @ v, n, num_matvecs=2, blocks=[10, 10])


def test_auto_falls_back_to_hutchinson_where_the_exact_diagonal_is_unsupported():
    model = gelu_mlp()
    x, y = classification_data(19, (4,), classes=3, seed=2)
    probe = Probe((x, y), F.cross_entropy, batch_size=8)
    H = dense_hessian(model, x, y, F.cross_entropy)
    m = 400
    prof = diagonal_profile(model, probe, DiagonalProfileOptions(num_hvps=m, bins=7), seed=5)
    assert prof.method == "hutchinson" and prof.num_hvps == m
    if prof.fallback is not None:  # without BackPACK the reason is the missing extra instead
        assert "GELU" in prof.fallback or "BackPACK" in prof.fallback
    assert prof.scalars()["exact"] == 0.0 and "Hutchinson" in prof.definitions()["exact"]
    # Exactly the estimate from the same Rademacher vectors applied to the dense Hessian.
    gen = generator(5)
    zs = torch.stack([rademacher(H.shape[0], gen, dtype=H.dtype) for _ in range(m)])
    products = zs * (zs @ H)
    est = products.mean(0)
    assert prof.value == pytest.approx(float(est.sum()), rel=1e-10, abs=1e-12)
    assert prof.largest == pytest.approx(float(est.max()), rel=1e-10)
    assert prof.smallest == pytest.approx(float(est.min()), rel=1e-10)
    est_blocks, sample_blocks = blocks(model, est), blocks(model, products.T)
    for label, trace, err in zip(prof.layers, prof.layer_traces, prof.layer_stderrs):
        assert trace == pytest.approx(float(est_blocks[label].sum()), rel=1e-10, abs=1e-12)
        per_vector = sample_blocks[label].sum(0)
        assert err == pytest.approx(float(per_vector.std() / m**0.5), rel=1e-8)
        # ... and within 4 of its standard errors of the true block trace.
        true = float(blocks(model, H.diagonal())[label].sum())
        assert abs(trace - true) < 4 * err
    assert abs(prof.value - float(H.trace())) < 4 * prof.stderr
    assert sum(prof.counts) == prof.num_params == H.shape[0]
    # The exact method refuses this network clearly.
    pytest.importorskip("backpack")
    with pytest.raises(ExactUnsupportedError, match="GELU"):
        diagonal_profile(model, probe, DiagonalProfileOptions(method="exact"))


def test_a_fixed_histogram_range_counts_entries_outside_in_the_end_bins():
    model = gelu_mlp(1)
    x, y = classification_data(12, (4,), classes=3, seed=4)
    probe = Probe((x, y), F.cross_entropy)
    H = dense_hessian(model, x, y, F.cross_entropy)
    gen = generator(0)
    zs = torch.stack([rademacher(H.shape[0], gen, dtype=H.dtype) for _ in range(6)])
    est = (zs * (zs @ H)).mean(0).numpy()  # the estimate the profile bins (seed 0, 6 vectors)
    ordered = np.sort(est)  # bounds halfway between entries: no entry within round-off of an edge
    lo, hi = 0.5 * (ordered[10] + ordered[11]), 0.5 * (ordered[40] + ordered[41])
    prof = diagonal_profile(
        model, probe, DiagonalProfileOptions(method="hutchinson", num_hvps=6, bins=4, histogram_range=(lo, hi))
    )
    assert prof.edges == pytest.approx(tuple(np.linspace(lo, hi, 5)), rel=1e-12)
    assert (prof.below, prof.above) == (11, len(est) - 41)
    expected, _ = np.histogram(np.clip(est, lo, hi), bins=np.array(prof.edges))
    assert list(prof.counts) == expected.tolist() and sum(prof.counts) == prof.num_params
    assert "entries outside counted in the end bins" in prof.definitions()["histogram"]


def test_options_are_validated_once_naming_the_option():
    for bad, error, name in [
        ({"method": "hutch++"}, ValueError, "method"),
        ({"num_hvps": 1}, ValueError, "num_hvps"),
        ({"num_hvps": 2.0}, TypeError, "num_hvps"),
        ({"bins": 0}, ValueError, "bins"),
        ({"bins": True}, TypeError, "bins"),
        ({"histogram_range": (1.0, 0.0)}, ValueError, "histogram_range"),
        ({"histogram_range": (0.0, float("inf"))}, ValueError, "histogram_range"),
        ({"histogram_range": ("a", 1.0)}, TypeError, "histogram_range"),
        ({"histogram_range": 3.0}, TypeError, "histogram_range"),
    ]:
        with pytest.raises(error, match=name):
            DiagonalProfileOptions(**bad)
    assert DiagonalProfileOptions(histogram_range=[-1, 2]).histogram_range == (-1.0, 2.0)
    probe = Probe(classification_data(4, (4,)), F.cross_entropy)
    with pytest.raises(TypeError, match="options"):
        diagonal_profile(gelu_mlp(), probe, {"bins": 3})


def test_the_result_is_compact_and_defines_every_scalar_and_curve():
    model = gelu_mlp()
    probe = Probe(classification_data(10, (4,), classes=3), F.cross_entropy)
    prof = diagonal_profile(model, probe, DiagonalProfileOptions(method="hutchinson", num_hvps=4, bins=5))
    assert prof.kind == "diagonal_profile"
    scalars, curves, definitions = prof.scalars(), prof.curves(), prof.definitions()
    assert set(scalars) | set(curves) == set(definitions)
    assert {"trace/0", "trace/2", "negative_fraction/0", "trace_stderr/2"} <= set(scalars)
    assert scalars["mean"] == pytest.approx(prof.value / prof.num_params)
    bars = curves["layer_traces"]
    assert bars.kind == "bars" and bars.labels == ("0", "2") and bars.y.tolist() == list(prof.layer_traces)
    hist = curves["histogram"]
    assert hist.kind == "histogram" and hist.y.sum() == prof.num_params
    assert hist.x == pytest.approx(0.5 * (np.array(prof.edges[1:]) + np.array(prof.edges[:-1])))
    # Nothing parameter-sized: a handful of numbers per layer and per bin.
    assert not any(isinstance(v, torch.Tensor) for v in vars(prof).values())


def test_measure_handler_validates_its_arguments():
    model = gelu_mlp()
    probe = Probe(classification_data(6, (4,)), F.cross_entropy)
    with pytest.raises(TypeError, match="measure"):
        Measure(model, probe, "diagonal_profile")
    with pytest.raises(TypeError, match="unknown keywords.*bins"):
        Measure(model, probe, diagonal_profile, bins=3)
    with pytest.raises(TypeError, match="name"):
        Measure(model, probe, lambda m, p, o: None, None)

    def no_seed(model, probe, options):
        return None

    with pytest.raises(TypeError, match="seed: no_seed takes no seed="):
        Measure(model, probe, no_seed, None, seed=3)
    with pytest.raises(TypeError, match="params"):
        Measure(model, probe, no_seed, None, params=["0.weight"])
    options = DiagonalProfileOptions(bins=3, num_hvps=3)
    handler = Measure(model, probe, diagonal_profile, options, name="diag", seed=4)
    # The handler's seed reaches the function (GELU: the seeded Hutchinson estimate).
    seeded = diagonal_profile(model, probe, options, seed=4).value
    assert handler.compute(Engine(lambda e, b: None)).value == seeded != diagonal_profile(model, probe, options).value
    assert handler.name == "diag" and handler.bins == 3 and handler.method == "auto"
    with pytest.raises(AttributeError, match="read-only"):
        handler.bins = 4


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attach=None) -> Engine:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
    trainer = create_supervised_trainer(model, optimizer, F.cross_entropy)
    if attach is not None:
        attach(trainer)
    loader = [(x[i : i + 8], y[i : i + 8]) for i in range(0, len(x), 8)]
    trainer.run(loader, max_epochs=3)
    return trainer


def test_streamed_through_the_generic_handler_log_handler_and_report(tmp_path):
    x, y = classification_data(24, (4,), classes=3, seed=6)
    probe = Probe((x, y), F.cross_entropy)
    model, twin = gelu_mlp(2), gelu_mlp(2)
    options = DiagonalProfileOptions(method="auto", num_hvps=8, bins=6)
    handler = Measure(model, probe, diagonal_profile, options)
    tb = TensorboardLogger(log_dir=str(tmp_path / "run"))

    def attach(trainer: Engine) -> None:
        handler.attach(trainer, Events.EPOCH_COMPLETED)
        tb.attach(trainer, log_handler=LandscapeLogHandler(), event_name=Events.EPOCH_COMPLETED)

    trainer = _train(model, x, y, attach)
    tb.close()
    _train(twin, x, y)
    # Watching never changes training.
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), twin.state_dict().values()))
    assert handler.name == "diagonal_profile" and len(handler.history) == 3
    assert all(isinstance(f.result, DiagonalProfile) and f.kind == "diagonal_profile" for f in handler.history)
    assert trainer.state.metrics["landscape/diagonal_profile/value"] == handler.history[-1].result.value

    (event_file,) = (tmp_path / "run").glob("events.out.tfevents.*")
    acc = EventAccumulator(str(event_file), size_guidance={"scalars": 0, "images": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    steps = [3, 6, 9]  # the trainer's iteration at each epoch's end
    for key in ("value", "max", "negative_fraction", "exact", "trace/0", "negative_fraction/2"):
        events = acc.Scalars(f"landscape/diagonal_profile/{key}")
        assert [e.step for e in events] == steps, key
        want = [f.scalars[key] for f in handler.history]
        assert [e.value for e in events] == pytest.approx(want, rel=1e-6), key
    images = acc.Images("landscape/diagonal_profile/layer_traces")  # the layers × firings heatmap
    assert [i.step for i in images] == steps and images[-1].encoded_image_string[:4] == b"\x89PNG"
    assert "landscape/diagonal_profile/layer_negative_fractions" in acc.Tags()["images"]
    hist = acc.Histograms("landscape/diagonal_profile/histogram")
    assert [h.step for h in hist] == steps and hist[-1].histogram_value.num == 4 * 6 + 6 + 6 * 3 + 3

    run = load_run(tmp_path / "run")
    assert run.kind_of("diagonal_profile") == "diagonal_profile"
    definitions = run.definitions("diagonal_profile")
    assert definitions == handler.history[-1].definitions
    assert "Hutchinson" in definitions["value"] or "exact" in definitions["value"]
    (step, curves), *_ = run.curves("diagonal_profile")[::-1]  # the last firing's curves, from the data text
    assert step == 9 and curves["layer_traces"].labels == ("0", "2")
    assert curves["layer_traces"].y.tolist() == pytest.approx(list(handler.history[-1].result.layer_traces), rel=1e-7)

    out = report.write_report([tmp_path / "run"], tmp_path / "report", num_resamples=20)
    summary = Path(out.summary).read_text()
    for key in ("value", "negative_fraction", "trace/0", "exact"):
        rows = [
            r for r in summary.splitlines() if r.startswith(f"| run | diagonal_profile | diagonal_profile | {key} |")
        ]
        assert len(rows) == 1 and rows[0].endswith(f"| {definitions[key]} |"), key
    # Its curves are drawn by kind, with no figure of the report written for this measure.
    for key in ("layer_traces", "layer_negative_fractions", "histogram"):
        path = out.figures[f"diagonal_profile_{key}"]
        assert path.read_bytes()[:4] == b"\x89PNG" and f"({path.name})" in summary, key
