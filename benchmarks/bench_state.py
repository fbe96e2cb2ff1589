"""What each handler keeps: its ``state_dict()`` on disk and its history in memory, after 1 and after N firings.

The main job's setting (DigitsCNN, SGD η = 0.2, batch 32) with every handler of ``examples/common.py`` built by
``landscape_handlers`` with the main job's defaults (top-5 spectrum, 30 trace HVPs, 21-point slices, ...) and
firing every epoch on a fixed probe. Per handler: the bytes of ``torch.save(handler.state_dict())`` after the
first firing and after the last, the growth per firing between them, and the pickled size of the history per
firing (the whole history pickled at once, divided by its length). Parameter-sized buffers a handler keeps on
purpose (warm-start eigenvectors, slice directions, reference weights) show as the size after one firing; a
history that kept one per firing would show as growth of about ``4 P`` bytes per firing.

Example:
    Run from the repository root::

        python benchmarks/bench_state.py                # 6 firings, probe of 128 samples
        python benchmarks/bench_state.py --firings 3    # a shorter run
"""

from __future__ import annotations

import argparse
import io
import pickle
import sys
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Events, create_supervised_trainer
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import probe_batch  # noqa: E402

from examples import common as example  # noqa: E402
from examples.models import DigitsCNN, digits_loaders  # noqa: E402
from ignite_landscape import Probe  # noqa: E402

__all__ = ["saved_bytes", "main"]


def saved_bytes(state: Any) -> int:
    """Bytes ``torch.save`` writes for ``state``.

    Example:
        >>> saved_bytes({"x": torch.zeros(1000)}) > 4000
        True
    """
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getbuffer().nbytes


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--firings", type=int, default=6, help="epochs, one firing of every handler each (default 6)")
    p.add_argument("--samples", type=int, default=128, help="probe samples (default 128)")
    args = p.parse_args(argv)
    if args.firings < 2:
        p.error("--firings must be at least 2")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = DigitsCNN()
    train, _ = digits_loaders(batch_size=32, seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
    probe = Probe(probe_batch(args.samples), nn.functional.cross_entropy)
    options = dict(
        seed=0, top_k=5, trace_hvps=30, density_steps=20, rho=0.05, slice_steps=21, batch_size=32, uncertainty="none"
    )
    handlers = example.landscape_handlers(example.HANDLER_NAMES, model, probe, optimizer, options)
    trainer = create_supervised_trainer(model, optimizer, nn.functional.cross_entropy)
    for handler in handlers.values():
        handler.attach(trainer, event=Events.EPOCH_COMPLETED)
    first: dict[str, int] = {}

    @trainer.on(Events.EPOCH_COMPLETED(once=1))
    def after_first(engine: Any) -> None:
        first.update({name: saved_bytes(h.state_dict()) for name, h in handlers.items()})

    trainer.run(train, max_epochs=args.firings)
    params = sum(t.numel() for t in model.parameters())
    print(f"DigitsCNN: P = {params} parameters (4P = {4 * params / 1024:.0f} KiB); {args.firings} firings")
    after = f"after {args.firings} (KiB)"
    print(f"{'handler':<16} {'after 1 (KiB)':>13} {after:>14} {'per firing (B)':>15} {'history/firing (B)':>19}")
    for name, h in handlers.items():
        last = saved_bytes(h.state_dict())
        growth = (last - first[name]) / (args.firings - 1)
        # The whole history at once: firings share their definitions, as they do in memory.
        record = len(pickle.dumps(list(h.history))) / max(len(h.history), 1)
        print(f"{name:<16} {first[name] / 1024:>13.1f} {last / 1024:>14.1f} {growth:>15.0f} {record:>19.0f}")


if __name__ == "__main__":
    main()
