"""The report command: honest statistics, event-file reading, handlers by kind, every figure, summary.md, exit codes."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import scipy.stats

from ignite_landscape import report
from ignite_landscape.report import bootstrap_ci, correlate, kendall_tau, pearson
from ignite_landscape.report.statistics import format_number

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("n", [3, 7, 40])
def test_pearson_and_kendall_match_scipy(n: int) -> None:
    rng = np.random.default_rng(n)
    x = rng.normal(size=n)
    y = 0.5 * x + rng.normal(size=n)
    assert pearson(x, y) == pytest.approx(scipy.stats.pearsonr(x, y).statistic, abs=1e-12)
    assert kendall_tau(x, y) == pytest.approx(scipy.stats.kendalltau(x, y).statistic, abs=1e-12)


def test_kendall_tau_b_with_ties_matches_scipy() -> None:
    x = np.array([1, 1, 2, 3, 3, 3, 4, 5, 5, 6], dtype=float)
    y = np.array([2, 1, 1, 4, 3, 3, 5, 5, 7, 6], dtype=float)
    assert kendall_tau(x, y) == pytest.approx(scipy.stats.kendalltau(x, y, variant="b").statistic, abs=1e-12)


def test_constant_variable_gives_nan_not_a_number() -> None:
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))
    assert math.isnan(kendall_tau([1, 2, 3], [5, 5, 5]))
    c = correlate([1, 1, 1, 1], [1, 2, 3, 4], metric="m", scope="s")
    assert not c.estimable and "constant" in c.note


def test_two_points_cannot_be_estimated() -> None:
    c = correlate([0.1, 0.3], [0.9, 0.2], metric="λ_max", scope="across runs (final values)", unit="runs")
    assert not c.estimable and c.n == 2
    assert math.isnan(c.pearson) and math.isnan(c.kendall)
    assert "cannot be estimated" in c.describe() and "±1" in c.describe()
    # Non-finite points are dropped before counting.
    c = correlate([0.1, 0.3, float("nan")], [0.9, 0.2, 0.5], metric="m", scope="s")
    assert c.n == 2 and not c.estimable


def test_bootstrap_is_seeded_and_covers_the_truth() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=60)
    y = 0.6 * x + 0.8 * rng.normal(size=60)  # population correlation 0.6
    a = bootstrap_ci(x, y, pearson, num_resamples=500, seed=3)
    b = bootstrap_ci(x, y, pearson, num_resamples=500, seed=3)
    c = bootstrap_ci(x, y, pearson, num_resamples=500, seed=4)
    assert a == b and a != c
    assert a[0] < pearson(x, y) < a[1]
    assert a[0] < 0.6 < a[1]
    # The vectorised path (pearson, kendall_tau) equals the generic one (any callable), ties included.
    xt, yt = np.round(x, 0), np.round(y, 0)
    for stat in (pearson, kendall_tau):
        fast = bootstrap_ci(xt, yt, stat, num_resamples=300, seed=5)
        slow = bootstrap_ci(xt, yt, lambda u, v, f=stat: f(u, v), num_resamples=300, seed=5)
        assert fast == pytest.approx(slow, abs=1e-12)
    # The global numpy stream is not touched.
    state = np.random.get_state()[1].copy()
    bootstrap_ci(x, y, kendall_tau, num_resamples=50, seed=0)
    assert np.array_equal(np.random.get_state()[1], state)


def test_bootstrap_interval_coverage_is_near_nominal() -> None:
    """Over 200 independent data sets, the 90% interval of r covers the true ρ = 0.5 about 90% of the time."""
    rng = np.random.default_rng(1)
    rho, covered, trials = 0.5, 0, 200
    for t in range(trials):
        x = rng.normal(size=50)
        y = rho * x + math.sqrt(1 - rho**2) * rng.normal(size=50)
        lo, hi = bootstrap_ci(x, y, pearson, num_resamples=300, level=0.9, seed=t)
        covered += lo <= rho <= hi
    assert 0.8 <= covered / trials <= 0.97


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="x and y"):
        pearson([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci([1, 2, 3], [1, 2, 3], pearson, level=1.5)


# ------------------------------------------------------------------------------------------ bad input


def test_directory_without_event_files_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no events here")
    code = report.main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert "no TensorBoard event files" in err and str(tmp_path / "empty") in err
    assert report.main(["report", str(tmp_path / "missing"), "--out", str(tmp_path / "out")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_module_command_line_exit_code(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ignite_landscape", "report", str(tmp_path), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "no TensorBoard event files" in proc.stderr


# ------------------------------------------------------------------------------------- on real runs

ALL_FIGURES = {
    "training_curves",
    "spectrum",
    "metric_comparison",
    "connectivity",
    "slice1d",
    "contour",
    "surface",
    "trajectory",
    "correlation",
    "summary_table",
    "overview",
}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two short real digits runs (different step sizes) with every handler attached."""
    from examples import digits

    root = tmp_path_factory.mktemp("runs")
    for lr in ("0.05", "0.2"):
        argv = ["--epochs", "3", "--probe-samples", "32", "--slice-steps", "5", "--top-k", "2", "--trace-hvps", "6"]
        argv += ["--density-steps", "4", "--lr", lr, "--every", "1", "--output-dir", str(root), "--run-name", f"lr{lr}"]
        digits.main(argv)
    return root


