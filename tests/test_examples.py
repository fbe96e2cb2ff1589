"""The examples: the seed models, the CIFAR-10 loading path on a generated folder, train/resume, digits main()."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from examples import cifar10

EVENT_GLOB = "events.out.tfevents.*"


def _write_batch(path: Path, rng: np.random.Generator, n: int, label: bytes) -> None:
    # The real files are Python 2 pickles with str keys; torchvision reads them with encoding="latin1".
    entry = {
        "batch_label": label.decode(),
        "labels": rng.integers(0, 10, size=n).tolist(),
        "data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        "filenames": [f"img_{i}.png" for i in range(n)],
    }
    with open(path, "wb") as f:
        pickle.dump(entry, f, protocol=2)


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CIFAR-10 folder in the real python format: 5 train batches of 8, a test batch of 16."""
    root = tmp_path_factory.mktemp("cifar")
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        _write_batch(folder / f"data_batch_{i}", rng, 8, f"training batch {i} of 5".encode())
    _write_batch(folder / "test_batch", rng, 16, b"testing batch 1 of 1")
    meta = {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]}
    meta.update(num_cases_per_batch=8, num_vis=3072)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(meta, f, protocol=2)
    return root


def test_seed_models_have_the_documented_sizes() -> None:
    counts = {name: sum(p.numel() for p in cifar10.build_model(name).parameters()) for name in ("vanilla", "resnet")}
    print(f"parameters: vanilla {counts['vanilla']:,}, resnet {counts['resnet']:,}")
    assert counts == {"vanilla": 1_816_490, "resnet": 2_127_618}
    resnet = cifar10.ResNet()
    blocks = [m for m in resnet.modules() if isinstance(m, cifar10.BasicBlock)]
    assert len(blocks) == 6
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in resnet.modules())
    vanilla = cifar10.VanillaCNN()
    convs = [m.out_channels for m in vanilla.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in vanilla.modules() if isinstance(m, torch.nn.Linear)]
    assert convs == [64, 128, 256] and len(linears) == 2
    x = torch.randn(2, 3, 32, 32)
    assert vanilla(x).shape == resnet(x).shape == (2, 10)


def test_loads_the_generated_folder_through_torchvision(cifar_dir: Path) -> None:
    args = cifar10.parse_args(["--data-dir", str(cifar_dir), "--no-verify", "--max-train-samples", "12"])
    train, probe_set, test = cifar10._datasets(vars(args))
    assert len(train) == len(probe_set) == 12 and len(test) == 16
    x, y = probe_set[0]
    assert x.shape == (3, 32, 32) and 0 <= y < 10
    # The probe set is not augmented: the same sample twice is the same tensor.
    assert torch.equal(probe_set[3][0], probe_set[3][0])
    # Without --no-verify torchvision's md5 check rejects the generated files, with a clear error.
    args = cifar10.parse_args(["--data-dir", str(cifar_dir)])
    with pytest.raises(RuntimeError, match="corrupted"):
        cifar10._datasets(vars(args))


