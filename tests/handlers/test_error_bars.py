"""Error bars end to end.

Handlers with uncertainty=, the gradient statistics' jackknife against a direct computation, the TensorBoard
margin charts read back from the event file, and the report's bands.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from ignite.handlers import TensorboardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.util import tensor_util

import ignite_landscape as il
from ignite_landscape import report
from ignite_landscape.measures.jackknife import INTERVAL_Z
from ignite_landscape.report.layout import band
from ignite_landscape.report.statistics import format_number
from tests.handlers.test_handlers import Run, assert_same_state
from tests.helpers import classification_data, mlp
from tests.measures.test_gradstats import loop_grads

K = 4


def jackknife(values: list[float]) -> float:
    """The delete-a-group jackknife standard error, written out."""
    k = len(values)
    mean = sum(values) / k
    return math.sqrt((k - 1) / k * sum((v - mean) ** 2 for v in values))


def direct_gsnr(g: torch.Tensor) -> float:
    """Liu et al.'s GSNR of the rows of ``g`` by the textbook formulas (two-pass mean and variance)."""
    mean = g.mean(dim=0)
    var = ((g - mean) ** 2).sum(dim=0) / (g.shape[0] - 1)
    moves = var > 0
    return float((mean[moves] ** 2 / var[moves]).mean())


# ------------------------------------------------------------------------------- gradient statistics


@pytest.mark.parametrize("loss", ["mean", "sum"])
def test_gsnr_and_fisher_trace_stderr_equal_the_jackknife_of_direct_computations(loss):
    model = mlp(seed=3)
    x, y = classification_data(26, (5,), seed=7)
    loss_fn = F.cross_entropy if loss == "mean" else torch.nn.CrossEntropyLoss(reduction="sum")
    probe = il.Probe((x, y), loss_fn, batch_size=10)
    # chunk_size=4 makes per-sample chunks straddle the jackknife's chunk boundaries (7, 7, 6, 6 samples).
    res = il.gradient_statistics(model, probe, chunk_size=4, uncertainty="jackknife", jackknife_chunks=K)
    g = loop_grads(model, x, y, loss)  # (26, P): n·∇ℓ_i, one autograd.grad per sample
    groups = torch.arange(26).tensor_split(K)
    keep = [torch.cat([p for i, p in enumerate(groups) if i != j]) for j in range(K)]
    gsnr_loo = [direct_gsnr(g[idx]) for idx in keep]
    fisher_loo = [float((g[idx] ** 2).sum(dim=1).mean()) for idx in keep]
    assert res.gsnr == pytest.approx(direct_gsnr(g), rel=1e-9)
    assert res.gsnr_stderr == pytest.approx(jackknife(gsnr_loo), rel=1e-8)
    assert res.fisher_trace_stderr == pytest.approx(jackknife(fisher_loo), rel=1e-9)
    assert res.uncertainty == "jackknife"
    lo, hi = res.gsnr_interval
    assert (lo, hi) == pytest.approx((res.gsnr - INTERVAL_Z * res.gsnr_stderr, res.gsnr + INTERVAL_Z * res.gsnr_stderr))
    sc = res.scalars()
    assert sc["fisher_trace_stderr"] == res.fisher_trace_stderr
    assert sc["fisher_trace_lo"] == pytest.approx(res.fisher_trace - INTERVAL_Z * res.fisher_trace_stderr)
    assert sc["gsnr_hi"] == pytest.approx(hi)
    # Without uncertainty nothing changes: the same numbers and no error-bar keys.
    plain = il.gradient_statistics(model, probe, chunk_size=4)
    assert plain.gsnr == res.gsnr and plain.fisher_trace == res.fisher_trace
    assert plain.gsnr_stderr is None and plain.gsnr_interval is None
    assert not [k for k in plain.scalars() if k.endswith(("_stderr", "_lo", "_hi"))]


def test_fisher_trace_stderr_is_the_standard_error_of_chunk_means():
    # For a mean over samples with equal chunks, the jackknife is the standard error of the K chunk means.
    model = mlp(seed=1)
    x, y = classification_data(24, (5,), seed=4)
    probe = il.Probe((x, y), F.cross_entropy)
    res = il.gradient_statistics(model, probe, uncertainty="jackknife", jackknife_chunks=K)
    assert res.sample_norms is not None
    means = (res.sample_norms**2).reshape(K, -1).mean(dim=1)
    assert res.fisher_trace_stderr == pytest.approx(float(means.std() / math.sqrt(K)), rel=1e-9)


# ----------------------------------------------------------------------------------------- handlers


def test_handlers_refuse_bad_uncertainty_options_at_construction():
    model = mlp()
    probe = il.Probe(classification_data(12, (5,)), F.cross_entropy)
    for make in (
        lambda **kw: il.HessianSpectrum(model, probe, k=1, **kw),
        lambda **kw: il.HessianTrace(model, probe, **kw),
        lambda **kw: il.GradientStatistics(model, probe, **kw),
    ):
        with pytest.raises(ValueError, match="uncertainty"):
            make(uncertainty="bootstrap")
        with pytest.raises(ValueError, match="jackknife_chunks"):
            make(uncertainty="jackknife", jackknife_chunks=13)  # more chunks than the 12 samples
        with pytest.raises(ValueError, match="jackknife_chunks"):
            make(uncertainty="jackknife", jackknife_chunks=1)
        with pytest.raises(TypeError, match="jackknife_chunks"):
            make(uncertainty="jackknife", jackknife_chunks=2.5)


