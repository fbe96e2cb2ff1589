"""The Ignite shell: real trainers on load_digits with every landscape handler attached.

Shared runs (module fixtures) keep the file fast: one 4-epoch run with all handlers and a
TensorBoard logger, one plain 4-epoch run, and a run resumed from an epoch-2 checkpoint.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events, create_supervised_trainer
from ignite.handlers import Checkpoint, DiskSaver
from torch import nn

import ignite_landscape as il
from ignite_landscape.handlers.base import from_plain, to_plain
from ignite_landscape.handlers.spectrum import stability_threshold
from ignite_landscape.probe import ProbeSession
from tests.helpers import (
    assert_same_tree,
    classification_data,
    dense_hessian,
    digits_cnn,
    digits_tensors,
    full_batch_trainer,
    later_instruments,
    mlp,
)

SEED = 0
N_TRAIN = 640  # 10 iterations of 64 per epoch
PROBE_SAMPLES = 128


def digits_subset() -> tuple[torch.Tensor, torch.Tensor]:
    x, y, _, _ = digits_tensors()
    return x[:N_TRAIN], y[:N_TRAIN]


def all_handlers(model: nn.Module, probe: il.Probe, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Every handler, small budgets. Keys are the default names."""
    hs = [
        il.HessianSpectrum(model, probe, k=3, optimizer=optimizer),
        il.HessianTrace(model, probe, num_hvps=9),
        il.HessianDensity(model, probe, num_steps=8, num_runs=2, grid_size=128),
        il.Sharpness(model, probe, rho=0.05),
        il.LossSlice(model, probe, dims=1, steps=9),
        il.LossSlice(model, probe, dims=2, steps=7),
        il.ModeConnectivity(model, probe, steps=5),
        il.GradientNoiseScale(model, probe),
    ]
    return {h.name: h for h in hs}