def test_missing_data_dir_without_download_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cifar10.main(["--data-dir", str(tmp_path / "nowhere")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "CIFAR-10 not found" in err and "--download" in err and "nowhere" in err


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--handlers", "hessian,bogus"], "unknown"),
        (["--model", "vgg"], "invalid choice"),
        (["--nproc-per-node", "2"], "--backend"),
        (["--bn-samples", "0"], "--bn-samples must be at least 1"),
    ],
)
def test_cifar_bad_flags(argv: list[str], match: str, cifar_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cifar10.parse_args(["--data-dir", str(cifar_dir), *argv])
    assert exc.value.code == 2
    assert match in capsys.readouterr().err


def _cifar_argv(cifar_dir: Path, out: Path, model: str, epochs: int, *extra: str) -> list[str]:
    return [
        "--data-dir", str(cifar_dir), "--no-verify", "--model", model, "--epochs", str(epochs),
        "--batch-size", "8", "--max-train-samples", "16", "--max-test-samples", "16", "--probe-samples", "4",
        "--max-hvps", "4", "--top-k", "1", "--slice-steps", "3", "--trace-hvps", "6", "--density-steps", "3",
        "--every", "1", "--output-dir", str(out), "--run-name", model, "--num-workers", "0", "--device", "cpu", *extra,
    ]  # fmt: skip


LANDSCAPE_TAGS = (
    "landscape/hessian/lambda_max",
    "landscape/hessian/stability_threshold",
    "landscape/trace/value",
    "landscape/density/negative_mass",
    "landscape/sharpness/value",
    "landscape/slice1d/center_loss",
    "landscape/slice2d/center_loss",
    "landscape/connectivity/loss_barrier",
    "landscape/noise_scale/b_simple",
)


def test_cifar_connectivity_recalibrates_batchnorm_on_a_bounded_subset(
    cifar_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ignite_landscape as il

    seen: list[object] = []

    class Recording(il.ModeConnectivity):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)
            seen.append(self.bn_loader)

    monkeypatch.setattr(il, "ModeConnectivity", Recording)
    argv = _cifar_argv(cifar_dir, tmp_path, "resnet", 1, "--handlers", "connectivity", "--bn-samples", "5")
    cifar10.main(argv)
    (loader,) = seen
    assert sum(len(y) for _, y in loader) == 5  # not the 16 training samples (50,000 on the real set)


@pytest.mark.parametrize("model", ["vanilla", "resnet"])
def test_cifar_one_epoch_writes_checkpoint_and_events(model: str, cifar_dir: Path, tmp_path: Path) -> None:
    from ignite_landscape.report import load_run

    metrics = cifar10.main(_cifar_argv(cifar_dir, tmp_path, model, 1))
    run_dir = tmp_path / model
    assert list((run_dir / "checkpoints").glob("*.pt"))
    assert list(run_dir.glob(EVENT_GLOB))
    run = load_run(run_dir)
    for tag in LANDSCAPE_TAGS:
        assert tag in run.scalars, tag
        assert run.scalars[tag].steps.tolist() == [1]
    assert run.scalars["test/accuracy"].steps.tolist() == [1]
    # What the event file holds is what the trainer measured.
    assert run.scalars["landscape/hessian/lambda_max"].values[0] == pytest.approx(
        metrics["landscape/hessian/lambda_max"], rel=1e-6
    )
    assert run.scalars["test/accuracy"].values[0] == pytest.approx(metrics["test/accuracy"])
    assert metrics["landscape/hessian/stability_threshold"] == pytest.approx((2 + 2 * 0.9) / 0.05)


def test_cifar_resume_continues_with_the_same_directions(cifar_dir: Path, tmp_path: Path) -> None:
    from ignite_landscape.report import load_run

    cifar10.main(_cifar_argv(cifar_dir, tmp_path, "vanilla", 1, "--handlers", "slice1d,sharpness"))
    ckpt_dir = tmp_path / "vanilla" / "checkpoints"
    first = sorted(ckpt_dir.glob("*.pt"))
    assert len(first) == 1
    state1 = torch.load(first[0])
    metrics = cifar10.main(
        _cifar_argv(cifar_dir, tmp_path, "vanilla", 2, "--handlers", "slice1d,sharpness", "--resume", str(ckpt_dir))
    )
    files = sorted(ckpt_dir.glob("*.pt"))
    assert len(files) == 2
    state2 = torch.load(files[-1])
    assert state2["trainer"]["iteration"] == 4  # 2 epochs of 2 iterations
    d1, d2 = state1["landscape_slice1d"], state2["landscape_slice1d"]
    assert d1["extra"]["raw_directions"] is not None  # the draw, re-normalised at every firing
    assert _tensors_equal(d1["extra"]["raw_directions"], d2["extra"]["raw_directions"])
    assert len(d1["history"]) == 1 and len(d2["history"]) == 2
    assert d2["history"][0]["scalars"] == d1["history"][0]["scalars"]
    run = load_run(tmp_path / "vanilla")
    assert run.scalars["landscape/slice1d/center_loss"].steps.tolist() == [1, 2]
    assert run.scalars["train/loss"].steps.tolist() == [1, 2]
    center = run.scalars["landscape/slice1d/center_loss"]
    assert metrics["landscape/slice1d/center_loss"] == pytest.approx(center.last())


def _tensors_equal(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_tensors_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_tensors_equal(x, y) for x, y in zip(a, b))
    return a == b


def test_digits_main_writes_landscape_events(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from examples import digits
    from ignite_landscape.report import load_run

    argv = ["--epochs", "2", "--probe-samples", "32", "--slice-steps", "5", "--top-k", "2", "--trace-hvps", "6"]
    argv += ["--density-steps", "4", "--lr", "0.1", "--every", "1", "--output-dir", str(tmp_path), "--run-name", "tiny"]
    run_dir = digits.main(argv)
    assert run_dir == tmp_path / "tiny"
    out = capsys.readouterr().out
    assert "tensorboard --logdir" in out and str(run_dir) in out
    run = load_run(run_dir)
    for tag in LANDSCAPE_TAGS:
        assert run.scalars[tag].steps.tolist() == [1, 2], tag
    for tag in ("test/accuracy", "test/loss", "train/loss"):
        assert run.scalars[tag].steps.tolist() == [1, 2], tag
    assert run.scalars["landscape/hessian/stability_threshold"].values.tolist() == pytest.approx([20.0, 20.0])
    lam = run.scalars["landscape/hessian/lambda_1"].values
    assert (lam >= run.scalars["landscape/hessian/lambda_2"].values).all() and (lam > 0).all()
    assert {"landscape/hessian/eigenvalues", "landscape/density/spectrum"} <= set(run.histograms)
    assert any(t.startswith("landscape/slice2d/slice_surface") for t in run.tensors)
    # The definitions come with each handler's record (written by the log handler), not as an example's table.
    assert not any(t.startswith("landscape/definitions") for t in run.texts)
    assert run.record("sharpness")["kind"] == "sharpness"
    assert "ρ = 0.05" in run.definitions("sharpness")["value"] and "32 " in run.definitions("sharpness")["probe"]
    assert "2/η with η = 0.1" in run.definitions("hessian")["stability_threshold"]
    assert any(t.startswith("landscape/summary") for t in run.texts)
    assert 0.0 <= run.scalars["test/accuracy"].last() <= 1.0


def test_digits_bad_flags(capsys: pytest.CaptureFixture[str]) -> None:
    from examples import digits

    with pytest.raises(SystemExit) as exc:
        digits.parse_args(["--handlers", "hessian,nope"])
    assert exc.value.code == 2 and "unknown ['nope']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        digits.parse_args(["--every", "0"])
    assert digits.parse_args([]).run_name == "digits-lr0.2-s0"


def test_digits_uncertainty_logs_bands_that_bracket_each_value(tmp_path: Path) -> None:
    from examples import digits
    from ignite_landscape.report import load_run

    argv = ["--epochs", "1", "--probe-samples", "40", "--top-k", "2", "--trace-hvps", "6", "--handlers"]
    argv += ["hessian,trace,sharpness", "--uncertainty", "jackknife", "--output-dir", str(tmp_path), "--run-name", "b"]
    run = load_run(digits.main(argv))
    for value, lo, hi in [
        ("hessian/lambda_1", "hessian/lambda_1_lo", "hessian/lambda_1_hi"),
        ("trace/value", "trace/value_lo", "trace/value_hi"),
        ("sharpness/value", "sharpness/value_lo", "sharpness/value_hi"),
    ]:
        v, low, high = (run.scalars[f"landscape/{t}"].last() for t in (value, lo, hi))
        assert low <= v <= high and high > low, value
    assert digits.parse_args([]).uncertainty == "none"
