"""Any module the user trains: compiled, attention, autocast, frozen, tied, wrapped, split over devices.

Each eigenvalue is checked against ``eigvalsh`` of the dense float64 Hessian of the same function,
computed independently (the attention reference with the math kernel, which has a double backward).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

import ignite_landscape as il
from ignite_landscape.params import ParamSpace, model_device, unwrap_model
from tests.helpers import TinyEncoder, classification_data, dense_hessian, mlp, small_cnn


def top_eigenvalues(model: nn.Module, x: torch.Tensor, y: torch.Tensor, k: int = 2, **kwargs) -> torch.Tensor:
    probe = il.Probe((x, y), F.cross_entropy, batch_size=5, **kwargs)
    result = il.hessian_eigenvalues(model, probe, k=k, tol=1e-10)
    assert torch.isfinite(result.eigenvalues).all()
    return result.eigenvalues


def dense_top(H: torch.Tensor, k: int = 2) -> torch.Tensor:
    return torch.linalg.eigvalsh(H).flip(0)[:k]


def encoder(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return TinyEncoder().double().eval()


def test_transformer_encoder_eigenvalues_match_the_math_kernel_reference():
    # Training's default CPU attention kernel (flash) has no double backward: the probe picks the math one.
    model = encoder()
    x, y = classification_data(12, (5, 3))
    got = top_eigenvalues(model, x, y)
    with sdpa_kernel(SDPBackend.MATH):
        want = dense_top(dense_hessian(model, x, y, F.cross_entropy))
    torch.testing.assert_close(got, want, rtol=1e-8, atol=0)
    # The backend choice stays inside the probe.
    assert torch.backends.cuda.flash_sdp_enabled()


@pytest.mark.parametrize("how", ["wrapper", "in_place", "submodule"])
def test_compiled_model_eigenvalues_match_the_eager_reference(how):
    # backend="aot_eager": aot_autograd is what refuses double backward; inductor would only add compile time.
    eager = mlp(seed=2)
    x, y = classification_data(13, (5,))
    want = dense_top(dense_hessian(eager, x, y, F.cross_entropy))
    model = mlp(seed=2)
    if how == "wrapper":
        model = torch.compile(model, backend="aot_eager")
    elif how == "in_place":
        model.compile(backend="aot_eager")
    else:
        model[2] = torch.compile(model[2], backend="aot_eager")
    model(x).sum().backward()  # compiled by a training step
    got = top_eigenvalues(model, x, y)
    torch.testing.assert_close(got, want, rtol=1e-8, atol=0)
    if how == "wrapper":
        # The same parameter objects, named as in the original module; a wrapper prefix is understood.
        assert unwrap_model(model) is model._orig_mod
        space = ParamSpace.from_model(model, "_orig_mod.0")
        assert space.names == ("0.weight", "0.bias")


def test_autocast_in_the_training_step_does_not_reach_the_probe():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))  # float32, as autocast trains it
    x, y = classification_data(13, (5,))
    x = x.float()
    probe = il.Probe((x, y), F.cross_entropy, batch_size=5)
    plain = il.hessian_eigenvalues(model, probe, k=2, tol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = il.hessian_eigenvalues(model, probe, k=2, tol=1e-6)
        loss = probe.evaluate(model).loss
        assert torch.is_autocast_enabled("cpu")  # restored after the probe
    assert torch.equal(plain.eigenvalues, inside.eigenvalues)
    assert loss == probe.evaluate(model).loss


def test_frozen_parameters_are_excluded():
    model = mlp(seed=4)
    model[0].requires_grad_(False)
    x, y = classification_data(11, (5,))
    probe = il.Probe((x, y), F.cross_entropy, batch_size=4)
    result = il.hessian_eigenvalues(model, probe, k=2, tol=1e-10)
    assert result.space.names == ("2.weight", "2.bias")
    want = dense_top(dense_hessian(model, x, y, F.cross_entropy, names=["2.weight", "2.bias"]))
    torch.testing.assert_close(result.eigenvalues, want, rtol=1e-8, atol=0)


class TiedAutoencoder(nn.Module):
    """The decoder reuses the encoder's weight matrix (``decoder.weight is encoder.weight``)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(6, 4, bias=False)
        self.decoder = nn.Linear(4, 6, bias=True)
        self.decoder.weight = self.encoder.weight  # shapes (4, 6): used transposed below

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(torch.tanh(self.encoder(x)), self.decoder.weight.t(), self.decoder.bias)