def _scalars_direct(run_dir: Path, tag: str) -> dict[int, float]:
    """Read one scalar tag with TensorBoard's own accumulator (independent of report.load_run)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars(tag)}


@pytest.fixture(scope="module")
def two_run_report(two_runs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``python -m ignite_landscape report <folder of the two runs> --out DIR`` (through ``main``)."""
    out = tmp_path_factory.mktemp("report")
    assert report.main(["report", str(two_runs), "--out", str(out), "--bootstrap", "300", "--seed", "0"]) == 0
    return out


def test_report_on_two_runs_writes_every_figure(two_run_report: Path) -> None:
    written = {p.stem for p in two_run_report.glob("*.png")}
    assert written == ALL_FIGURES
    for png in two_run_report.glob("*.png"):
        data = png.read_bytes()
        assert data[:8] == PNG_SIGNATURE, png
        assert len(data) > 5000, png
        image = matplotlib.image.imread(png)
        assert image.shape[0] > 200 and image.shape[1] > 300, png
    summary = (two_run_report / "summary.md").read_text()
    assert "lr0.05" in summary and "lr0.2" in summary
    # Two runs: no correlation across runs, said in words rather than r = ±1.
    across = [line for line in summary.splitlines() if "across runs (final values)" in line]
    assert across and all("cannot be estimated" in line for line in across)
    assert any(line.startswith("| λ_max |") and "cannot be estimated: 2 runs" in line for line in across)
    assert "With 2 runs, no correlation *across runs* can be estimated" in summary
    # The definitions the run logged are stated (from the handlers' records, or older runs' table).
    assert "probe: 32 fixed" in summary and "ρ = 0.05" in summary