def test_spectrum_and_trace_handlers_log_the_measures_error_bars():
    model = mlp(seed=2)
    x, y = classification_data(40, (5,), seed=2)
    probe = il.Probe((x, y), F.cross_entropy)
    trainer = Engine(lambda engine, batch: None)
    spectrum = il.HessianSpectrum(model, probe, k=2, tol=1e-10, uncertainty="jackknife", jackknife_chunks=K)
    trace = il.HessianTrace(model, probe, num_hvps=198, uncertainty="jackknife", jackknife_chunks=K)
    spectrum.attach(trainer)
    trace.attach(trainer)
    trainer.run([0], max_epochs=2)
    ev = il.hessian_eigenvalues(model, probe, k=2, tol=1e-10, uncertainty="jackknife", jackknife_chunks=K)
    tr = il.hessian_trace(model, probe, num_hvps=198, uncertainty="jackknife", jackknife_chunks=K)
    m = trainer.state.metrics
    for i in (1, 2):
        err = float(ev.stderr[i - 1])
        assert m[f"landscape/hessian/lambda_{i}_stderr"] == pytest.approx(err, rel=1e-6)
        assert m[f"landscape/hessian/lambda_{i}_lo"] == pytest.approx(float(ev.eigenvalues[i - 1]) - 2 * err, rel=1e-6)
        assert m[f"landscape/hessian/lambda_{i}_hi"] == pytest.approx(float(ev.eigenvalues[i - 1]) + 2 * err, rel=1e-6)
    assert m["landscape/hessian/lambda_max_stderr"] == m["landscape/hessian/lambda_1_stderr"]
    assert m["landscape/hessian/uncertainty_hvps"] > 0
    assert m["landscape/trace/stderr"] == pytest.approx(tr.stderr, rel=1e-8)
    assert m["landscape/trace/value_lo"] == pytest.approx(tr.value - 2 * tr.stderr, rel=1e-8)
    assert m["landscape/trace/estimator_stderr"] == pytest.approx(tr.estimator_stderr, rel=1e-8, abs=1e-12)
    # The latest result and each history record keep k standard errors (never eigenvectors per firing).
    latest = trainer.state.landscape["hessian"]
    torch.testing.assert_close(latest.stderr, ev.stderr, rtol=1e-6, atol=0)
    lo, hi = latest.interval
    torch.testing.assert_close(hi - lo, 2 * INTERVAL_Z * latest.stderr)
    assert all(f.result.stderr is not None and f.result.eigenvectors is None for f in spectrum.history)
    assert trainer.state.landscape["trace"].interval == pytest.approx(
        (tr.value - 2 * tr.stderr, tr.value + 2 * tr.stderr)
    )


# ---------------------------------------------------------------------- training, TensorBoard, report


def error_bar_handlers(model, probe, optimizer):
    hs = [
        il.HessianSpectrum(model, probe, k=2, optimizer=optimizer, uncertainty="jackknife", jackknife_chunks=3),
        il.HessianTrace(model, probe, num_hvps=6, uncertainty="jackknife", jackknife_chunks=3),
        il.Sharpness(model, probe, uncertainty="jackknife", jackknife_chunks=3),
        il.GradientStatistics(model, probe, uncertainty="jackknife", jackknife_chunks=3),
    ]
    return {h.name: h for h in hs}