def test_tied_parameters_are_counted_once():
    torch.manual_seed(5)
    model = TiedAutoencoder().double()
    x = torch.randn(9, 6, dtype=torch.float64)
    probe = il.Probe((x, x.clone()), F.mse_loss, batch_size=4)
    result = il.hessian_eigenvalues(model, probe, k=3, tol=1e-10)
    assert result.space.names == ("encoder.weight", "decoder.bias") and result.space.numel == 24 + 6

    # Reference written by hand as a function of the one shared matrix W and the bias.
    def loss(w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(F.linear(torch.tanh(x @ w.t()), w.t(), b), x)

    H = torch.autograd.functional.hessian(loss, (model.encoder.weight.detach(), model.decoder.bias.detach()))
    dense = torch.cat(
        [torch.cat([H[i][j].reshape(n_i, n_j) for j, n_j in enumerate((24, 6))], 1) for i, n_i in enumerate((24, 6))]
    )
    torch.testing.assert_close(result.eigenvalues, dense_top(dense, 3), rtol=1e-8, atol=0)


def test_data_parallel_wrapper_is_looked_through():
    model = mlp(seed=6)
    x, y = classification_data(10, (5,))
    wrapped = nn.DataParallel(model)  # on a machine without GPUs it simply calls the module
    assert unwrap_model(wrapped) is model
    torch.testing.assert_close(top_eigenvalues(wrapped, x, y), top_eigenvalues(model, x, y), rtol=0, atol=0)


def test_parameters_on_several_devices_are_refused_at_construction():
    model = mlp()
    model[2].to("meta")  # stands in for a second accelerator: any second device is refused the same way
    x, y = classification_data(8, (5,))
    probe = il.Probe((x, y), F.cross_entropy)
    with pytest.raises(ValueError, match="several devices"):
        model_device(model)
    with pytest.raises(ValueError, match="several devices"):
        il.HessianSpectrum(model, probe, k=1)
    with pytest.raises(ValueError, match="several devices"):
        il.hessian_eigenvalues(model, probe, k=1)


def train_mode_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Dense Hessian of the train-mode objective (batch statistics over all of x), on a copy of the model."""
    import copy

    twin = copy.deepcopy(model).train()
    return dense_hessian(twin, x, y, F.cross_entropy)


def run_spectrum(model: nn.Module, probe: il.Probe, **kwargs) -> dict[str, float]:
    from ignite.engine import Engine

    trainer = Engine(lambda e, b: None)
    il.HessianSpectrum(model, probe, k=2, tol=1e-10, **kwargs).attach(trainer)
    trainer.run([0], max_epochs=1)
    return trainer.state.metrics


def test_batchnorm_with_optimizer_measures_the_train_mode_objective_and_says_so(caplog):
    model = small_cnn()  # BatchNorm with running statistics far from the batch statistics
    x, y = classification_data(16, (1, 6, 6))
    probe = il.Probe((x, y), F.cross_entropy)  # eval mode by default
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    train = torch.linalg.eigvalsh(train_mode_hessian(model, x, y)).flip(0)[:2]
    model.eval()
    evals = torch.linalg.eigvalsh(dense_hessian(model, x, y, F.cross_entropy)).flip(0)[:2]
    assert not torch.allclose(train, evals, rtol=1e-2)  # the two modes really differ here

    with caplog.at_level("WARNING", logger="ignite_landscape.handlers.spectrum"):
        m = run_spectrum(model, probe, optimizer=opt)
    assert sum("model_mode='train'" in r.getMessage() for r in caplog.records) == 1
    assert m["landscape/hessian/train_mode"] == 1.0
    got = torch.tensor([m["landscape/hessian/lambda_1"], m["landscape/hessian/lambda_2"]], dtype=torch.float64)
    torch.testing.assert_close(got, train, rtol=1e-8, atol=0)
    assert m["landscape/hessian/stability_ratio"] == pytest.approx(float(train[0]) / 20.0, rel=1e-8)

    # Asked for explicitly, or without an optimizer: the probe's (eval) mode, silently.
    caplog.clear()
    with caplog.at_level("WARNING", logger="ignite_landscape.handlers.spectrum"):
        explicit = run_spectrum(model, probe, optimizer=opt, model_mode="eval")
        plain = run_spectrum(model, probe)
    assert not caplog.records
    assert explicit["landscape/hessian/train_mode"] == 0.0
    for metrics in (explicit, plain):
        assert metrics["landscape/hessian/lambda_1"] == pytest.approx(float(evals[0]), rel=1e-8)
    with pytest.raises(ValueError, match="model_mode"):
        il.HessianSpectrum(model, probe, model_mode="training")


def test_batchnorm_recalibration_ignores_a_training_autocast_region():
    model = small_cnn().float()
    other = small_cnn(seed=1).float()
    x, y = classification_data(12, (1, 6, 6))
    x = x.float()
    probe = il.Probe((x, y), F.cross_entropy, batch_size=6)
    bn_loader = [(x[:6], y[:6]), (x[6:], y[6:])]
    plain = il.interpolate(model, model, other, probe, steps=3, bn_loader=bn_loader)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = il.interpolate(model, model, other, probe, steps=3, bn_loader=bn_loader)
    assert plain.bn_recalibrated and torch.equal(plain.loss, inside.loss)


def test_state_dicts_saved_from_wrappers_are_read_with_the_models_names():
    model = mlp(seed=7)
    other = mlp(seed=8)
    x, y = classification_data(10, (5,))
    probe = il.Probe((x, y), F.cross_entropy)
    want = il.interpolate(model, model, other, probe, steps=3).loss
    ddp_style = {f"module.{k}": v for k, v in other.state_dict().items()}
    compiled_style = torch.compile(other, backend="aot_eager").state_dict()
    assert all(k.startswith("_orig_mod.") for k in compiled_style)
    for saved in (ddp_style, compiled_style):
        assert torch.equal(il.interpolate(model, model, saved, probe, steps=3).loss, want)
        handler = il.ModeConnectivity(model, probe, reference=saved, steps=3)
        assert handler.reference.keys() == other.state_dict().keys()
    with pytest.raises(ValueError, match="missing"):
        il.interpolate(model, model, {f"head.{k}": v for k, v in other.state_dict().items()}, probe)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_torchscript_modules_are_refused_at_construction():
    model = torch.jit.script(mlp())
    probe = il.Probe(classification_data(8, (5,)), F.cross_entropy)
    with pytest.raises(TypeError, match="TorchScript"):
        il.HessianSpectrum(model, probe)
    with pytest.raises(TypeError, match="TorchScript"):
        il.hessian_eigenvalues(model, probe, k=1)
