"""Whether a layer's input is being traced rather than computed, for layers whose faster eager path must
give way to the plain ops that tracers and exporters record."""

from __future__ import annotations

import torch

__all__ = ["is_plain_cpu", "is_traced"]


def is_traced(x: torch.Tensor) -> bool:
    """True under TorchScript, ``torch.jit.trace`` (ONNX export), ``torch.fx`` and ``torch.export``.

    Checks only what is known without reading ``x``'s values or device, so a caller can test it before
    anything that a ``torch.fx.Proxy`` would refuse (``x.requires_grad``, ``x.device.type``).
    """
    return (
        torch.jit.is_scripting()
        or torch.jit.is_tracing()
        or isinstance(x, torch.fx.Proxy)
        or torch.compiler.is_exporting()
    )


def is_plain_cpu(x: torch.Tensor) -> bool:
    """True when ``x`` is a real CPU tensor (not traced, scripted or exported) and CPU autocast is off:
    where a layer's fused eager CPU path may stand in for its plain ops."""
    # the tracing checks come first: a traced x has no device to read
    return not is_traced(x) and x.device.type == "cpu" and not torch.is_autocast_enabled("cpu")