class EpochSampler(torch.utils.data.Sampler):
    """Shuffles with a permutation that depends only on the epoch (drawn lazily, after EPOCH_STARTED)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.epoch = 0

    def __iter__(self):
        yield from torch.randperm(self.n, generator=torch.Generator().manual_seed(SEED + self.epoch)).tolist()

    def __len__(self) -> int:
        return self.n


class Run:
    """A digits trainer whose data order depends only on the epoch (so a resumed run sees the same batches)."""

    def __init__(self, *, with_handlers: bool = True, make_handlers: Callable | None = None) -> None:
        torch.manual_seed(SEED)
        x, y = digits_subset()
        self.sampler = EpochSampler(len(y))
        self.loader = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(x, y), batch_size=64, sampler=self.sampler
        )
        self.model = digits_cnn()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9)
        self.trainer = create_supervised_trainer(self.model, self.optimizer, nn.CrossEntropyLoss())
        self.losses: list[float] = []
        self.snapshots: dict[int, dict[str, Any]] = {}
        self.metrics: dict[int, dict[str, float]] = {}

        @self.trainer.on(Events.EPOCH_STARTED)
        def set_epoch(engine: Engine) -> None:
            self.sampler.epoch = engine.state.epoch

        @self.trainer.on(Events.ITERATION_COMPLETED)
        def record_loss(engine: Engine) -> None:
            self.losses.append(engine.state.output)

        self.probe = il.Probe((x, y), nn.CrossEntropyLoss(), num_samples=PROBE_SAMPLES)
        self.handlers: dict[str, Any] = {}
        if with_handlers:
            self.handlers = (make_handlers or all_handlers)(self.model, self.probe, self.optimizer)
            for h in self.handlers.values():
                h.attach(self.trainer, Events.EPOCH_COMPLETED)

        @self.trainer.on(Events.EPOCH_COMPLETED)
        def snapshot(engine: Engine) -> None:
            self.snapshots[engine.state.epoch] = training_state(self.model, self.optimizer)
            self.metrics[engine.state.epoch] = {
                k: v for k, v in engine.state.metrics.items() if k.startswith("landscape/")
            }

    def run(self, epochs: int) -> Run:
        self.trainer.run(self.loader, max_epochs=epochs)
        return self


def training_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    return {
        "params": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "optimizer": {
            i: {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in st.items()}
            for i, st in optimizer.state_dict()["state"].items()
        },
    }


def assert_same_state(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["params"].keys() == b["params"].keys()
    for k in a["params"]:
        assert torch.equal(a["params"][k], b["params"][k]), k
    assert a["optimizer"].keys() == b["optimizer"].keys()
    for i in a["optimizer"]:
        for k, v in a["optimizer"][i].items():
            w = b["optimizer"][i][k]
            assert torch.equal(v, w) if isinstance(v, torch.Tensor) else v == w, (i, k)


@pytest.fixture(scope="module")
def plain_run() -> Run:
    return Run(with_handlers=False).run(4)


_SHARED: dict[str, Any] = {}


def shared_full_run(tmp_path_factory) -> tuple[Run, Path]:
    """All handlers every epoch plus the TensorBoard log handler (the writer Ignite picks: tensorboardX).

    Built once per session and shared with tests/tensorboard/test_tensorboard.py, which reads its event file.
    """
    if "full" not in _SHARED:
        from ignite.handlers import TensorboardLogger

        logdir = tmp_path_factory.mktemp("tb_full")
        run = Run()
        tb = TensorboardLogger(log_dir=str(logdir))
        tb.attach(run.trainer, log_handler=il.LandscapeLogHandler(), event_name=Events.EPOCH_COMPLETED)
        run.writer_module = type(tb.writer).__module__
        run.run(4)
        tb.close()
        _SHARED["full"] = (run, logdir)
    return _SHARED["full"]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> tuple[Run, Path]:
    return shared_full_run(tmp_path_factory)


# -- non-invasiveness -------------------------------------------------------------------------------
def test_training_is_bit_identical_with_every_handler_attached(full_run, plain_run):
    run, _ = full_run
    assert run.losses == plain_run.losses  # exact floats, every iteration
    for epoch in (1, 2, 3, 4):
        assert_same_state(run.snapshots[epoch], plain_run.snapshots[epoch])
    # The handlers did run and recorded finite values.
    assert all(len(h.history) == 4 for h in run.handlers.values())
    assert all(not f.failed for h in run.handlers.values() for f in h.history)
    assert math.isfinite(run.metrics[4]["landscape/hessian/lambda_max"])


def test_results_and_fixed_metric_keys(full_run):
    run, _ = full_run
    state = run.trainer.state
    assert sorted(state.landscape) == sorted(
        ["hessian", "trace", "density", "sharpness", "slice1d", "slice2d", "connectivity", "noise_scale"]
    )
    metrics = run.metrics[4]
    for key in (
        "landscape/hessian/lambda_max",
        "landscape/hessian/lambda_1",
        "landscape/hessian/lambda_2",
        "landscape/hessian/lambda_3",
        "landscape/sharpness/value",
        "landscape/trace/value",
        "landscape/connectivity/loss_barrier",
        "landscape/noise_scale/b_simple",
        "landscape/slice1d/center_loss",
        "landscape/slice2d/center_loss",
        "landscape/density/negative_mass",
    ):
        assert key in metrics, key
    for name in state.landscape:
        assert metrics[f"landscape/{name}/seconds"] > 0
    # Edge of stability with heavy-ball momentum: threshold (2 + 2β)/η, ratio λ_max·η/2.
    lam = metrics["landscape/hessian/lambda_max"]
    assert metrics["landscape/hessian/stability_threshold"] == pytest.approx((2 + 2 * 0.9) / 0.05)
    assert metrics["landscape/hessian/lambda_max_lr_over_2"] == pytest.approx(lam * 0.05 / 2)
    assert lam == metrics["landscape/hessian/lambda_1"]
    # The history holds one firing per epoch, with the epoch and iteration it fired at.
    h = run.handlers["hessian"]
    assert [(f.epoch, f.iteration) for f in h.history] == [(e, 10 * e) for e in (1, 2, 3, 4)]
    # Slices were taken along the same directions at every epoch: the centre is the training loss
    # on the probe at that epoch, and every slice has the same coordinates.
    s1 = run.handlers["slice1d"].history
    assert all(torch.equal(f.result.coords[0], s1[0].result.coords[0]) for f in s1)
    # Connectivity against the initial weights: the α=0 end is the same initial loss at every epoch.
    c = run.handlers["connectivity"].history
    assert len({f.scalars["loss_a"] for f in c}) == 1


def test_spectrum_matches_the_dense_hessian_and_the_sgd_threshold():
    model = mlp(seed=3)
    x, y = classification_data(48, (5,))
    probe = il.Probe((x, y), F.cross_entropy)
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.5, nesterov=True)
    trainer = Engine(lambda e, b: None)
    handler = il.HessianSpectrum(model, probe, k=2, tol=1e-10, optimizer=opt)
    handler.attach(trainer)
    trainer.run([0], max_epochs=1)
    evals = torch.linalg.eigvalsh(dense_hessian(model, x, y, F.cross_entropy)).flip(0)
    m = trainer.state.metrics
    assert m["landscape/hessian/lambda_1"] == pytest.approx(float(evals[0]), rel=1e-8)
    assert m["landscape/hessian/lambda_2"] == pytest.approx(float(evals[1]), rel=1e-8)
    # Nesterov: (2 + 2β)/(η(1 + 2β)).
    assert m["landscape/hessian/stability_threshold"] == pytest.approx((2 + 1.0) / (0.2 * 2.0))
    assert stability_threshold(opt, {"lr": 0.1, "momentum": 0.0}) == pytest.approx(20.0)


@pytest.mark.parametrize("amsgrad", [False, True])
def test_adam_preconditioned_sharpness_matches_generalized_eigenproblem(amsgrad):
    model = mlp(seed=1)
    x, y = classification_data(40, (5,))
    probe = il.Probe((x, y), F.cross_entropy)
    opt = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.9, 0.99), eps=1e-6, amsgrad=amsgrad)

    trainer = full_batch_trainer(model, opt, x, y)
    handler = il.HessianSpectrum(model, probe, k=1, tol=1e-10, optimizer=opt)
    handler.attach(trainer, Events.ITERATION_COMPLETED(every=3))
    trainer.run([0] * 3, max_epochs=1)
    m = trainer.state.metrics

    # Ground truth: P = (1 − β₁ᵗ)(√v̂ + ε) from the optimizer state (Cohen et al. 2022), then the
    # generalized problem H u = λ P u.
    names = [n for n, _ in model.named_parameters()]
    ps = []
    for p in model.parameters():
        st = opt.state[p]
        t = float(st["step"])
        v = (st["max_exp_avg_sq"] if amsgrad else st["exp_avg_sq"]) / (1 - 0.99**t)
        ps.append(((1 - 0.9**t) * (v.sqrt() + 1e-6)).reshape(-1))
    P = torch.cat(ps)
    H = dense_hessian(model, x, y, F.cross_entropy, names)
    expected = scipy.linalg.eigh(H.numpy(), torch.diag(P).numpy(), eigvals_only=True).max()
    assert m["landscape/hessian/preconditioned_lambda_max"] == pytest.approx(float(expected), rel=1e-7)
    assert m["landscape/hessian/preconditioned_threshold"] == pytest.approx((2 + 1.8) / (0.1 * 0.01))
    assert "stability_threshold" not in {k.split("/")[-1] for k in m}  # 2/η is not Adam's threshold
    # The plain top eigenvalue is still there and differs from the preconditioned one.
    assert m["landscape/hessian/lambda_max"] == pytest.approx(float(torch.linalg.eigvalsh(H)[-1]), rel=1e-7)


def test_preconditioned_is_nan_before_adams_first_step():
    model = mlp()
    x, y = classification_data(16, (5,))
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    trainer = Engine(lambda e, b: None)
    il.HessianSpectrum(model, il.Probe((x, y), F.cross_entropy), k=1, optimizer=opt).attach(trainer)
    trainer.run([0], max_epochs=1)
    assert math.isnan(trainer.state.metrics["landscape/hessian/preconditioned_lambda_max"])
    assert math.isfinite(trainer.state.metrics["landscape/hessian/lambda_max"])


def test_warm_start_gives_the_same_eigenvalues():
    torch.manual_seed(0)
    model = mlp(seed=2, hidden=24)
    x, y = classification_data(64, (5,))
    probe = il.Probe((x, y), F.cross_entropy)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    trainer = full_batch_trainer(model, opt, x, y)
    warm = il.HessianSpectrum(model, probe, k=3, tol=1e-8, name="warm")
    cold = il.HessianSpectrum(model, probe, k=3, tol=1e-8, name="cold", warm_start=False)
    warm.attach(trainer)
    cold.attach(trainer)
    trainer.run([0, 1], max_epochs=6)
    for fw, fc in zip(warm.history, cold.history):
        torch.testing.assert_close(fw.result.eigenvalues, fc.result.eigenvalues, rtol=1e-6, atol=0)
        assert fw.result.converged.all() and fc.result.converged.all()
    # The first firing has nothing to warm-start from. What later ones cost is measured, not promised:
    # benchmarks/bench_tracking.py (a warm start refines k old vectors but must still explore from random ones).
    assert warm.history[0].result.num_hvps == cold.history[0].result.num_hvps


# -- firing semantics -------------------------------------------------------------------------------
def test_fires_once_when_two_events_coincide_and_again_on_a_new_run():
    model = nn.Linear(3, 2)
    probe = il.Probe((torch.randn(8, 3), torch.randint(0, 2, (8,))), F.cross_entropy)
    trainer = Engine(lambda e, b: None)
    handler = il.HessianTrace(model, probe, num_hvps=6)
    handler.attach(trainer, Events.EPOCH_COMPLETED(every=2) | Events.COMPLETED)
    trainer.run([0, 1], max_epochs=4)
    assert [(f.epoch, f.iteration) for f in handler.history] == [(2, 4), (4, 8)]
    # An evaluator-like engine restarts at iteration 0 on every run: each run is a new moment.
    evaluator = Engine(lambda e, b: None)
    h2 = il.Sharpness(model, probe)
    h2.attach(evaluator, Events.COMPLETED)
    evaluator.run([0])
    evaluator.run([0])
    assert len(h2.history) == 2


def test_every_shorthand_and_iteration_events():
    model = nn.Linear(3, 2)
    probe = il.Probe((torch.randn(8, 3), torch.randint(0, 2, (8,))), F.cross_entropy)
    trainer = Engine(lambda e, b: None)
    h1 = il.Sharpness(model, probe, name="every3")
    h1.attach(trainer, Events.ITERATION_COMPLETED, every=3)
    h2 = il.Sharpness(model, probe, name="once")
    h2.attach(trainer, Events.ITERATION_COMPLETED(once=[2, 5]))
    trainer.run([0, 1, 2], max_epochs=3)
    assert [f.iteration for f in h1.history] == [3, 6, 9]
    assert [f.iteration for f in h2.history] == [2, 5]


# -- checkpoint and resume --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory) -> Run:
    ckpt_dir = tmp_path_factory.mktemp("ckpt")
    first = Run()
    to_save = {"model": first.model, "optimizer": first.optimizer, "trainer": first.trainer, **first.handlers}
    first.trainer.add_event_handler(
        Events.EPOCH_COMPLETED(once=2), Checkpoint(to_save, DiskSaver(str(ckpt_dir), require_empty=False))
    )
    first.run(2)
    (path,) = Path(ckpt_dir).glob("*.pt")

    second = Run()  # fresh model, optimizer, handlers (attached before loading: the usual script order)
    to_load = {"model": second.model, "optimizer": second.optimizer, "trainer": second.trainer, **second.handlers}
    Checkpoint.load_objects(to_load, str(path))  # torch.load(weights_only=True) inside
    second.run(4)
    return second


def test_resume_from_checkpoint_continues_with_same_directions_and_values(full_run, resumed_run):
    full, _ = full_run
    assert [f.epoch for f in resumed_run.handlers["hessian"].history] == [1, 2, 3, 4]
    for name in ("slice1d", "slice2d"):
        assert_same_tree(to_plain(full.handlers[name].directions), to_plain(resumed_run.handlers[name].directions))
    for name, handler in full.handlers.items():
        other = resumed_run.handlers[name]
        for a, b in zip(handler.history[2:], other.history[2:]):
            assert (a.epoch, a.iteration) == (b.epoch, b.iteration)
            assert {k: v for k, v in a.scalars.items() if k != "seconds"} == {
                k: v for k, v in b.scalars.items() if k != "seconds"
            }, name
            assert_same_tree(to_plain(a.result), to_plain(b.result), name)
    assert_same_state(full.snapshots[4], resumed_run.snapshots[4])


def test_state_dict_survives_weights_only_load(tmp_path, full_run):
    run, _ = full_run
    for name, handler in run.handlers.items():
        path = tmp_path / f"{name}.pt"
        torch.save(handler.state_dict(), path)
        state = torch.load(path, weights_only=True)
        fresh = type(handler)(run.model, run.probe, **({"dims": handler.dims} if name.startswith("slice") else {}))
        fresh.load_state_dict(state)
        assert len(fresh.history) == len(handler.history)
        assert type(fresh.history[-1].result) is type(handler.history[-1].result)
        assert_same_tree(to_plain(fresh.history[-1].result), to_plain(handler.history[-1].result), name)
        # A resumed history shares its definitions as the original does: one dict per distinct content.
        assert [f.definitions for f in fresh.history] == [f.definitions for f in handler.history], name
        assert len({id(f.definitions) for f in fresh.history}) == len({id(f.definitions) for f in handler.history})
    with pytest.raises(ValueError, match="belongs to a"):
        il.HessianTrace(run.model, run.probe).load_state_dict(run.handlers["hessian"].state_dict())


def test_from_plain_refuses_foreign_classes():
    with pytest.raises(ValueError, match="refusing"):
        from_plain({"__dataclass__": "os:PathLike", "fields": {}})


# -- failure isolation ------------------------------------------------------------------------------
def failing_hvp(fail_at: int) -> Callable:
    """An HVP that scribbles over the model's weights and raises on its ``fail_at``-th call."""
    original = ProbeSession.hvp
    calls = {"n": 0}

    def hvp(self: ProbeSession, v: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] % fail_at == 0:
            with torch.no_grad():
                for p in self.model.parameters():
                    p.add_(1.0)
            raise RuntimeError("injected failure inside the probe")
        return original(self, v)

    return hvp