def test_report_numbers_match_the_event_files(two_runs: Path, two_run_report: Path) -> None:
    runs_dirs = report.find_runs([two_runs])
    assert runs_dirs == [two_runs / "lr0.05", two_runs / "lr0.2"]
    runs = [report.load_run(p) for p in runs_dirs]
    lam = [_scalars_direct(r, "landscape/hessian/lambda_max") for r in runs_dirs]
    acc = [_scalars_direct(r, "test/accuracy") for r in runs_dirs]
    # Summary table: the last logged values.
    for row, lam_r, acc_r in zip(report.summary_rows(runs), lam, acc):
        assert row["lambda_max"] == pytest.approx(lam_r[max(lam_r)], rel=1e-6)
        assert row["test_accuracy"] == pytest.approx(acc_r[max(acc_r)], rel=1e-6)
        assert row["threshold"] == pytest.approx(2.0 / float(row["run"].removeprefix("lr")), rel=1e-6)
    # Pooled correlation over every (epoch, run) pair = scipy on the same 6 pairs.
    x = [lam_r[s] for lam_r, acc_r in zip(lam, acc) for s in sorted(lam_r) if s in acc_r]
    y = [acc_r[s] for lam_r, acc_r in zip(lam, acc) for s in sorted(lam_r) if s in acc_r]
    corrs = report.correlations(runs, num_resamples=300, seed=0)
    pooled = next(c for c in corrs if c.metric == "λ_max" and c.scope.startswith("pooled"))
    assert pooled.n == len(x) == 6
    assert pooled.pearson == pytest.approx(scipy.stats.pearsonr(x, y).statistic, abs=1e-9)
    assert pooled.kendall == pytest.approx(scipy.stats.kendalltau(x, y).statistic, abs=1e-9)
    assert pooled.pearson_ci[0] <= pooled.pearson <= pooled.pearson_ci[1]
    row = (
        f"| λ_max | pooled (epoch, run) pairs | 6 | {format_number(pooled.pearson, 3)} | "
        f"[{format_number(pooled.pearson_ci[0], 3)}, {format_number(pooled.pearson_ci[1], 3)}] |"
    )
    assert row in (two_run_report / "summary.md").read_text()
    across = next(c for c in corrs if c.metric == "λ_max" and c.scope.startswith("across"))
    assert across.n == 2 and not across.estimable


def _synthetic_run(name: str, steps: list[int], lam: list[float], acc: list[float]) -> report.RunData:
    s = np.array(steps)
    return report.RunData(
        name=name,
        path=Path(name),
        scalars={
            "landscape/hessian/lambda_max": report.Series(s, np.array(lam, dtype=float)),
            "test/accuracy": report.Series(s, np.array(acc, dtype=float)),
        },
    )


def test_correlation_across_three_runs_uses_final_values() -> None:
    runs = [
        _synthetic_run("a", [1, 2, 3], [1.0, 2.0, 3.0], [0.5, 0.6, 0.7]),
        _synthetic_run("b", [1, 2, 3], [1.5, 2.5, 5.0], [0.5, 0.55, 0.6]),
        _synthetic_run("c", [2, 4], [0.5, 1.0], [0.7, 0.9]),
    ]
    corrs = report.correlations(runs, num_resamples=100)
    across = next(c for c in corrs if c.scope.startswith("across"))
    assert across.n == 3 and across.estimable
    assert across.pearson == pytest.approx(scipy.stats.pearsonr([3.0, 5.0, 1.0], [0.7, 0.6, 0.9]).statistic)
    within_c = next(c for c in corrs if c.scope == "within c")
    assert within_c.n == 2 and not within_c.estimable  # two epochs: refused, not r = 1
    pooled = next(c for c in corrs if c.scope.startswith("pooled"))
    assert pooled.n == 8
    # Only two of them: across-run correlation refused.
    two = report.correlations(runs[:2], num_resamples=100)
    assert not next(c for c in two if c.scope.startswith("across")).estimable


def test_landscape_at_iterations_pairs_with_accuracy_at_epochs(tmp_path: Path) -> None:
    # The log handler writes at the trainer's iteration; an evaluator usually logs at epochs. The report
    # pairs them through the epoch the log handler records, keeping each epoch's last firing.
    import torch
    from ignite.engine import Engine, Events
    from ignite.handlers import TensorboardLogger

    import ignite_landscape as il

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    x, y = torch.randn(12, 3), torch.arange(12) % 2
    probe = il.Probe((x, y), torch.nn.functional.cross_entropy)
    trainer = Engine(lambda engine, batch: None)
    every = Events.ITERATION_COMPLETED(every=2)
    il.HessianSpectrum(model, probe, k=1).attach(trainer, event=every)
    tb = TensorboardLogger(log_dir=str(tmp_path / "run"))
    tb.attach(trainer, log_handler=il.LandscapeLogHandler(figures=False), event_name=every)
    accuracy = {1: 0.5, 2: 0.6, 3: 0.8, 4: 0.7}

    @trainer.on(Events.EPOCH_COMPLETED)
    def log_accuracy(engine: Engine) -> None:
        tb.writer.add_scalar("test/accuracy", accuracy[engine.state.epoch], engine.state.epoch)

    trainer.run([0, 1, 2, 3], max_epochs=4)  # firings at iterations 2, 4, …, 16: two per epoch
    tb.close()
    run = report.load_run(tmp_path / "run")
    assert run.scalars["landscape/epoch"].values.tolist() == [1, 1, 2, 2, 3, 3, 4, 4]
    lam = run.scalars["landscape/hessian/lambda_max"]
    x_pts, y_pts = report.paired(run, lam, run.scalars["test/accuracy"])
    assert y_pts.tolist() == pytest.approx([0.5, 0.6, 0.8, 0.7], rel=1e-6)
    assert x_pts.tolist() == [lam.at(4), lam.at(8), lam.at(12), lam.at(16)]
    within = [c for c in report.correlations([run], num_resamples=50) if c.metric == "λ_max"]
    assert within and within[0].n == 4


