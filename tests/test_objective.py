"""The probe objective is ``loss_fn(output_transform(model(X)), y)`` over all probe samples as one batch.

Ground truth everywhere is the one-batch objective itself: its value, its autograd gradient, its dense
float64 Hessian (``torch.autograd.functional.hessian``) and that Hessian's ``eigvalsh``. The probe
computes the same quantities in chunks of 5 rows with an uneven last chunk (23 = 4·5 + 3), and for
token targets in a length-bucketed order, so chunks hold very different numbers of counted targets.
"""

from __future__ import annotations

import functools
import logging
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from ignite_landscape import HessianSpectrum, Probe, hessian_eigenvalues
from ignite_landscape.objective import DecomposedLoss, decompose
from tests.helpers import dense_hessian, mlp

N, CHUNK, C, T, PAD = 23, 5, 3, 6, -1


class Tagger(nn.Module):
    """Token-level logits in torch's CrossEntropy layout ``(N, C, T)`` for inputs ``(N, T, 4)``."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 5)
        self.b = nn.Linear(5, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x))).transpose(1, 2)


class DictTagger(Tagger):
    """The tagger with a dict output, so a loss written for it cannot take made-up predictions."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": super().forward(x)}


def _masked_dict_loss(out: dict[str, torch.Tensor], t: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out["logits"], t, ignore_index=PAD)  # a mean over tokens, not over rows


def _dict_tagger() -> nn.Module:
    torch.manual_seed(0)
    return DictTagger().double()


def _tagger() -> nn.Module:
    torch.manual_seed(0)
    return Tagger().double()


def _tokens() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(4)
    x = torch.randn(N, T, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (N, T), generator=g)
    lengths = torch.randint(1, T + 1, (N,), generator=g)
    pad = torch.arange(T) >= lengths[:, None]
    x[pad] = 0.0
    y[pad] = PAD
    order = torch.argsort(lengths, stable=True)  # length-bucketed: short sequences first
    return x[order], y[order]


def _classes() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return torch.randn(N, 5, generator=g, dtype=torch.float64), torch.randint(0, C, (N,), generator=g)


def _regression() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(6)
    return torch.randn(N, 5, generator=g, dtype=torch.float64), torch.randn(N, C, generator=g, dtype=torch.float64)


def _binary() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(N, 5, generator=g, dtype=torch.float64)
    return x, torch.randint(0, 2, (N, C), generator=g).double()


def _distributions() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(8)
    x = torch.randn(N, 5, generator=g, dtype=torch.float64)
    return x, torch.softmax(torch.randn(N, C, generator=g, dtype=torch.float64), dim=1)


def _counts() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(10)
    return torch.randn(N, 5, generator=g, dtype=torch.float64), torch.randint(0, 4, (N, C), generator=g).double()


def _signs() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _binary()
    return x, 2 * y - 1


def _multilabel_indices() -> tuple[torch.Tensor, torch.Tensor]:
    # Each row: its labels first, then -1 (MultiLabelMarginLoss's end marker): 1 to 3 labels per row.
    g = torch.Generator().manual_seed(11)
    y = torch.full((N, C), -1, dtype=torch.int64)
    for i in range(N):
        labels = torch.randperm(C, generator=g)[: 1 + i % C]
        y[i, : labels.numel()] = labels
    return torch.randn(N, 5, generator=g, dtype=torch.float64), y


W = torch.tensor([0.5, 2.0, 1.25], dtype=torch.float64)
LOG_SOFTMAX = functools.partial(torch.log_softmax, dim=1)

