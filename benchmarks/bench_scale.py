"""Cost of each handler at seed scale: seconds and peak memory per firing, as multiples of a training pass.

The seed study's CIFAR-shaped models (examples/cifar10.py: the vanilla CNN, 1.8M parameters, and the
ResNet with BatchNorm, 2.1M) on in-memory CIFAR-shaped data (the digits, upscaled to 3×32×32, so no
download is needed). For each model:

* a **training pass**: one SGD epoch (batch 128, train mode) over the probe's samples, timed and its
  peak memory measured the same way as the firings;
* each handler with its **library defaults** on a probe of ``--probe`` samples (batch 128), attached
  to an engine and fired once (a first firing: cold Lanczos, graph cache built), process CPU seconds
  (robust on a shared machine; the wall time is printed too) and peak memory, each divided by the
  training pass's.

Peak memory is the largest resident set size (sampled every millisecond by a thread) above the size
just before the call, on the CPU; on CUDA ``torch.cuda.max_memory_allocated`` above the allocation
before (glibc's free heap memory is handed back to the OS before each call, so memory an earlier call
freed does not hide the next one's peak). ``--isolate`` measures each (model, handler) in a fresh
process (the training pass again each time).

Example:
    python benchmarks/bench_scale.py                                   # both models, every handler, probe 512
    python benchmarks/bench_scale.py --models resnet --handlers hessian,sharpness
    python benchmarks/bench_scale.py --isolate --json scale.json       # one process per handler
    python benchmarks/bench_scale.py --quick                           # tiny models and probe (the smoke test)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ignite_landscape as il  # noqa: E402
from examples.cifar10 import ResNet, VanillaCNN  # noqa: E402
from examples.models import digits_tensors  # noqa: E402

__all__ = ["main", "cifar_shaped_digits", "peak_memory", "HANDLERS"]

HANDLERS = ("hessian", "trace", "density", "sharpness", "slice1d", "slice2d", "connectivity", "noise_scale")
BATCH = 128


def cifar_shaped_digits(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` digits as 3×32×32 images (bilinear upscaling, the gray channel repeated), standardised."""
    x, y, _, _ = digits_tensors(seed=seed)
    reps = -(-n // len(y))
    x, y = x.repeat(reps, 1, 1, 1)[:n], y.repeat(reps)[:n]
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    return ((x - x.mean()) / x.std()).contiguous(), y


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _release_free_memory() -> None:
    # Memory an earlier call freed stays in glibc's heap and would be reused without raising the RSS,
    # hiding the next call's peak: hand it back to the OS first.
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the peaks may then read low
        pass


def peak_memory(fn: Callable[[], Any], device: torch.device) -> tuple[float, float, int, Any]:
    """``(wall seconds, process CPU seconds, peak bytes above the start, result)`` of ``fn()``.

    The CPU seconds are what to compare on a shared machine: other processes stretch the wall time of a
    call, much less its CPU time.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        torch.cuda.synchronize(device)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        return wall, cpu, torch.cuda.max_memory_allocated(device) - before, out
    _release_free_memory()
    before = _rss()
    peak = [before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.001):
            peak[0] = max(peak[0], _rss())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        out = fn()
    finally:
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        stop.set()
        thread.join()
    return wall, cpu, max(peak[0], _rss()) - before, out


def build(name: str, quick: bool) -> nn.Module:
    torch.manual_seed(0)
    if name == "vanilla":
        return VanillaCNN(hidden=8) if quick else VanillaCNN()
    return ResNet(widths=(4, 8, 16)) if quick else ResNet()


def make_handler(name: str, model: nn.Module, probe: il.Probe, bn_loader: Any) -> il.LandscapeHandler:
    """``name`` with the library defaults (connectivity recalibrates BatchNorm on the probe's samples)."""
    make = {
        "hessian": lambda: il.HessianSpectrum(model, probe),
        "trace": lambda: il.HessianTrace(model, probe),
        "density": lambda: il.HessianDensity(model, probe),
        "sharpness": lambda: il.Sharpness(model, probe),
        "slice1d": lambda: il.LossSlice(model, probe, dims=1),
        "slice2d": lambda: il.LossSlice(model, probe, dims=2),
        "connectivity": lambda: il.ModeConnectivity(model, probe, bn_loader=bn_loader),
        "noise_scale": lambda: il.GradientNoiseScale(model, probe),
    }
    return make[name]()


def training_pass(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """One SGD epoch over ``x`` in batches of :data:`BATCH` (on a copy: the measured model stays put)."""
    import copy

    scratch = copy.deepcopy(model).train()
    opt = torch.optim.SGD(scratch.parameters(), lr=0.01, momentum=0.9)
    for i in range(0, len(y), BATCH):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(scratch(x[i : i + BATCH]), y[i : i + BATCH]).backward()
        opt.step()


def measure_model(name: str, args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    model = build(name, args.quick).to(device)
    params = sum(p.numel() for p in model.parameters())
    x, y = cifar_shaped_digits(args.probe)
    x, y = x.to(device), y.to(device)
    probe = il.Probe((x, y), nn.CrossEntropyLoss(), batch_size=min(BATCH, args.probe), device=device)
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    bn_loader = [(x[i : i + BATCH], y[i : i + BATCH]) for i in range(0, len(y), BATCH)] if has_bn else None
    training_pass(model, x[:BATCH], y[:BATCH])  # warm-up: first-call allocations and kernel selection
    train_wall, train_s, train_mem, _ = peak_memory(lambda: training_pass(model, x, y), device)
    print(
        f"\n== {name}: {params:,} parameters, probe {args.probe}, {torch.get_num_threads()} thread(s), {device}; "
        f"training pass over the same {args.probe} samples: {train_s:.2f} CPU s ({train_wall:.2f} s wall), "
        f"peak +{train_mem / 2**20:.0f} MiB",
        flush=True,
    )
    print(f"{'handler':<14}{'CPU s':>9}{'wall s':>9}{'x train':>9}{'peak MiB':>10}{'x train':>9}  notes", flush=True)
    rows = []
    for handler_name in args.handlers:
        handler = make_handler(handler_name, model, probe, bn_loader)
        engine = Engine(lambda e, b: None)
        handler.attach(engine, Events.EPOCH_COMPLETED)
        wall, seconds, mem, _ = peak_memory(partial(engine.run, [0], max_epochs=1), device)
        firing = handler.history[-1]
        scalars = firing.scalars
        note = ", ".join(f"{k}={scalars[k]:.0f}" for k in ("num_hvps", "num_forwards", "num_grads") if k in scalars)
        if firing.failed:
            note = f"FAILED: {firing.error}"
        row = {
            "model": name,
            "handler": handler_name,
            "cpu_seconds": seconds,
            "wall_seconds": wall,
            "peak_bytes": mem,
            "train_cpu_seconds": train_s,
            "train_wall_seconds": train_wall,
            "train_peak_bytes": train_mem,
            "failed": firing.failed,
        }
        rows.append(row)
        print(
            f"{handler_name:<14}{seconds:>9.2f}{wall:>9.2f}{seconds / train_s:>9.1f}{mem / 2**20:>10.0f}"
            f"{mem / max(train_mem, 1):>9.1f}  {note}",
            flush=True,
        )
        del handler, engine
    return rows


def _isolated(model: str, handler: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        argv = [sys.executable, __file__, "--models", model, "--handlers", handler, "--probe", str(args.probe)]
        argv += ["--threads", str(args.threads), "--device", args.device, "--json", str(out)]
        argv += ["--quick"] if args.quick else []
        subprocess.run(argv, check=True)
        return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="vanilla,resnet", help="comma-separated: vanilla, resnet")
    p.add_argument("--handlers", default=",".join(HANDLERS), help=f"comma-separated subset of {','.join(HANDLERS)}")
    p.add_argument("--probe", type=int, default=512, help="probe samples (the training pass uses the same)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="tiny models and a 16-sample probe (smoke test)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows to this file")
    p.add_argument("--isolate", action="store_true", help="each model and handler in its own process")
    args = p.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.handlers = [h for h in args.handlers.split(",") if h]
    for m in args.models:
        if m not in ("vanilla", "resnet"):
            p.error(f"--models: unknown {m!r}; choose from vanilla, resnet")
    unknown = sorted(set(args.handlers) - set(HANDLERS))
    if unknown:
        p.error(f"--handlers: unknown {unknown}; choose from {','.join(HANDLERS)}")
    if args.quick:
        args.probe = min(args.probe, 16)
    if args.probe < 2:
        p.error("--probe must be at least 2")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.isolate:
        rows = [row for m in args.models for h in args.handlers for row in _isolated(m, h, args)]
    else:
        rows = [row for m in args.models for row in measure_model(m, args, device)]
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