# ------------------------------------------------------------------------------ handlers found by kind

LR = 0.1
# What the event-file contract (ignite_landscape.tensorboard) writes per handler: its result kind and the
# definition of each quantity. The report must take everything it says about a handler from here.
RECORDS = {
    "curv": {
        "kind": "spectrum",
        "definitions": {
            "lambda_max": "largest eigenvalue of the Hessian of the mean probe loss (Lanczos, exact HVPs)",
            "stability_threshold": f"2/η with η = {LR}, the step size of the optimizer's group 0",
            "probe": "48 fixed samples, model in eval mode",
        },
    },
    "plane": {
        "kind": "slice2d",
        "definitions": {"slice": "loss on a 5 × 5 grid over two filter-normalized directions"},
    },
    "sam05": {"kind": "sharpness", "definitions": {"value": "max over ‖ε‖₂ ≤ ρ = 0.05 of L(θ+ε) − L(θ), one SAM step"}},
    "sam10": {"kind": "sharpness", "definitions": {"value": "max over ‖ε‖₂ ≤ ρ = 0.1 of L(θ+ε) − L(θ), one SAM step"}},
}


def _named_training(log_dir: Path, contract_writer: bool) -> tuple[dict[str, object], dict[str, list[float]]]:
    """Three epochs of a tiny classifier with user-named handlers, logged to ``log_dir``.

    ``contract_writer``: write the event file with a plain SummaryWriter in the contract's format (records,
    curve data, scalars) instead of LandscapeLogHandler. Returns the final results and each scalar's values.
    """
    import torch
    import torch.nn.functional as F
    from ignite.engine import Engine, Events
    from ignite.handlers import TensorboardLogger

    import ignite_landscape as il
    from ignite_landscape.results import Curve

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    x, y = torch.randn(48, 4), torch.randint(0, 3, (48,))
    probe = il.Probe((x, y), F.cross_entropy)
    opt = torch.optim.SGD(model.parameters(), lr=LR)

    def step(engine: Engine, batch: object) -> None:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    trainer = Engine(step)
    il.HessianSpectrum(model, probe, k=2, optimizer=opt, name="curv").attach(trainer, Events.EPOCH_COMPLETED)
    il.LossSlice(model, probe, dims=2, steps=5, name="plane").attach(trainer, Events.EPOCH_COMPLETED)
    il.Sharpness(model, probe, rho=0.05, name="sam05").attach(trainer, Events.EPOCH_COMPLETED)
    il.Sharpness(model, probe, rho=0.1, name="sam10").attach(trainer, Events.EPOCH_COMPLETED)
    logged: dict[str, list[float]] = {}
    tb = TensorboardLogger(log_dir=str(log_dir))
    if not contract_writer:
        tb.attach(trainer, log_handler=il.LandscapeLogHandler(mesh=False), event_name=Events.EPOCH_COMPLETED)

    @trainer.on(Events.EPOCH_COMPLETED)
    def write(engine: Engine) -> None:
        it = engine.state.iteration
        tb.writer.add_scalar("test/accuracy", float(probe.evaluate(model).accuracy), it)
        for tag, value in engine.state.metrics.items():
            if tag.startswith("landscape/"):
                logged.setdefault(tag, []).append(float(value))
                if contract_writer:
                    tb.writer.add_scalar(tag, float(value), it)
        if contract_writer:
            for name, record in RECORDS.items():
                tb.writer.add_text(f"landscape/{name}/record", json.dumps(record), it)
            sl = engine.state.landscape["plane"]
            grid = Curve("grid", x=sl.coords[0], y=sl.coords[1], z=sl.loss)
            tb.writer.add_text("landscape/plane/data", json.dumps({"slice": grid.to_plain()}), it)

    trainer.run([0], max_epochs=3)
    tb.close()
    return dict(trainer.state.landscape), logged


