"""The exact Hessian diagonal and exact trace against the dense float64 Hessian."""

from __future__ import annotations

import copy
import sys

import pytest
import torch
from torch import nn

from ignite_landscape import Probe, hessian_diagonal, hessian_trace
from ignite_landscape.measures.diagonal import ExactUnsupportedError
from tests.helpers import classification_data, dense_hessian, small_cnn

pytest.importorskip("backpack")

F = nn.functional


def tanh_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Dropout(0.3), nn.Linear(7, 6), nn.Sigmoid(), nn.Linear(6, 3))


def relu_maxpool_cnn() -> nn.Module:
    torch.manual_seed(1)

    class Net(nn.Module):  # a container around Sequentials, as real models are written
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(1, 3, 3), nn.Identity(), nn.ReLU(inplace=True), nn.MaxPool2d(2), nn.Flatten()
            )
            self.head = nn.Sequential(nn.Linear(12, 5), nn.ReLU(), nn.Linear(5, 4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.features(x))

    return Net()


CASES = {
    "mlp_tanh_sigmoid_dropout": lambda: (tanh_mlp().double(), *classification_data(23, (5,), classes=3)),
    "cnn_relu_maxpool": lambda: (relu_maxpool_cnn().double(), *classification_data(17, (1, 6, 6), classes=4)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_exact_diagonal_equals_dense_hessian_diagonal(case):
    model, x, y = CASES[case]()
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    probe = Probe((x, y), F.cross_entropy, batch_size=5)  # uneven batches: 5+5+5+5+3 or 5+5+5+2
    res = hessian_diagonal(model, probe)
    H = dense_hessian(model, x, y, F.cross_entropy)
    ref = H.diagonal()
    assert res.diagonal.dtype == torch.float64
    assert float((res.diagonal - ref).abs().max()) <= 1e-10 * float(ref.abs().max())
    assert res.value == pytest.approx(float(H.trace()), rel=1e-10, abs=1e-12)
    # Per-layer traces are the traces of the diagonal blocks.
    offset = 0
    blocks = {}
    for name, p in model.named_parameters():
        owner = name.rsplit(".", 1)[0]
        blocks[owner] = blocks.get(owner, 0.0) + float(ref[offset : offset + p.numel()].sum())
        offset += p.numel()
    assert res.layer_traces.keys() == blocks.keys()
    for owner, value in blocks.items():
        assert res.layer_traces[owner] == pytest.approx(value, rel=1e-10, abs=1e-12)
    # The user's model is untouched: same weights, no hooks, no gradients, no BackPACK attributes.
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
    assert all(p.grad is None and not hasattr(p, "diag_h") for p in model.parameters())
    assert not model.training


def test_exact_diagonal_of_mse_and_a_parameter_subset():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(4, 6), nn.ELU(), nn.Linear(6, 2)).double()
    x, y = torch.randn(11, 4, dtype=torch.float64), torch.randn(11, 2, dtype=torch.float64)
    probe = Probe((x, y), nn.MSELoss(), batch_size=4)
    names = ["0.weight", "2.bias"]
    res = hessian_diagonal(model, probe, params=names)
    ref = dense_hessian(model, x, y, F.mse_loss, names=names).diagonal()
    assert res.diagonal.shape == ref.shape
    assert float((res.diagonal - ref).abs().max()) <= 1e-10 * float(ref.abs().max())
    assert set(res.as_dict()) == set(names)


def test_exact_trace_method_and_auto():
    model, x, y = CASES["mlp_tanh_sigmoid_dropout"]()
    probe = Probe((x, y), F.cross_entropy, batch_size=8)
    ref = float(dense_hessian(model.eval(), x, y, F.cross_entropy).trace())
    exact = hessian_trace(model, probe, method="exact")
    auto = hessian_trace(model, probe, method="auto")
    for res in (exact, auto):
        assert res.method == "exact" and res.stderr == 0.0 and res.fallback is None
        assert res.value == pytest.approx(ref, rel=1e-10)
        assert sum(res.layer_traces.values()) == pytest.approx(ref, rel=1e-10)


def test_unsupported_layer_is_refused_and_auto_falls_back():
    model = small_cnn()  # BatchNorm and a functional tanh between modules
    x, y = classification_data(12, (1, 6, 6))
    probe = Probe((x, y), F.cross_entropy, batch_size=6)
    with pytest.raises(ExactUnsupportedError, match="BatchNorm2d"):
        hessian_diagonal(model, probe)
    with pytest.raises(ValueError, match="not supported"):
        hessian_trace(model, probe, method="exact")
    auto = hessian_trace(model, probe, method="auto", num_hvps=12)
    assert auto.method == "hutch++" and "BatchNorm2d" in auto.fallback
    assert auto.value == hessian_trace(model, probe, method="hutch++", num_hvps=12).value


class _FunctionalBetween(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.b = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x)))  # BackPACK would skip the tanh silently