@pytest.fixture(scope="module")
def banded_run(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("tb_error_bars")
    run = Run(make_handlers=error_bar_handlers)
    late = il.HessianTrace(run.model, run.probe, num_hvps=6, uncertainty="jackknife", jackknife_chunks=3, name="late")
    late.attach(run.trainer, Events.EPOCH_COMPLETED(every=2))  # first fires after the layout was written
    tb = TensorboardLogger(log_dir=str(logdir))
    tb.attach(run.trainer, log_handler=il.LandscapeLogHandler(), event_name=Events.EPOCH_COMPLETED)
    run.run(2)
    tb.close()
    (event_file,) = Path(logdir).glob("events.out.tfevents.*")
    acc = EventAccumulator(str(event_file), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return run, logdir, acc


def test_training_is_bit_identical_with_error_bars_attached(banded_run):
    run, _, _ = banded_run
    plain = Run(with_handlers=False).run(2)
    assert run.losses == plain.losses
    for epoch in (1, 2):
        assert_same_state(run.snapshots[epoch], plain.snapshots[epoch])
    assert all(not f.failed for h in run.handlers.values() for f in h.history)


def margin_charts(acc: EventAccumulator, index: int) -> dict[str, tuple[str, str, str]]:
    layout = layout_pb2.Layout()
    layout.ParseFromString(tensor_util.make_ndarray(acc.Tensors("custom_scalars__config__")[index].tensor_proto).item())
    return {
        c.title: (c.margin.series[0].value, c.margin.series[0].lower, c.margin.series[0].upper)
        for cat in layout.category
        for c in cat.chart
        if c.HasField("margin")
    }


def test_margin_charts_band_every_quantity_with_an_interval(banded_run):
    run, _, acc = banded_run
    layouts = acc.Tensors("custom_scalars__config__")
    assert len(layouts) == 2  # written once, then again when the late handler brought a new band
    first, last = set(margin_charts(acc, 0).values()), set(margin_charts(acc, -1).values())
    band = {
        (f"landscape/{q}", f"landscape/{q}_lo", f"landscape/{q}_hi")
        for q in (
            "hessian/lambda_1",
            "hessian/lambda_2",
            "trace/value",
            "sharpness/value",
            "gradstats/gsnr",
            "gradstats/fisher_trace",
        )
    }
    late = ("landscape/late/value", "landscape/late/value_lo", "landscape/late/value_hi")
    assert first == band and last == band | {late}
    scalars = set(acc.Tags()["scalars"])
    for value, lo, hi in last:
        assert {value, lo, hi} <= scalars
        # The band is the logged value ± 2 logged standard errors.
        err = value.removesuffix("/value") + "/stderr" if value.endswith("/value") else value + "_stderr"
        for v, low, high, e in zip(acc.Scalars(value), acc.Scalars(lo), acc.Scalars(hi), acc.Scalars(err)):
            assert low.value == pytest.approx(v.value - 2 * e.value, rel=1e-5, abs=1e-7)
            assert high.value == pytest.approx(v.value + 2 * e.value, rel=1e-5, abs=1e-7)


def test_no_margin_chart_without_uncertainty(tmp_path):
    model = mlp()
    probe = il.Probe(classification_data(16, (5,)), F.cross_entropy)
    trainer = Engine(lambda engine, batch: None)
    il.HessianTrace(model, probe, num_hvps=6).attach(trainer)
    il.HessianSpectrum(model, probe, k=1).attach(trainer)
    tb = TensorboardLogger(log_dir=str(tmp_path))
    tb.attach(trainer, log_handler=il.LandscapeLogHandler(), event_name=Events.EPOCH_COMPLETED)
    trainer.run([0], max_epochs=2)
    tb.close()
    (event_file,) = tmp_path.glob("events.out.tfevents.*")
    acc = EventAccumulator(str(event_file), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    assert len(acc.Tensors("custom_scalars__config__")) == 1 and margin_charts(acc, 0) == {}
    assert not [t for t in acc.Tags()["scalars"] if t.endswith(("_lo", "_hi"))]


def test_report_draws_the_bands_and_lists_the_standard_errors(banded_run, tmp_path):
    run, logdir, acc = banded_run
    out = tmp_path / "report"
    assert report.main(["report", str(logdir), "--out", str(out), "--bootstrap", "50"]) == 0
    assert (out / "spectrum.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (out / "summary.md").read_text()
    assert "## Error bars" in summary
    rows = {r[0]: r for r in report.stderr_rows(report.load_run(logdir))}
    for q in ("hessian/lambda_1", "hessian/lambda_2", "trace/value", "sharpness/value", "gradstats/gsnr"):
        tag, value, err, kind = rows[f"landscape/{q}"]
        stderr_tag = tag.removesuffix("/value") + "/stderr" if tag.endswith("/value") else tag + "_stderr"
        assert err == pytest.approx(acc.Scalars(stderr_tag)[-1].value, rel=1e-6)
        assert value == pytest.approx(acc.Scalars(tag)[-1].value, rel=1e-6)
        assert kind == "jackknife"
        line = f"| {logdir.name} | {q} | {format_number(value)} | {format_number(err, 3)} |"
        assert line in summary, line
    assert "landscape/hessian/lambda_max" not in rows  # the same number as λ_1


def test_report_bands_follow_the_stderr_scalars(tmp_path):
    import numpy as np
    from matplotlib.collections import PolyCollection

    steps = np.array([1, 2, 3])
    run = report.RunData(
        name="r",
        path=tmp_path,
        scalars={
            "landscape/hessian/lambda_1": report.Series(steps, np.array([1.0, 2.0, 3.0])),
            "landscape/hessian/lambda_1_stderr": report.Series(steps, np.array([0.1, 0.2, 0.3])),
            "landscape/hessian/lambda_2": report.Series(steps, np.array([0.5, 0.6, 0.7])),
        },
    )
    from matplotlib.figure import Figure

    fig = Figure()
    ax = fig.add_subplot()
    assert band(ax, run.series("landscape/hessian/lambda_1"), run.series("landscape/hessian/lambda_1_stderr"), "C0")
    (poly,) = [c for c in ax.collections if isinstance(c, PolyCollection)]
    ys = poly.get_paths()[0].vertices[:, 1]
    assert ys.min() == pytest.approx(1.0 - 0.2) and ys.max() == pytest.approx(3.0 + 0.6)
    assert not band(ax, run.series("landscape/hessian/lambda_2"), None, "C1")
    assert report.figure_spectrum([run], tmp_path / "spectrum.png") is not None
