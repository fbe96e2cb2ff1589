"""ProbeSession's public operations against dense float64 references and one-at-a-time evaluations."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from ignite_landscape import Probe, curvature_operator
from ignite_landscape.operators import CurvatureOperator
from ignite_landscape.samples import num_rows, take_rows, tree_cat, tree_map
from ignite_landscape.session import ProbeSession
from tests.helpers import classification_data, dense_hessian, mlp, small_cnn


def snapshot(model):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [m.training for m in model.modules()],
        torch.get_rng_state(),
    )


def assert_unchanged(model, before):
    state, modes, rng = before
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(torch.get_rng_state(), rng)


def test_hvp_operator_is_the_dense_hessian_with_shape_dtype_device():
    model = mlp()
    x, y = classification_data(13, (5,))
    H = dense_hessian(model, x, y, F.cross_entropy)
    probe = Probe((x, y), F.cross_entropy, batch_size=4)  # 4+4+4+1: the product sums over batches
    with probe.session(model) as s:
        op = s.hvp_operator()
        assert isinstance(op, CurvatureOperator)
        assert op.shape == H.shape and op.dtype == torch.float64 and op.device == torch.device("cpu")
        v = torch.randn(H.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        hv, again = op(v), op.matvec(v)
        assert s.num_hvps == 2
    torch.testing.assert_close(hv, H @ v, rtol=1e-10, atol=1e-12)
    assert torch.equal(hv, again)
    # A float32 vector is cast to the operator's dtype; a wrong shape is refused before any work.
    torch.testing.assert_close(op(v.float()), H @ v.float().double(), rtol=1e-10, atol=1e-12)
    n = H.shape[0]
    with pytest.raises(ValueError, match=f"flat vector of {n} entries"):
        op(torch.zeros(n - 1, dtype=torch.float64))
    assert s.num_hvps == 3


def test_operator_wraps_any_product_and_counts_it():
    model = mlp()
    x, y = classification_data(9, (5,))
    s = Probe((x, y), F.cross_entropy).session(model)
    n = s.space.numel
    A = torch.randn(n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    op = s.operator(lambda v: A @ v, "dense")
    v = torch.ones(n, dtype=torch.float64)
    torch.testing.assert_close(op(v), A @ v, rtol=0, atol=0)
    assert (op.name, op.shape, s.num_hvps) == ("dense", (n, n), 1)
    ggn = curvature_operator(s, "ggn")
    assert isinstance(ggn, CurvatureOperator) and ggn.shape == (n, n) and ggn.name == "ggn"
    ggn(v)
    assert s.num_hvps == 2


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_evaluate_many_equals_one_point_at_a_time(mode):
    model = small_cnn(dropout=0.3)
    x, y = classification_data(14, (1, 6, 6))
    probe = Probe((x, y), F.cross_entropy, batch_size=5, model_mode=mode)
    g = torch.Generator().manual_seed(2)
    with probe.session(model) as s:
        points = [s.theta + 0.1 * k * torch.randn(s.space.numel, dtype=torch.float64, generator=g) for k in range(4)]
        many = s.evaluate_many(iter(points))  # read lazily, as a generator would be
        assert s.num_forwards == 4
        ones = [s.evaluate(p) for p in points]
        if mode == "eval":
            stacked = s.evaluate_stacked(torch.stack(points))
        else:  # vmap refuses dropout's random masks: the signal to fall back to evaluate_many
            with pytest.raises(RuntimeError):
                s.evaluate_stacked(torch.stack(points))
    # The same forward passes summed in the same order: bit for bit.
    assert many.loss.tolist() == [e.loss for e in ones]
    assert many.accuracy.tolist() == [e.accuracy for e in ones]
    assert many.error.tolist() == [e.error for e in ones]
    assert many.loss.dtype == torch.float64 and len(set(many.loss.tolist())) == 4  # the points differ
    if mode == "eval":
        torch.testing.assert_close(stacked.loss, many.loss, rtol=1e-12, atol=1e-12)
        assert stacked.accuracy.tolist() == many.accuracy.tolist()


def test_evaluate_many_without_class_labels_has_no_accuracy():
    model = mlp(d_out=1)
    x = torch.randn(8, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    y = torch.randn(8, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    with Probe((x, y), F.mse_loss, batch_size=3).session(model) as s:
        many = s.evaluate_many([s.theta, 2 * s.theta])
        assert many.accuracy is None and many.error is None
        assert many.loss[1].item() == s.evaluate(2 * s.theta).loss
        empty = s.evaluate_many([])
    assert empty.loss.shape == (0,)


def test_session_is_complete_at_construction_and_restores_after_each_call():
    model = small_cnn(dropout=0.3)
    model.train()
    x, y = classification_data(10, (1, 6, 6))
    probe = Probe((x, y), F.cross_entropy, batch_size=4, model_mode="train")
    before = snapshot(model)
    s = ProbeSession(probe, model)
    assert s.space.numel == sum(p.numel() for p in model.parameters())
    assert s.dtype == torch.float64 and s.device == torch.device("cpu")
    assert torch.equal(s.theta, torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    v = torch.randn(s.space.numel, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    outside = (s.evaluate().loss, s.grad(), s.hvp(v), s.evaluate_many([s.theta]).loss)
    assert_unchanged(model, before)  # train flag, BatchNorm statistics and the global RNG are untouched
    with probe.session(model) as t:
        inside = (t.evaluate().loss, t.grad(), t.hvp(v), t.evaluate_many([t.theta]).loss)
    assert_unchanged(model, before)
    assert outside[0] == inside[0] == float(outside[3][0])
    assert torch.equal(outside[1], inside[1]) and torch.equal(outside[3], inside[3])
    torch.testing.assert_close(outside[2], inside[2], rtol=1e-12, atol=1e-14)


def test_evaluate_with_buffers_equals_a_model_holding_them():
    model = small_cnn()
    x, y = classification_data(12, (1, 6, 6))
    probe = Probe((x, y), F.cross_entropy, batch_size=5)
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.bn.running_mean.add_(0.3)
        other.bn.running_var.mul_(1.7)
    buffers = {n: b.clone() for n, b in other.named_buffers()}
    with probe.session(model) as s:
        ev = s.evaluate(buffers=buffers)
        assert ev.loss != s.evaluate().loss  # the buffers matter
    assert ev.loss == probe.evaluate(other).loss
    assert torch.equal(model.bn.running_mean, small_cnn().bn.running_mean)


def per_sample_reference(model, x, y):
    names = [n for n, _ in model.named_parameters()]
    rows = []
    for i in range(x.shape[0]):
        params = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
        out = functional_call(model, dict(zip(names, params)), (x[i : i + 1],))
        grads = torch.autograd.grad(F.cross_entropy(out, y[i : i + 1]), params)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows)


def test_per_sample_gradients_equal_single_sample_gradients():
    model = mlp()
    x, y = classification_data(11, (5,))
    with Probe((x, y), F.cross_entropy, batch_size=4).session(model) as s:
        chunks = list(s.per_sample_gradients(3))  # 3+1, 3+1, 3: chunks within each probe batch
        assert [c for c, _ in chunks] == [3, 1, 3, 1, 3]
        assert s.num_grads == 1
        grad = s.grad()
    got = torch.cat([torch.cat([g.reshape(c, -1) for g in gs], 1) for c, gs in chunks])
    reference = per_sample_reference(model, x, y)  # for a mean loss, n·∇ℓ_i is sample i's own gradient
    torch.testing.assert_close(got, reference, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got.mean(0), grad, rtol=1e-10, atol=1e-12)


def test_subset_gradients_are_the_gradients_of_the_subsets_mean_loss():
    model = mlp()
    x, y = classification_data(12, (5,))
    subsets = [torch.tensor([3, 0, 7]), torch.tensor([11, 5, 1])]
    with Probe((x, y), F.cross_entropy, batch_size=5).session(model) as s:
        got = list(s.subset_gradients(iter(subsets)))
        assert s.num_grads == 1
    reference = per_sample_reference(model, x, y)
    for g, idx in zip(got, subsets):
        torch.testing.assert_close(g, reference[idx].mean(0), rtol=1e-10, atol=1e-12)


def test_probe_subset_and_sample_weights():
    x, y = classification_data(9, (5,))
    probe = Probe((x, y), F.cross_entropy, batch_size=4)
    idx = torch.tensor([8, 2, 5])
    sub = probe.subset(idx)
    assert sub.num_samples == 3 and torch.equal(sub.inputs, x[idx]) and torch.equal(sub.targets, y[idx])
    assert sub.objective_checked and sub.batch_size == 3
    model = mlp()
    assert sub.evaluate(model).loss == pytest.approx(float(F.cross_entropy(model(x[idx]), y[idx]).detach()), rel=1e-12)
    assert probe.uniform_sample_weights()
    weighted = Probe((x, y), torch.nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)))
    assert not weighted.uniform_sample_weights()


def test_tree_helpers_on_nested_batches():
    x = {"a": torch.arange(12).reshape(6, 2), "b": (torch.arange(6), [torch.arange(6) * 2])}
    parts = [tree_map(lambda t: t[:2], x), tree_map(lambda t: t[2:], x)]
    assert tree_cat(parts)["b"][1][0].tolist() == (torch.arange(6) * 2).tolist()
    picked = take_rows(x, torch.tensor([5, 1]))
    assert picked["a"].tolist() == [[10, 11], [2, 3]] and picked["b"][0].tolist() == [5, 1]
    assert num_rows(x) == 6
    with pytest.raises(TypeError, match="must hold tensors"):
        num_rows({"a": "text"})
