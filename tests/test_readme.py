"""The README's code blocks run as written on a real digits trainer (the README must stay true)."""

import re
from pathlib import Path

import pytest
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


def _section_block(heading: str) -> str:
    """The first python block of the README section ``## heading``."""
    text = README.read_text(encoding="utf-8")
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    (block, *_) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    return block


def test_readme_own_measure_runs_and_matches_its_closed_form(tmp_path, monkeypatch, capsys):
    from ignite_landscape import report
    from ignite_landscape.report.events import load_run

    monkeypatch.chdir(tmp_path)  # the example logs to runs/own
    namespace: dict = {"__name__": "readme_own_measure"}
    exec(compile(_section_block("Writing your own measure"), "README own measure", "exec"), namespace)
    x, trainer, handler = namespace["x"], namespace["trainer"], namespace["handler"]
    closed_form = 2 * float(x[:, 0].double().pow(2).mean())  # H = 2XᵀX/n for a linear model under MSE
    assert len(handler.history) == 2
    for firing in handler.history:  # the Hessian is the same at every weight
        assert firing.kind == "axis_curvature"
        assert firing.scalars["value"] == pytest.approx(closed_form, rel=1e-5)
    printed = [float(v) for v in capsys.readouterr().out.split()]
    assert printed == pytest.approx([closed_form, closed_form], rel=1e-5)
    # Streamed and reported with no code for this measure outside the example.
    run = load_run(tmp_path / "runs" / "own")
    assert run.kind_of("axis_curvature") == "axis_curvature"
    assert run.series("landscape/axis_curvature/value").values.tolist() == pytest.approx([closed_form] * 2, rel=1e-5)
    summary = report.write_report([tmp_path / "runs" / "own"], tmp_path / "report", num_resamples=20).summary
    definition = "H[0, 0]: the loss's curvature along parameter entry 0"
    assert "| axis_curvature | axis_curvature | value |" in summary.read_text() and definition in summary.read_text()
    with pytest.raises(ValueError, match="axis"):
        namespace["AxisCurvatureOptions"](axis=-1)
    assert trainer.state.metrics["landscape/axis_curvature/value"] == handler.history[-1].scalars["value"]