class _FunctionalAfter(_FunctionalBetween):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2.0 * self.b(self.a(x))


@pytest.mark.parametrize(
    "model, match",
    [(_FunctionalBetween, "input of module 'b'"), (_FunctionalAfter, "output of its last module")],
)
def test_forward_outside_modules_is_refused(model, match):
    x, y = classification_data(6, (3,), classes=2)
    probe = Probe((x.float(), y), F.cross_entropy)
    with pytest.raises(ExactUnsupportedError, match=match):
        hessian_diagonal(model(), probe)


@pytest.mark.parametrize(
    "loss_fn, match",
    [(nn.CrossEntropyLoss(label_smoothing=0.1), "loss_fn"), (nn.CrossEntropyLoss(reduction="sum"), "loss_fn")],
)
def test_unsupported_loss_is_refused(loss_fn, match):
    model, x, y = CASES["mlp_tanh_sigmoid_dropout"]()
    with pytest.raises(ExactUnsupportedError, match=match):
        hessian_diagonal(model, Probe((x, y), loss_fn))


def test_without_backpack_exact_names_the_extra_and_auto_falls_back(monkeypatch):
    monkeypatch.setitem(sys.modules, "backpack", None)  # makes `import backpack` raise ImportError
    model, x, y = CASES["mlp_tanh_sigmoid_dropout"]()
    probe = Probe((x, y), F.cross_entropy)
    with pytest.raises(ImportError, match=r"ignite_landscape\[exact\]"):
        hessian_trace(model, probe, method="exact")
    auto = hessian_trace(model, probe, method="auto", num_hvps=9)
    assert auto.method == "hutch++" and "backpack" in auto.fallback.lower()


def test_trace_arguments_are_checked():
    model, x, y = CASES["mlp_tanh_sigmoid_dropout"]()
    probe = Probe((x, y), F.cross_entropy)
    with pytest.raises(ValueError, match="method"):
        hessian_trace(model, probe, method="exactly")
    with pytest.raises(ValueError, match="curvature"):
        hessian_trace(model, probe, method="exact", curvature="ggn")


class _InPlaceBetween(_FunctionalBetween):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        h.mul_(2.0)  # same tensor object, but its data changed after module a returned it
        return self.b(h)


class _ViewBetween(_FunctionalBetween):
    def __init__(self) -> None:
        super().__init__()
        self.b = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x)[:, :2])  # a view: shares storage, other shape


@pytest.mark.parametrize("model", [_InPlaceBetween, _ViewBetween])
def test_in_place_and_view_ops_between_modules_are_refused(model):
    x, y = classification_data(6, (3,), classes=2)
    probe = Probe((x.float(), y), F.cross_entropy)
    # The in-place op is caught by torch inside BackPACK's hooks, the view by the chain check: both refused.
    with pytest.raises(ExactUnsupportedError, match="input of module 'b'|cannot run this model"):
        hessian_diagonal(model(), probe)


def test_benchmark_reference_diagonal_is_the_dense_hessian_diagonal():
    # benchmarks/bench_trace.py's reference (float64 GGN diagonal by per-sample Jacobians) equals the
    # Hessian diagonal of a ReLU + max-pool network, where the output is linear in each single weight.
    from benchmarks.bench_trace import reference_diagonal, spot_check

    model, x, y = CASES["cnn_relu_maxpool"]()
    model, x = model.float().eval(), x.float()  # the benchmark's float32 model and data, made float64 inside
    ref = reference_diagonal(model, x, y, chunk=5)
    dense = dense_hessian(copy.deepcopy(model).double(), x.double(), y, F.cross_entropy).diagonal()
    assert float((ref - dense).abs().max()) <= 1e-12 * float(dense.abs().max())
    assert spot_check(model, x, y, ref, count=6, seed=0) <= 1e-12


def test_kept_copy_follows_the_weights_and_the_structure():
    model, x, y = CASES["mlp_tanh_sigmoid_dropout"]()
    model.eval()
    probe = Probe((x, y), F.cross_entropy, batch_size=8)
    first = hessian_diagonal(model, probe).diagonal
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)  # as an optimizer step would: in place
    second = hessian_diagonal(model, probe).diagonal
    ref = dense_hessian(model, x, y, F.cross_entropy).diagonal()
    assert not torch.allclose(first, second)
    assert float((second - ref).abs().max()) <= 1e-10 * float(ref.abs().max())
    model[1] = nn.ReLU()  # another layer: the kept copy must not be reused
    third = hessian_diagonal(model, probe).diagonal
    ref = dense_hessian(model, x, y, F.cross_entropy).diagonal()
    assert float((third - ref).abs().max()) <= 1e-10 * float(ref.abs().max())