def test_failure_mid_probe_leaves_training_bit_identical(monkeypatch, caplog, plain_run):
    monkeypatch.setattr(ProbeSession, "hvp", failing_hvp(fail_at=3))

    def make(model, probe, optimizer):
        return {
            "hessian": il.HessianSpectrum(model, probe, k=2, optimizer=optimizer),
            "sharpness": il.Sharpness(model, probe),
        }

    with caplog.at_level(logging.WARNING, logger="ignite_landscape"):
        run = Run(make_handlers=make).run(2)
    assert run.trainer.state.epoch == 2  # training went on
    for epoch in (1, 2):
        assert_same_state(run.snapshots[epoch], plain_run.snapshots[epoch])
        assert math.isnan(run.metrics[epoch]["landscape/hessian/lambda_max"])
        assert math.isfinite(run.metrics[epoch]["landscape/sharpness/value"])
    assert run.losses == plain_run.losses[: len(run.losses)]
    hist = run.handlers["hessian"].history
    assert all(f.failed and "injected failure" in f.error for f in hist)
    assert run.trainer.state.landscape["hessian"] is None
    assert any("injected failure" in r.getMessage() and "hessian" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("guard", [True, False])  # without the handler's guard the probe session restores
def test_on_error_raise_stops_training_with_weights_restored(monkeypatch, guard):
    monkeypatch.setattr(ProbeSession, "hvp", failing_hvp(fail_at=2))
    model = mlp()
    x, y = classification_data(16, (5,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = Engine(lambda e, b: None)
    il.HessianSpectrum(model, il.Probe((x, y), F.cross_entropy), k=1, on_error="raise", guard=guard).attach(trainer)
    with pytest.raises(RuntimeError, match="injected failure"):
        trainer.run([0], max_epochs=1)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_nan_loss_is_recorded_as_nan_with_a_warning(caplog):
    model = nn.Linear(3, 2)
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    probe = il.Probe((x, y), lambda out, t: F.cross_entropy(out, t) * float("nan"))
    trainer = Engine(lambda e, b: None)
    il.HessianSpectrum(model, probe, k=1).attach(trainer)
    with caplog.at_level(logging.WARNING, logger="ignite_landscape"), pytest.warns(RuntimeWarning):
        trainer.run([0], max_epochs=1)
    assert math.isnan(trainer.state.metrics["landscape/hessian/lambda_max"])
    assert any("non-finite" in r.getMessage() for r in caplog.records)


# -- mode connectivity references -------------------------------------------------------------------
def test_connectivity_references(tmp_path):
    model = mlp(seed=4)
    x, y = classification_data(32, (5,))
    probe = il.Probe((x, y), F.cross_entropy)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save({"model": init, "epoch": 0}, tmp_path / "ckpt.pt")

    trainer = full_batch_trainer(model, opt, x, y)
    hs = [
        il.ModeConnectivity(model, probe, steps=5, name="init"),
        il.ModeConnectivity(model, probe, "previous", steps=5, name="previous"),
        il.ModeConnectivity(model, probe, init, steps=5, name="given"),
        il.ModeConnectivity(model, probe, tmp_path / "ckpt.pt", steps=5, name="path"),
    ]
    for h in hs:
        h.attach(trainer)
    losses = []
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: losses.append(probe.evaluate(model).loss))
    trainer.run([0], max_epochs=3)
    by_name = {h.name: h.history for h in hs}
    for name in ("init", "given", "path"):
        assert [f.scalars["loss_b"] for f in by_name[name]] == pytest.approx(losses, rel=1e-12)
        assert len({f.scalars["loss_a"] for f in by_name[name]}) == 1
    prev = by_name["previous"]
    # α=0 is the weights at the previous firing: epoch 2 starts where epoch 1 ended.
    assert prev[1].scalars["loss_a"] == pytest.approx(losses[0], rel=1e-12)
    assert prev[2].scalars["loss_a"] == pytest.approx(losses[1], rel=1e-12)


# -- bad input ---------------------------------------------------------------------------------------
@pytest.fixture
def small():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    probe = il.Probe((torch.randn(8, 3), torch.randint(0, 2, (8,))), F.cross_entropy)
    return model, probe


def test_probe_on_another_device_type_is_rejected(small):
    model, _ = small
    meta_probe = il.Probe((torch.randn(8, 3), torch.randint(0, 2, (8,))), F.cross_entropy, device="meta")
    with pytest.raises(ValueError, match="probe.*meta"):
        il.HessianSpectrum(model, meta_probe)


def test_every_zero_is_rejected(small):
    model, probe = small
    trainer = Engine(lambda e, b: None)
    with pytest.raises(ValueError, match="every"):
        il.Sharpness(model, probe).attach(trainer, every=0)
    with pytest.raises(ValueError, match="every"):
        il.Sharpness(model, probe).attach(trainer, Events.EPOCH_COMPLETED(every=0))
    with pytest.raises(ValueError, match="filtered"):
        il.Sharpness(model, probe).attach(trainer, Events.EPOCH_COMPLETED(every=2), every=3)


BAD_CONSTRUCTIONS = [
    (ValueError, "params", lambda m, p: il.HessianTrace(m, p, params="conv9")),
    (TypeError, "kk", lambda m, p: il.HessianSpectrum(m, p, kk=3)),
    (ValueError, "which", lambda m, p: il.HessianSpectrum(m, p, which="biggest")),
    (ValueError, "method", lambda m, p: il.Sharpness(m, p, method="worst")),
    (ValueError, "reference", lambda m, p: il.ModeConnectivity(m, p, reference="initial")),
    (ValueError, "directions", lambda m, p: il.LossSlice(m, p, directions="pca")),
    (ValueError, "name", lambda m, p: il.Sharpness(m, p, name="")),
    (ValueError, "name", lambda m, p: il.Sharpness(m, p, name="a/b")),
    (ValueError, "on_error", lambda m, p: il.Sharpness(m, p, on_error="ignore")),
]


@pytest.mark.parametrize("error, match, build", BAD_CONSTRUCTIONS)
def test_unknown_names_and_choices_are_rejected_at_construction(small, error, match, build):
    model, probe = small
    with pytest.raises(error, match=match):
        build(model, probe)


@pytest.mark.parametrize(
    "error, match, event",
    [(ValueError, "not a valid event", "epoch_finished"), (TypeError, "event", 5)],
)
def test_unknown_events_are_rejected_at_attach(small, error, match, event):
    model, probe = small
    with pytest.raises(error, match=match):
        il.Sharpness(model, probe).attach(Engine(lambda e, b: None), event)


def test_attach_needs_an_engine(small):
    model, probe = small
    with pytest.raises(TypeError, match="engine"):
        il.Sharpness(model, probe).attach(object())


def test_model_without_trainable_parameters_is_rejected(small):
    model, probe = small
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="trainable"):
        il.HessianSpectrum(model, probe)
    with pytest.raises(TypeError, match="model"):
        il.HessianSpectrum("not a model", probe)
    with pytest.raises(TypeError, match="probe"):
        il.HessianSpectrum(nn.Linear(3, 2), (torch.randn(4, 3), torch.zeros(4)))


@pytest.mark.parametrize("dims", [0, 3])
def test_loss_slice_dims_must_be_one_or_two(small, dims):
    model, probe = small
    with pytest.raises(ValueError, match="dims"):
        il.LossSlice(model, probe, dims=dims)


def test_bad_options_are_rejected(small):
    model, probe = small
    with pytest.raises(ValueError, match="k must"):
        il.HessianSpectrum(model, probe, k=100)
    with pytest.raises(ValueError, match="span"):
        il.LossSlice(model, probe, span=(1.0, -1.0))
    with pytest.raises(ValueError, match="directions"):
        il.LossSlice(model, probe, dims=2, directions=il.random_directions(model, 1))
    other = nn.Linear(5, 5)
    with pytest.raises(ValueError):
        il.LossSlice(model, probe, dims=1, directions=il.random_directions(other, 1))
    with pytest.raises(ValueError, match="optimizer"):
        il.HessianSpectrum(model, probe, optimizer=torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1))
    with pytest.raises(ValueError, match="Adam"):
        il.HessianSpectrum(model, probe, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), preconditioned=True)
    with pytest.raises(ValueError, match="reference"):
        il.ModeConnectivity(model, probe, reference={"0.weight": torch.zeros(4, 3)})


