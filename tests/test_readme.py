"""The README's code blocks run as written on a real digits trainer (the README must stay true)."""

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from ignite.engine import create_supervised_trainer

from tests.helpers import digits_mlp, digits_train_loader

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_quick_start_and_functional_core_run(tmp_path, monkeypatch):
    quick_start, core = _python_blocks()[:2]
    monkeypatch.chdir(tmp_path)  # the quick start logs to runs/exp
    torch.manual_seed(0)
    train_loader = digits_train_loader(batch_size=64)
    model = digits_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = F.cross_entropy
    trainer = create_supervised_trainer(model, optimizer, loss_fn)
    namespace = {"train_loader": train_loader, "loss_fn": loss_fn, "model": model, "optimizer": optimizer}
    namespace.update(trainer=trainer)
    exec(compile(quick_start.replace("steps=21", "steps=5"), "README quick start", "exec"), namespace)
    trainer.run(train_loader, max_epochs=2)
    metrics = trainer.state.metrics
    for key in ("hessian/lambda_max", "hessian/lambda_5", "sharpness/value", "connectivity/loss_barrier"):
        assert torch.isfinite(torch.tensor(metrics[f"landscape/{key}"])), key
    assert metrics["landscape/hessian/lambda_1"] == metrics["landscape/hessian/lambda_max"] > 0
    assert trainer.state.landscape["slice2d"].loss.shape == (5, 5)
    assert list((tmp_path / "runs" / "exp").glob("events.out.tfevents.*"))

    state_a = {k: v.clone() for k, v in model.state_dict().items()}
    state_b = {k: v + 0.01 for k, v in state_a.items()}
    namespace.update(state_a=state_a, state_b=state_b)
    exec(compile(core.replace("steps=21", "steps=5"), "README functional core", "exec"), namespace)
    res = namespace["res"]
    assert res.eigenvalues.shape == (10,) and res.converged.all()
