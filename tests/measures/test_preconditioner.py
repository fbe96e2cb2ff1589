"""Adam's preconditioned sharpness with per-group learning rates against a dense generalized eigenproblem."""

import logging

import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from ignite.engine import Events

import ignite_landscape as il
from ignite_landscape.handlers.spectrum import adam_preconditioner
from tests.helpers import classification_data, dense_hessian, full_batch_trainer, mlp


def test_per_group_learning_rates_are_folded_into_the_preconditioner(caplog):
    model = mlp(seed=4)
    x, y = classification_data(40, (5,))
    probe = il.Probe((x, y), F.cross_entropy)
    lr0, lr1, b1, b2, eps = 0.01, 0.002, 0.8, 0.95, 1e-5
    opt = torch.optim.AdamW(
        [{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": lr1}],
        lr=lr0,
        betas=(b1, b2),
        eps=eps,
        weight_decay=0.0,
    )

    trainer = full_batch_trainer(model, opt, x, y)
    handler = il.HessianSpectrum(model, probe, k=1, tol=1e-10, optimizer=opt)
    handler.attach(trainer, Events.ITERATION_COMPLETED(every=4))
    with caplog.at_level(logging.WARNING):
        trainer.run([0] * 4, max_epochs=1)
    assert "several learning rates" not in caplog.text  # folded, not warned about

    # The update of group g after t steps is −η_g m/((1 − β₁ᵗ)(√v̂ + ε)) = −η₀ P⁻¹ m with
    # P = (1 − β₁ᵗ)(√v̂ + ε)·η₀/η_g: H u = λ P u is the eigenproblem whose top λ meets (2 + 2β₁)/((1 − β₁)η₀).
    names = [n for n, _ in model.named_parameters()]
    diag = []
    for name, p in model.named_parameters():
        st = opt.state[p]
        t = float(st["step"])
        lr = lr0 if name.startswith("0.") else lr1
        v_hat = st["exp_avg_sq"] / (1 - b2**t)
        diag.append(((1 - b1**t) * (v_hat.sqrt() + eps) * lr0 / lr).reshape(-1))
    P = torch.cat(diag)
    H = dense_hessian(model, x, y, F.cross_entropy, names)
    expected = scipy.linalg.eigh(H.numpy(), torch.diag(P).numpy(), eigvals_only=True).max()
    m = trainer.state.metrics
    assert m["landscape/hessian/preconditioned_lambda_max"] == pytest.approx(float(expected), rel=1e-7)
    assert m["landscape/hessian/preconditioned_threshold"] == pytest.approx((2 + 2 * b1) / ((1 - b1) * lr0))
    # The flat P⁻¹H of the same numbers, densely: its largest eigenvalue is the same.
    dense = torch.linalg.eigvals(torch.diag(1 / P) @ H).real.max()
    assert float(dense) == pytest.approx(float(expected), rel=1e-8)
    # A reference rate other than the first group's scales P (and the eigenvalue) by η_ref/η₀.
    space = handler.space
    scaled = adam_preconditioner(opt, model, space, reference_lr=2 * lr0)
    base = adam_preconditioner(opt, model, space)
    for name in names:
        torch.testing.assert_close(scaled[name], 2 * base[name], rtol=1e-12, atol=0)


def test_zero_learning_rate_group_gives_no_preconditioner():
    model = mlp(seed=5)
    x, y = classification_data(16, (5,))
    opt = torch.optim.Adam([{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 0.0}], lr=0.01)
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()
    space = il.HessianSpectrum(model, il.Probe((x, y), F.cross_entropy), k=1).space
    assert adam_preconditioner(opt, model, space) is None