def _assert_named_report(run_dir: Path, out: Path, final: dict[str, object], logged: dict[str, list[float]]) -> str:
    rep = report.write_report([run_dir], out, num_resamples=50)
    assert {"spectrum", "contour", "surface", "metric_comparison", "overview"} <= set(rep.figures)
    (run,) = rep.runs
    assert run.handlers("spectrum") == ["curv"] and run.handlers("slice2d") == ["plane"]
    assert run.handlers("sharpness") == ["sam05", "sam10"]
    # The spectrum panel of "curv" with its 2/η line, labelled from its definition.
    (panel,) = report.spectrum_panels(rep.runs)
    assert panel.name == "curv" and [label for label, _, _ in panel.eigenvalues] == ["λ_1", "λ_2"]
    assert panel.threshold is not None and panel.threshold.values == pytest.approx([2 / LR] * 3, rel=1e-6)
    assert "η = 0.1" in panel.threshold_label
    # The contour is the last 2D slice's loss grid.
    ((name, history),) = run.curve_history("slice2d", "slice")
    assert name == "plane" and len(history) == 3
    assert history[-1][1].z == pytest.approx(final["plane"].loss.numpy(), rel=1e-7)
    # Summary rows: the first sharpness handler in name order; both appear in the metric figure's series.
    (row,) = rep.rows
    assert row["lambda_max"] == pytest.approx(logged["landscape/curv/lambda_max"][-1], rel=1e-6)
    assert row["threshold"] == pytest.approx(2 / LR, rel=1e-6)
    assert row["sharpness"] == pytest.approx(logged["landscape/sam05/value"][-1], rel=1e-6)
    assert logged["landscape/sam10/value"][-1] != pytest.approx(row["sharpness"], rel=1e-3)
    assert [n for n, _ in report.METRICS[[m.key for m in report.METRICS].index("sharpness")].all(run)] == [
        "sam05",
        "sam10",
    ]
    summary = rep.summary.read_text()
    assert f"| λ_max | {format_number(row['lambda_max'])} |" in summary
    assert f"| sharpness | {format_number(row['sharpness'])} |" in summary
    for name in ("curv", "plane", "sam05", "sam10"):
        assert f"| {name} |" in summary
    sam10 = f"| sam10 | sharpness | value | {format_number(logged['landscape/sam10/value'][-1])} |"
    assert sam10 in summary
    return summary


def test_named_handlers_are_reported_by_kind(tmp_path: Path) -> None:
    final, logged = _named_training(tmp_path / "run", contract_writer=True)
    summary = _assert_named_report(tmp_path / "run", tmp_path / "out", final, logged)
    # Definitions come from the records: the sharpness sentence, the probe, the slice.
    assert "ρ = 0.05 of L(θ+ε) − L(θ), one SAM step" in summary
    assert "probe: 48 fixed samples, model in eval mode" in summary
    assert "slice: loss on a 5 × 5 grid" in summary


def test_named_handlers_logged_by_landscape_log_handler_are_reported_in_full(tmp_path: Path) -> None:
    # The case end to end: user-named handlers, LandscapeLogHandler, then the report.
    final, logged = _named_training(tmp_path / "run", contract_writer=False)
    summary = _assert_named_report(tmp_path / "run", tmp_path / "out", final, logged)
    # Definitions written by the log handler itself (no definitions table): probe, ρ, slice normalisation.
    assert "probe: 48 fixed samples, model in eval mode" in summary
    assert "ρ = 0.05 of L(θ+ε) − L(θ)" in summary and "ρ = 0.1 of L(θ+ε) − L(θ)" in summary
    assert "filter-normalized against the current weights" in summary
    assert "| curv | spectrum | stability_threshold | 20 | 2/η with η = 0.1" in summary