def test_progress_bar_runs_without_disturbing_results(small):
    model, probe = small
    trainer = Engine(lambda e, b: None)
    loud = il.HessianTrace(model, probe, num_hvps=6, progress=True, progress_after=0, name="loud")
    quiet = il.HessianTrace(model, probe, num_hvps=6, progress=False, name="quiet")
    loud.attach(trainer)
    quiet.attach(trainer)
    trainer.run([0], max_epochs=1)
    assert loud.history[0].scalars["value"] == quiet.history[0].scalars["value"]


def test_eigenvector_slice_follows_the_top_eigenvector():
    model = mlp(seed=5)
    x, y = classification_data(40, (5,))
    probe = il.Probe((x, y), F.cross_entropy)
    trainer = Engine(lambda e, b: None)
    handler = il.LossSlice(model, probe, dims=1, steps=5, span=(-0.01, 0.01), directions="eigenvector")
    handler.attach(trainer)
    trainer.run([0], max_epochs=1)
    (direction,) = handler.directions
    flat = torch.cat([direction[n].reshape(-1) for n, _ in model.named_parameters()])
    assert float(flat.norm()) == pytest.approx(1.0, rel=1e-9)  # unit eigenvector: coordinates are distances
    lam = float(torch.linalg.eigvalsh(dense_hessian(model, x, y, F.cross_entropy))[-1])
    res = trainer.state.landscape["slice1d"]
    t, loss = res.coords[0], res.loss
    # Second difference along the top eigenvector = λ_max (up to O(t²) from third derivatives).
    curvature = float((loss[4] - 2 * loss[2] + loss[0]) / (t[4] - t[2]) ** 2)
    assert curvature == pytest.approx(lam, rel=1e-3)


