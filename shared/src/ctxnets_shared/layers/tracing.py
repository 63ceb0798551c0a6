"""Whether a layer's input is being traced rather than computed, for layers whose faster eager path must
give way to the plain ops that tracers and exporters record."""

from __future__ import annotations

import torch
import torch.nn as nn

from ctxnets_shared.layers.chunking import images_per_chunk

__all__ = ["fused_cpu_path", "is_plain_cpu", "is_traced"]


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


def fused_cpu_path(
    x: torch.Tensor, module: nn.Module, hidden: int | None = None, chunk_bytes: int | None = None
) -> str | None:
    """Which fused CPU path ``module`` may take for ``x``: ``"inference"`` when no gradient is needed,
    ``"training"`` when one is, None for the plain ops (tracing, export, another device, autocast).

    Under ``torch.compile`` a training path is meant to run eagerly, through ``torch.compiler.disable``
    (a graph break), since an autograd Function whose backward writes into buffers it owns is an
    eager-memory device that a traced graph gains nothing from. The break pays only where the Function
    avoids allocations glibc would map fresh: given the layer's widest activation (``hidden`` channels at
    x's size) and its ``chunk_bytes``, compiled training takes the Function only when the batch needs
    more than one chunk (:func:`images_per_chunk`), and otherwise gets None, so the plain ops stay in the
    graph. That suits a layer whose plain ops inductor runs about as well as the Function (CONTAINER's
    MLP: compiled training 0.81x-0.86x -> 0.86x-0.97x ResNet-50's); a layer whose Function saves more
    (HIRI-ViT's CFFN keeps one hidden tensor of three) leaves both None and always takes it
    (docs/benchmarks.md).
    """
    if not is_plain_cpu(x):
        return None
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad or any(p.requires_grad for p in module.parameters())
    )
    if not needs_grad:
        return "inference"
    one_chunk = (
        hidden is not None
        and chunk_bytes is not None
        and images_per_chunk(x, hidden, chunk_bytes) >= x.shape[0]
    )
    if one_chunk and torch.compiler.is_compiling():
        return None
    return "training"
