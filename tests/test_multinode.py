"""Two "nodes" launched by ``torchrun --nnodes=2 --nproc-per-node=1`` (gloo, rendezvous on 127.0.0.1).

Each node runs tests/multinode_worker.py: DDP training with landscape handlers firing every epoch on
one global probe that the nodes shard between them, rank 0 writing TensorBoard. Here, the weights of
every firing are replayed through the same handlers in one process: the landscape must agree to 1e-5,
and exactly one event file must exist. NCCL is not tested here (no GPU).
"""

from __future__ import annotations

import importlib
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed
import torch.nn.functional as F
from ignite.engine import Engine, Events

import ignite_landscape as il
from tests import multinode_worker as worker
from tests.helpers import mlp

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 150  # the whole launch; a hung rendezvous fails the test instead of the suite


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launcher_unavailable() -> str | None:
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        return "torch.distributed with the gloo backend is not available in this build of torch"
    try:
        importlib.import_module("torch.distributed.run")  # torchrun's module
    except ImportError as exc:
        return f"torchrun (torch.distributed.run) cannot be imported: {exc}"
    return None


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict], Path]:
    reason = _launcher_unavailable()
    if reason is not None:
        print(f"SKIPPED multi-node test: {reason}")
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("multinode")
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("LOCAL_RANK", None)
    launches = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                "--nproc-per-node=1",
                f"--node-rank={node}",
                "--master-addr=127.0.0.1",
                f"--master-port={port}",
                "--max-restarts=0",
                str(ROOT / "tests" / "multinode_worker.py"),
                str(out),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for node in (0, 1)
    ]
    logs = []
    try:
        for p in launches:
            logs.append(p.communicate(timeout=TIMEOUT_S)[0])
    finally:
        for p in launches:
            if p.poll() is None:
                p.kill()
                p.communicate()
    for node, (p, log) in enumerate(zip(launches, logs)):
        assert p.returncode == 0, f"node {node} exited with {p.returncode}:\n{log[-4000:]}"
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)], out / "tb"


def _replay(weights: list[list[torch.Tensor]]) -> dict[str, list[dict[str, float]]]:
    """The same handlers in one process, fired on the same weights in the same order (warm starts too)."""
    x, y = worker.data()
    model = mlp(seed=0)
    probe = il.Probe((x, y), F.cross_entropy, batch_size=16)
    handlers = worker.make_handlers(model, probe)

    def load(engine: Engine, _: object) -> None:
        with torch.no_grad():
            for p, w in zip(model.parameters(), weights[engine.state.epoch - 1]):
                p.copy_(w)

    replay = Engine(load)
    for h in handlers:
        h.attach(replay, Events.EPOCH_COMPLETED)
    replay.run([0], max_epochs=len(weights))
    return {h.name: [dict(f.scalars) for f in h.history] for h in handlers}


def test_two_nodes_form_one_gloo_job(two_nodes):
    runs, _ = two_nodes
    assert [(r["world"], r["rank"], r["backend"]) for r in runs] == [(2, 0, "gloo"), (2, 1, "gloo")]
    assert all(not errors for r in runs for errors in r["errors"].values()), [r["errors"] for r in runs]
    # DDP kept the nodes in step, and both hold the same landscape.
    for a, b in zip(runs[0]["weights"], runs[1]["weights"]):
        assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert _without_seconds(runs[0]["scalars"]) == _without_seconds(runs[1]["scalars"])


def _without_seconds(scalars: dict[str, list[dict[str, float]]]) -> dict[str, list[dict[str, float]]]:
    return {name: [{k: v for k, v in s.items() if k != "seconds"} for s in f] for name, f in scalars.items()}


def test_two_node_landscape_equals_one_process(two_nodes):
    runs, _ = two_nodes
    ranked = runs[0]
    single = _replay(ranked["weights"])
    assert single.keys() == ranked["scalars"].keys()
    compared, worst = 0, 0.0
    for name, firings in single.items():
        assert len(firings) == len(ranked["scalars"][name]) == worker.EPOCHS, name
        for one, two in zip(firings, ranked["scalars"][name]):
            assert one.keys() == two.keys(), name
            for key in one:
                if key == "seconds":
                    continue
                assert math.isfinite(one[key]), f"{name}/{key}"
                assert two[key] == pytest.approx(one[key], rel=1e-5, abs=1e-9), f"{name}/{key}"
                worst = max(worst, abs(two[key] - one[key]) / max(abs(one[key]), 1e-9))
                compared += 1
    print(f"\n{compared} landscape scalars of 2 nodes vs 1 process: largest relative difference {worst:.2e}")
    assert compared >= 20


def test_one_event_file_with_the_landscape(two_nodes):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, log_dir = two_nodes
    files = list(log_dir.rglob("events.out.tfevents*"))
    assert len(files) == 1, files
    acc = EventAccumulator(str(files[0]), size_guidance={"scalars": 0})
    acc.Reload()
    for tag in ("landscape/hessian/lambda_max", "landscape/trace/value", "landscape/noise_scale/b_simple"):
        assert len(acc.Scalars(tag)) == worker.EPOCHS, tag