# name: (loss_fn, data, model, output_transform)
CASES = {
    "ce_mean": (nn.CrossEntropyLoss(), _classes, mlp, None),
    "ce_sum": (nn.CrossEntropyLoss(reduction="sum"), _classes, mlp, None),
    "ce_weight": (nn.CrossEntropyLoss(weight=W), _classes, mlp, None),
    "ce_weight_smoothing": (nn.CrossEntropyLoss(weight=W, label_smoothing=0.2), _classes, mlp, None),
    "ce_functional": (F.cross_entropy, _classes, mlp, None),
    "ce_probabilities": (nn.CrossEntropyLoss(weight=W, label_smoothing=0.1), _distributions, mlp, None),
    "tokens_ignore_index": (nn.CrossEntropyLoss(ignore_index=PAD), _tokens, _tagger, None),
    "tokens_weight_smoothing": (
        nn.CrossEntropyLoss(weight=W, ignore_index=PAD, label_smoothing=0.15),
        _tokens,
        _tagger,
        None,
    ),
    "tokens_partial": (functools.partial(F.cross_entropy, ignore_index=PAD), _tokens, _tagger, None),
    "tokens_sum": (nn.CrossEntropyLoss(ignore_index=PAD, reduction="sum"), _tokens, _tagger, None),
    "nll_weight_ignore": (nn.NLLLoss(weight=W, ignore_index=1), _classes, mlp, LOG_SOFTMAX),
    "nll_tokens": (nn.NLLLoss(ignore_index=PAD), _tokens, _tagger, LOG_SOFTMAX),
    "mse_mean": (nn.MSELoss(), _regression, mlp, None),
    "mse_sum": (nn.MSELoss(reduction="sum"), _regression, mlp, None),
    "l1_mean": (nn.L1Loss(), _regression, mlp, None),
    "smooth_l1": (nn.SmoothL1Loss(beta=0.5), _regression, mlp, None),
    "huber_sum": (nn.HuberLoss(delta=0.7, reduction="sum"), _regression, mlp, None),
    "bce_weight": (nn.BCELoss(weight=W), _binary, mlp, torch.sigmoid),
    "bce_logits_weight_pos_weight": (
        nn.BCEWithLogitsLoss(weight=W, pos_weight=torch.tensor([3.0, 0.5, 1.0], dtype=torch.float64)),
        _binary,
        mlp,
        None,
    ),
    "bce_logits_sum": (nn.BCEWithLogitsLoss(reduction="sum"), _binary, mlp, None),
    "poisson_nll": (nn.PoissonNLLLoss(), _counts, mlp, None),
    "soft_margin": (nn.SoftMarginLoss(), _signs, mlp, None),
    "hinge_embedding_sum": (nn.HingeEmbeddingLoss(margin=0.5, reduction="sum"), _signs, mlp, None),
    "multilabel_soft_margin_weight": (nn.MultiLabelSoftMarginLoss(weight=W), _binary, mlp, None),
    "multi_margin_weight": (nn.MultiMarginLoss(p=2, margin=0.8, weight=W), _classes, mlp, None),
    "multilabel_margin": (nn.MultiLabelMarginLoss(), _multilabel_indices, mlp, None),
    "kl_batchmean": (nn.KLDivLoss(reduction="batchmean"), _distributions, mlp, LOG_SOFTMAX),
    "kl_mean": (nn.KLDivLoss(reduction="mean"), _distributions, mlp, LOG_SOFTMAX),
    "kl_sum": (nn.KLDivLoss(reduction="sum"), _distributions, mlp, LOG_SOFTMAX),
    "declared_token_mean": (
        DecomposedLoss(
            lambda out, y: F.cross_entropy(out, y, ignore_index=PAD, reduction="sum"), lambda y: (y != PAD).sum()
        ),
        _tokens,
        _tagger,
        None,
    ),
    "per_row_mean_lambda": (lambda out, y: ((out - y) ** 2).sum(dim=1).mean(), _regression, mlp, None),
}


# torch has no double backward for these two: loss and gradient only (a Hessian cannot be formed).
FIRST_ORDER = {"multi_margin_weight", "multilabel_margin"}


def _one_batch(loss_fn, transform):
    return lambda out, y: loss_fn(out if transform is None else transform(out), y)