def test_every_scalar_a_handler_logs_has_a_definition():
    # The report and TensorBoard print these sentences next to the numbers: no scalar without one, and every
    # handler says what it measured on (the probe). The sentences say what a number means, not its value, so
    # they stay the same from firing to firing and the history holds one copy of them (the spectrum's used to
    # name the firing's HVP count: 1.7 KB more a firing).
    torch.manual_seed(0)
    model = mlp()
    x, y = classification_data(40, (5,))
    probe = il.Probe((x, y), F.cross_entropy)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    trainer = full_batch_trainer(model, optimizer, x, y)
    spectrum = il.HessianSpectrum(model, probe, k=2, optimizer=optimizer, track_eigenspace=True)
    handlers = [
        spectrum,
        il.HessianTrace(model, probe),
        il.HessianDensity(model, probe, num_steps=5),
        il.Sharpness(model, probe),
        il.LossSlice(model, probe, dims=1, steps=5),
        il.ModeConnectivity(model, probe, steps=3),
        il.GradientNoiseScale(model, probe),
        *later_instruments(model, probe, optimizer, spectrum),
    ]
    for h in handlers:
        h.attach(trainer, Events.ITERATION_COMPLETED)
    trainer.run([0] * 4, max_epochs=1)
    for h in handlers:
        firing = h.last
        assert not firing.failed, (h.name, firing.error)
        shared = {}  # one dict per distinct content, whatever the firing
        copies = [
            f.iteration for f in h.history if shared.setdefault(repr(f.definitions), f.definitions) is not f.definitions
        ]
        assert not copies, (h.name, copies)
        # One sentence set per handler; the trajectory's has two: before and after it has enough points for a plane.
        assert len(shared) == (2 if h.name == "trajectory" else 1), (h.name, list(shared))
        missing = [k for k in firing.scalars if k not in firing.definitions]
        assert not missing, (h.name, missing)
        assert firing.definitions["probe"].startswith("40 fixed samples, model in eval mode, objective ")
    threshold = spectrum.last.definitions["stability_threshold"]
    assert "η = 0.1" in threshold and "β = 0.9" in threshold
    assert spectrum.last.scalars["stability_threshold"] == pytest.approx((2 + 2 * 0.9) / 0.1, rel=1e-12)