def test_runs_written_before_records_are_read_by_default_names(tmp_path: Path) -> None:
    # The raw-data format and definitions table of older runs: still reported, by the handlers' default names.
    s = np.array([1, 2])
    old_slice = {"dims": 2, "coords": [[-1, 0, 1], [-1, 0, 1]], "loss": [[3, 2, 3], [2, 1, 2], [3, 2, 3]]}
    old_density = {"grid": [-1.0, 0.0, 1.0, 2.0], "density": [0.1, 0.5, 0.3, 0.1], "sigma": 0.1}
    run = report.RunData(
        "old",
        tmp_path,
        scalars={
            "landscape/hessian/lambda_max": report.Series(s, np.array([3.0, 4.0])),
            "landscape/hessian/stability_threshold": report.Series(s, np.array([20.0, 20.0])),
            "landscape/sharpness/value": report.Series(s, np.array([0.1, 0.2])),
        },
        texts={
            "landscape/slice2d/data": [(2, "```json\n" + json.dumps(old_slice) + "\n```")],
            "landscape/density/data": [(2, json.dumps(old_density))],
            "landscape/definitions": [(0, "| definition | value |\n|---|---|\n| probe samples | 64 |")],
        },
    )
    assert run.kind_of("hessian") == "spectrum" and run.kind_of("slice2d") == "slice2d"
    (row,) = report.summary_rows([run])
    assert (row["lambda_max"], row["threshold"], row["sharpness"]) == (4.0, 20.0, 0.2)
    ((_, history),) = run.curve_history("slice2d", "slice")
    assert history[-1][1].kind == "grid" and history[-1][1].z[1, 1] == 1.0
    assert run.curve_history("density", "density")[0][1][0][1].y.tolist() == [0.1, 0.5, 0.3, 0.1]
    assert report.figure_contour([run], tmp_path / "c.png") == tmp_path / "c.png"
    assert report.figure_spectrum([run], tmp_path / "s.png") == tmp_path / "s.png"
    from ignite_landscape.report.metrics import probe_note

    assert probe_note(run) == "probe: 64 fixed training samples"
    # A user-named handler of an older run is found from its data's shape; a record wins over the name.
    run.texts["landscape/mine/data"] = [(2, json.dumps(old_slice))]
    run.texts["landscape/sharpness/record"] = [(1, '{"kind": "batch_sharpness", "definitions": {}}')]
    fresh = report.RunData(run.name, run.path, scalars=run.scalars, texts=run.texts)
    assert fresh.handlers("slice2d") == ["mine", "slice2d"] and fresh.handlers("sharpness") == []


@pytest.mark.parametrize(
    ("definition", "label"),
    [
        ("2/η with η = 0.1, the step size of the optimizer's group 0", "2/η with η = 0.1"),
        ("(2+2β)/η with η = 0.05, β = 0.9: the step size and momentum of the optimizer's group 0",
         "(2+2β)/η with η = 0.05, β = 0.9"),
        ("(2+2β₁)/((1−β₁)η) with η = 0.001, β₁ = 0.9 (Adam, optimizer's group 0)",
         "(2+2β₁)/((1−β₁)η) with η = 0.001, β₁ = 0.9"),
        ("", "stability threshold"),
    ],
)  # fmt: skip
def test_threshold_legend_label_is_the_formula_of_the_handlers_definition(definition: str, label: str) -> None:
    from ignite_landscape.report.metrics import threshold_label

    record = json.dumps({"kind": "spectrum", "definitions": {"stability_threshold": definition} if definition else {}})
    run = report.RunData(
        "r",
        Path("r"),
        scalars={"landscape/curv/stability_threshold": report.Series(np.array([1]), np.array([20.0]))},
        texts={"landscape/curv/record": [(1, record)]},
    )
    assert threshold_label(run, "curv") == label