@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides the total loss:UserWarning")
@pytest.mark.parametrize("name", list(CASES))
def test_probe_objective_equals_the_one_batch_objective(name):
    loss_fn, data, make_model, transform = CASES[name]
    model = make_model()
    x, y = data()
    probe = Probe((x, y), loss_fn, batch_size=CHUNK, output_transform=transform)
    assert [n for _, _, n in probe.batches()] == [5, 5, 5, 5, 3]
    objective = _one_batch(loss_fn, transform)
    params = list(model.parameters())
    reference = objective(model(x), y)
    g_ref = torch.cat([g.reshape(-1) for g in torch.autograd.grad(reference, params)])
    reference = reference.detach()
    if name in FIRST_ORDER:
        with probe.session(model) as s:
            loss, grad = s.loss_and_grad()
        assert loss == pytest.approx(float(reference), rel=1e-10, abs=1e-12)
        torch.testing.assert_close(grad, g_ref, rtol=1e-10, atol=1e-12)
        return
    H = dense_hessian(model, x, y, objective)
    v = torch.linspace(-1.0, 1.0, H.shape[0], dtype=torch.float64)
    with probe.session(model) as s:
        loss, grad = s.loss_and_grad()
        hv = s.hvp(v)
        evaluation = s.evaluate()
    assert loss == pytest.approx(float(reference), rel=1e-10, abs=1e-12)
    assert evaluation.loss == pytest.approx(float(reference), rel=1e-10, abs=1e-12)
    torch.testing.assert_close(grad, g_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(hv, H @ v, rtol=1e-10, atol=1e-12)
    top = hessian_eigenvalues(model, probe, k=1, tol=1e-10).eigenvalues[0]
    exact = torch.linalg.eigvalsh(H).max()
    assert float(top) == pytest.approx(float(exact), rel=1e-8)


def test_batch_objective_of_raw_outputs_sums_to_the_objective():
    # The API other measures build on: forward gives the raw output, batch_objective applies the
    # output_transform and the decomposition; the sum over the probe's batches is L(θ).
    loss_fn = nn.NLLLoss(weight=W, ignore_index=PAD)
    model, (x, y) = _tagger(), _tokens()
    probe = Probe((x, y), loss_fn, batch_size=4, output_transform=LOG_SOFTMAX)
    with probe.session(model) as s:
        parts = [s.batch_objective(s.forward(xb, s.base, i), yb, i) for i, (xb, yb, _) in enumerate(probe.batches())]
    expected = loss_fn(LOG_SOFTMAX(model(x)), y).detach()
    assert float(sum(parts)) == pytest.approx(float(expected), rel=1e-12)
    assert probe.normalizer == pytest.approx(float(W[y[y != PAD]].sum()), rel=1e-12)


def test_uncached_hvp_and_train_mode_give_the_same_objective():
    loss_fn = nn.CrossEntropyLoss(weight=W, ignore_index=PAD, label_smoothing=0.15)
    model, (x, y) = _tagger(), _tokens()
    H = dense_hessian(model, x, y, loss_fn)
    v = torch.linspace(-1.0, 1.0, H.shape[0], dtype=torch.float64)
    for probe in (
        Probe((x, y), loss_fn, batch_size=4, max_graph_bytes=0),
        Probe((x, y), loss_fn, batch_size=4, model_mode="train"),  # no dropout/BN: the same function
    ):
        with probe.session(model) as s:
            torch.testing.assert_close(s.hvp(v), H @ v, rtol=1e-10, atol=1e-12)


def test_normalizers_are_what_torch_divides_by():
    x, y = _tokens()
    logits = _tagger()(x).detach()
    loss = nn.CrossEntropyLoss(weight=W, ignore_index=PAD)
    assert decompose(loss).weight(y) == pytest.approx(float(W[y[y != PAD]].sum()))
    assert decompose(nn.CrossEntropyLoss(ignore_index=PAD)).weight(y) == float((y != PAD).sum())
    assert decompose(nn.KLDivLoss(reduction="batchmean")).weight(torch.zeros(7, 3)) == 7.0
    assert decompose(nn.MSELoss()).weight(torch.zeros(7, 3)) == 21.0
    assert decompose(nn.MSELoss(reduction="sum")).weight is None
    d = decompose(loss)
    assert float(d.total(logits, y) / d.weight(y)) == pytest.approx(float(loss(logits, y)), rel=1e-12)


def test_objective_scale_relates_a_trainer_batch_to_the_probe():
    # The probe's 24 samples split into 3 trainer batches of 8: the batches' Hessians average to
    # objective_scale(8) times the probe's, exactly (a sum scales with the samples, a mean does not).
    g = torch.Generator().manual_seed(9)
    x, y = torch.randn(24, 5, generator=g, dtype=torch.float64), torch.randn(24, C, generator=g, dtype=torch.float64)
    model = mlp()
    for loss_fn, scale in ((nn.MSELoss(), 1.0), (nn.MSELoss(reduction="sum"), 8 / 24)):
        probe = Probe((x, y), loss_fn)
        assert probe.objective_scale(8) == pytest.approx(scale)
        H_probe = dense_hessian(model, x, y, loss_fn)
        H_batches = sum(dense_hessian(model, x[i : i + 8], y[i : i + 8], loss_fn) for i in (0, 8, 16)) / 3
        torch.testing.assert_close(H_batches, probe.objective_scale(8) * H_probe, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="batch_size"):
        probe.objective_scale(0)


def test_a_callable_that_is_not_a_per_row_mean_is_refused_with_the_fix():
    x, y = _tokens()
    # At construction, before any model exists: checked on made-up class scores for the targets.
    with pytest.raises(ValueError, match=r"loss_fn .* is not a per-row mean.*DecomposedLoss"):
        Probe((x, y), lambda out, t: F.cross_entropy(out, t, ignore_index=PAD), batch_size=CHUNK)
    # A loss that needs the model's own output (a dict) is checked on it: by a handler at construction,
    # and by every session until it passes.
    model = _dict_tagger()
    masked = Probe((x, y), _masked_dict_loss, batch_size=CHUNK)
    with pytest.raises(ValueError, match=r"loss_fn _masked_dict_loss is not a per-row mean.*DecomposedLoss"):
        HessianSpectrum(model, masked)
    for _ in range(2):
        with pytest.raises(ValueError, match="not a per-row mean"):
            masked.evaluate(model)
    model, (x, y) = mlp(), _regression()
    with pytest.raises(ValueError, match=r"normalizer=None"):
        Probe((x, y), lambda out, t: ((out - t) ** 2).sum(), batch_size=CHUNK)
    with pytest.raises(ValueError, match="batch_size >= 2"):  # one row per chunk: nothing to check on
        Probe((x, y), lambda out, t: ((out - t) ** 2).mean(), batch_size=1).evaluate(model)
    with pytest.raises(ValueError, match="reduction='none'"):
        Probe((x, y), nn.MSELoss(reduction="none"))
    with pytest.raises(TypeError, match="output_transform"):
        Probe((x, y), nn.MSELoss(), output_transform="logits")
    with pytest.raises(ValueError, match="normalizer"):
        DecomposedLoss(lambda out, t: out.sum(), normalizer="tokens")


def test_dict_and_logits_outputs_loss_and_accuracy_by_hand():
    x, y = _classes()
    base = mlp()
    logits = base(x).detach()
    expected_loss = float(F.cross_entropy(logits, y))
    expected_acc = float((logits.argmax(1) == y).double().mean())

    class DictOut(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = base

        def forward(self, x):
            return {"logits": self.net(x), "aux": torch.zeros(())}

    class LogitsOut(DictOut):
        def forward(self, x):
            return types.SimpleNamespace(logits=self.net(x), hidden=None)

    dict_eval = Probe((x, y), F.cross_entropy, batch_size=CHUNK, output_transform=lambda o: o["logits"]).evaluate(
        DictOut()
    )
    attr_eval = Probe((x, y), nn.CrossEntropyLoss(), batch_size=CHUNK).evaluate(LogitsOut())
    for ev in (dict_eval, attr_eval):
        assert ev.loss == pytest.approx(expected_loss, rel=1e-12)
        assert ev.accuracy == pytest.approx(expected_acc, rel=1e-12)
        assert ev.accuracy_reason is None


def test_token_accuracy_leaves_out_ignored_targets():
    model, (x, y) = _tagger(), _tokens()
    logits = model(x).detach()
    keep = y != PAD
    expected = float(((logits.argmax(1) == y) & keep).sum().double() / keep.sum().double())
    ev = Probe((x, y), nn.CrossEntropyLoss(ignore_index=PAD), batch_size=CHUNK).evaluate(model)
    assert ev.accuracy == pytest.approx(expected, rel=1e-12)
    assert ev.loss == pytest.approx(float(nn.CrossEntropyLoss(ignore_index=PAD)(logits, y)), rel=1e-10)


def test_accuracy_that_cannot_be_computed_says_why_once(caplog):
    x, y = _classes()
    base = mlp()

    class DictOut(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = base

        def forward(self, x):
            return {"logits": self.net(x)}

    probe = Probe((x, y), lambda out, t: F.cross_entropy(out["logits"], t), batch_size=CHUNK)
    with caplog.at_level(logging.INFO, logger="ignite_landscape.probe"):
        first = probe.evaluate(DictOut())
        second = probe.evaluate(DictOut())
    assert first.accuracy is None and "output_transform" in first.accuracy_reason
    assert second.accuracy_reason == first.accuracy_reason
    assert first.loss == pytest.approx(float(F.cross_entropy(base(x).detach(), y)), rel=1e-12)
    said = [r for r in caplog.records if "no accuracy" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.WARNING  # integer labels: accuracy was expected
    regression = Probe(_regression(), nn.MSELoss()).evaluate(mlp())
    assert regression.accuracy is None and "integer class labels" in regression.accuracy_reason


def _order(loader: DataLoader) -> list[list[int]]:
    return [batch[1].tolist() for batch in loader]


def _dataset() -> TensorDataset:
    return TensorDataset(torch.randn(40, 5, dtype=torch.float64), torch.arange(40))


@pytest.mark.parametrize(
    "make",
    [
        lambda ds: DataLoader(ds, batch_size=6, shuffle=True, generator=torch.Generator().manual_seed(3)),
        lambda ds: DataLoader(ds, batch_size=6, shuffle=True),
        lambda ds: DataLoader(
            ds, batch_size=6, sampler=torch.utils.data.RandomSampler(ds, generator=torch.Generator().manual_seed(2))
        ),
        lambda ds: DataLoader(
            ds,
            batch_size=6,
            shuffle=True,
            generator=torch.Generator().manual_seed(3),
            num_workers=1,
            persistent_workers=True,
        ),
    ],
    ids=["generator", "global_rng", "sampler_generator", "persistent_workers"],
)
def test_building_a_probe_leaves_the_training_order_unchanged(make):
    ds = _dataset()
    torch.manual_seed(11)
    expected = _order(make(ds))
    torch.manual_seed(11)
    loader = make(ds)
    probe = Probe(loader, F.cross_entropy, num_samples=10)
    assert probe.num_samples == 10
    assert _order(loader) == expected
    assert _order(loader) != expected  # the next epoch reshuffles: the comparison can fail


def test_distributed_sampler_loader_keeps_its_order_and_epoch():
    ds = _dataset()
    sampler = DistributedSampler(ds, num_replicas=2, rank=1, shuffle=True, seed=4)
    sampler.set_epoch(3)
    loader = DataLoader(ds, batch_size=6, sampler=sampler)
    expected = _order(loader)
    probe = Probe(loader, F.cross_entropy, num_samples=10)
    assert sampler.epoch == 3
    assert _order(loader) == expected
    assert set(probe.targets.tolist()) <= set(sampler)  # this rank's shard


def _distributed_worker(local_rank: int, out_dir: str) -> None:
    import ignite.distributed as idist

    r = idist.get_rank()
    loss_fn = nn.CrossEntropyLoss(weight=W, ignore_index=PAD, label_smoothing=0.15)
    x, y = _tokens()
    model = _tagger()
    v = torch.linspace(-1.0, 1.0, sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    results = {}
    # The same samples on every rank (each evaluates its shard), and each rank its own (the union).
    for name, probe in (
        ("same", Probe((x, y), loss_fn, batch_size=4)),
        ("own", Probe((x[r * 11 : (r + 1) * 11], y[r * 11 : (r + 1) * 11]), loss_fn, batch_size=4)),
    ):
        with probe.session(model) as s:
            loss, grad = s.loss_and_grad()
            results[name] = (loss, grad, s.hvp(v), s.evaluate().accuracy, probe.normalizer)
    masked = Probe((x, y), _masked_dict_loss, batch_size=CHUNK)
    try:
        masked.evaluate(_dict_tagger())
        results["masked"] = None
    except Exception as e:  # every rank must raise, none may wait forever
        results["masked"] = type(e).__name__
    torch.save(results, f"{out_dir}/rank{r}.pt")


def test_two_processes_compute_the_one_batch_objective(tmp_path):
    import datetime
    import socket

    import ignite.distributed as idist

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with idist.Parallel(
        backend="gloo", nproc_per_node=2, master_port=port, timeout=datetime.timedelta(seconds=60)
    ) as parallel:
        parallel.run(_distributed_worker, str(tmp_path))
    runs = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    loss_fn = nn.CrossEntropyLoss(weight=W, ignore_index=PAD, label_smoothing=0.15)
    x, y = _tokens()
    model = _tagger()
    v = torch.linspace(-1.0, 1.0, sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    # "own": 11 rows each, the fewest any rank holds; rank 0 evaluates 6 of its own, rank 1 five.
    union = torch.cat([torch.arange(0, 6), torch.arange(11, 16)])
    for name, rows in (("same", torch.arange(N)), ("own", union)):
        xs, ys = x[rows], y[rows]
        H = dense_hessian(model, xs, ys, loss_fn)
        reference = loss_fn(model(xs), ys)
        g_ref = torch.cat([g.reshape(-1) for g in torch.autograd.grad(reference, list(model.parameters()))])
        reference = reference.detach()
        for run in runs:
            loss, grad, hv, accuracy, normalizer = run[name]
            assert loss == pytest.approx(float(reference), rel=1e-10)
            torch.testing.assert_close(grad, g_ref, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(hv, H @ v, rtol=1e-10, atol=1e-12)
            assert normalizer == pytest.approx(float(W[ys[ys != PAD]].sum()), rel=1e-12)
            assert accuracy is not None
    assert all(run["masked"] in ("ObjectiveError", "RankFailure") for run in runs)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_stability_ratio_compares_the_curvature_one_step_sees(reduction):
    # For a summed loss a trainer batch of B samples sees B/N of the probe's curvature; a mean sees it all.
    from ignite.engine import Engine

    torch.manual_seed(0)
    model = nn.Linear(3, 2).double()
    x, y = torch.randn(32, 3, dtype=torch.float64), torch.randn(32, 2, dtype=torch.float64)
    probe = Probe((x, y), nn.MSELoss(reduction=reduction))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    handler = HessianSpectrum(model, probe, k=1, optimizer=opt, tol=1e-10)
    trainer = Engine(lambda engine, batch: None)
    handler.attach(trainer)
    trainer.run([(x[:8], y[:8])], max_epochs=1)
    metrics = trainer.state.metrics
    lam = float(torch.linalg.eigvalsh(dense_hessian(model, x, y, nn.MSELoss(reduction=reduction)))[-1])
    scale = 8 / 32 if reduction == "sum" else 1.0
    assert metrics["landscape/hessian/lambda_max"] == pytest.approx(lam, rel=1e-8)
    assert metrics["landscape/hessian/stability_ratio"] == pytest.approx(lam * scale / (2 / 0.01), rel=1e-8)
    assert ("landscape/hessian/objective_scale" in metrics) == (reduction == "sum")
