"""Jackknife error bars: equal to the formula on dense leave-one-chunk-out Hessians, and calibrated."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

import ignite_landscape as il
from ignite_landscape.measures import jackknife
from tests.helpers import classification_data, dense_hessian, mlp

# The mlp has 5·7 + 7 + 7·3 + 3 = 66 parameters: Hutch++ with 3 × 66 products spans the whole space (exact).
EXACT_HUTCHPP = 198


def test_eigenvalue_and_trace_stderr_equal_the_jackknife_of_dense_hessians():
    model = mlp()
    x, y = classification_data(40, (5,), seed=2)
    probe = il.Probe((x, y), F.cross_entropy, batch_size=16)
    k = 5
    res = il.hessian_eigenvalues(model, probe, k=3, tol=1e-10, uncertainty="jackknife", jackknife_chunks=k)
    tr = il.hessian_trace(model, probe, num_hvps=EXACT_HUTCHPP, uncertainty="jackknife", jackknife_chunks=k)
    # By hand: the 5 probes without one chunk of 8 samples, their dense Hessians, the jackknife formula.
    tops, traces = [], []
    for j in range(k):
        keep = torch.cat([torch.arange(0, 8 * j), torch.arange(8 * (j + 1), 40)])
        h = dense_hessian(model, x[keep], y[keep], F.cross_entropy)
        tops.append(torch.linalg.eigvalsh(h).flip(0)[:3])
        traces.append(torch.trace(h))
    tops, traces = torch.stack(tops), torch.stack(traces)
    expected = ((k - 1) / k * ((tops - tops.mean(0)) ** 2).sum(0)).sqrt()
    torch.testing.assert_close(res.stderr, expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(
        tr.stderr, float(((k - 1) / k * ((traces - traces.mean()) ** 2).sum()).sqrt()), rtol=1e-8, atol=0
    )
    full = dense_hessian(model, x, y, F.cross_entropy)
    torch.testing.assert_close(res.eigenvalues, torch.linalg.eigvalsh(full).flip(0)[:3], rtol=1e-9, atol=0)
    assert res.eigenvectors is None and res.uncertainty_hvps > 0
    assert res.scalars()["lambda_max_stderr"] == float(res.stderr[0])
    assert tr.uncertainty == "jackknife" and tr.estimator_stderr is not None and tr.uncertainty_hvps > 0
    torch.testing.assert_close(tr.value, float(torch.trace(full)), rtol=1e-9, atol=0)


def test_jackknife_intervals_are_calibrated_over_independent_probes():
    # 20 disjoint probes of 60 samples from one larger data set: the spread of λ_max and of the trace
    # across probes must match the standard error each probe reports about itself (within a factor 2).
    # Hutchinson with one seed: every probe and subset uses the same vectors, so both sides see the same
    # estimator and differ by the data only.
    model = mlp(seed=4)
    x, y = classification_data(20 * 60, (5,), seed=11)
    tops, top_errs, traces, trace_errs = [], [], [], []
    for i in range(20):
        probe = il.Probe((x[i * 60 : (i + 1) * 60], y[i * 60 : (i + 1) * 60]), F.cross_entropy)
        ev = il.hessian_eigenvalues(model, probe, k=1, tol=1e-8, uncertainty="jackknife")
        tr = il.hessian_trace(model, probe, method="hutchinson", num_hvps=8, uncertainty="jackknife")
        tops.append(ev.lambda_max)
        top_errs.append(float(ev.stderr[0]))
        traces.append(tr.value)
        trace_errs.append(tr.stderr)
    for values, errs in ((tops, top_errs), (traces, trace_errs)):
        spread = float(torch.tensor(values, dtype=torch.float64).std())
        mean_err = sum(errs) / len(errs)
        assert 0.5 <= spread / mean_err <= 2.0, (spread, mean_err)


def test_bad_options_and_the_small_probe_warning(caplog):
    model = mlp()
    probe = il.Probe(classification_data(12, (5,)), F.cross_entropy)
    with pytest.raises(ValueError, match="uncertainty"):
        il.hessian_eigenvalues(model, probe, k=1, uncertainty="bootstrap")
    with pytest.raises(ValueError, match="jackknife_chunks"):
        il.hessian_trace(model, probe, uncertainty="jackknife", jackknife_chunks=13)
    with pytest.raises(ValueError, match="jackknife_chunks"):
        il.hessian_trace(model, probe, uncertainty="jackknife", jackknife_chunks=1)
    jackknife._warned.discard("lambda_max")
    with caplog.at_level(logging.WARNING, logger="ignite_landscape.measures.jackknife"):
        res = il.hessian_eigenvalues(model, probe, k=1, uncertainty="jackknife", jackknife_chunks=12)
        il.hessian_eigenvalues(model, probe, k=1, uncertainty="jackknife", jackknife_chunks=12)
    wide = float(res.stderr[0]) > 0.5 * res.lambda_max
    messages = [r.getMessage() for r in caplog.records if "probe too small" in r.getMessage()]
    assert len(messages) == (1 if wide else 0)  # said once, and only when the interval is wide


def test_sharpness_jackknife_equals_the_formula_over_leave_one_out_probes():
    model = mlp()
    x, y = classification_data(30, (5,), seed=5)
    probe = il.Probe((x, y), F.cross_entropy, batch_size=7)
    for method in ("sam", "average"):
        res = il.sharpness(model, probe, rho=0.05, method=method, uncertainty="jackknife", jackknife_chunks=3)
        values = torch.tensor(
            [
                il.sharpness(model, il.Probe((x[keep], y[keep]), F.cross_entropy), rho=0.05, method=method).value
                for keep in (
                    torch.arange(10, 30),
                    torch.cat([torch.arange(10), torch.arange(20, 30)]),
                    torch.arange(20),
                )
            ],
            dtype=torch.float64,
        )
        expected = float((2 / 3 * ((values - values.mean()) ** 2).sum()).sqrt())
        torch.testing.assert_close(res.stderr, expected, rtol=1e-9, atol=0)
        assert res.value == il.sharpness(model, probe, rho=0.05, method=method).value
        assert res.uncertainty == "jackknife" and (res.estimator_stderr is not None) == (method == "average")
    with pytest.raises(ValueError, match="m-sharpness"):
        il.sharpness(model, probe, m=5, uncertainty="jackknife")
    with pytest.raises(ValueError, match="jackknife_chunks"):
        il.Sharpness(model, probe, uncertainty="jackknife", jackknife_chunks=31)
