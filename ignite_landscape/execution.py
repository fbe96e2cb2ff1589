"""How a probe runs the model: eagerly, in the parameters' own dtype, with attention that has a double backward.

Hessian-vector products differentiate the gradient once more. Three things a training script commonly
turns on have no such second derivative or change the function being measured, so
:func:`probe_execution` switches them off for the duration of a probe session, and only then:

* ``torch.compile``: compiled graphs (``aot_autograd``) refuse ``create_graph=True``. A compiled
  top-level module is measured through its original module (:func:`~ignite_landscape.params.unwrap_model`,
  same parameter objects); compiled submodules and modules compiled in place (``module.compile()``)
  run eagerly under ``torch.compiler.set_stance("force_eager")``.
* Scaled dot-product attention: the fused CPU (flash) kernel has no double backward. The math kernel
  computes the same function with differentiable operations, so it is the only backend enabled.
* Autocast: a probe measures the model's function in its parameters' dtype (float32 for a usual
  model, float64 for a float64 one), never a bf16/fp16 autocast approximation of it, even when the
  probe runs inside a training step's autocast region.

Example:
    >>> import torch
    >>> model = torch.nn.Linear(3, 1)
    >>> with torch.autocast("cpu", dtype=torch.bfloat16):
    ...     with probe_execution(model, torch.device("cpu")):
    ...         out = model(torch.ones(1, 3))
    >>> out.dtype
    torch.float32
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch
from torch import nn

__all__ = ["probe_execution", "is_compiled"]


def is_compiled(module: nn.Module) -> bool:
    """Whether ``module`` is a ``torch.compile`` wrapper or was compiled in place (``module.compile()``)."""
    # torch._dynamo is only in sys.modules once something was compiled: checking there never imports it.
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    if eval_frame is not None and isinstance(module, eval_frame.OptimizedModule):
        return True
    return getattr(module, "_compiled_call_impl", None) is not None


@contextmanager
def probe_execution(model: nn.Module, device: torch.device | None) -> Iterator[None]:
    """Run ``model`` eagerly, without autocast and with the math attention kernel inside this block.

    Every setting is restored on exit, so nothing leaks into training.

    Args:
        model: the (unwrapped) model the probe evaluates.
        device: the probe's device (autocast is disabled for its type and for the CPU).
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with ExitStack() as stack:
        for device_type in sorted({"cpu", device.type if device is not None else "cpu"}):
            if torch.amp.is_autocast_available(device_type):  # autocast(device_type=...) raises otherwise
                stack.enter_context(torch.autocast(device_type=device_type, enabled=False))
        stack.enter_context(sdpa_kernel(SDPBackend.MATH))
        if any(is_compiled(m) for m in model.modules()):
            stack.enter_context(torch.compiler.set_stance("force_eager"))
        yield
