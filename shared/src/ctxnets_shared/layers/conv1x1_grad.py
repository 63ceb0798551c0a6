"""Gradients of stride-1, unpadded 1x1 convolutions, for custom autograd Functions whose backward writes
into buffers it already owns (CONTAINER's MLP, HIRI-ViT's CFFN).

On CPU every fresh activation-sized tensor costs page faults as well as the arithmetic (glibc returns
large freed blocks to the kernel; docs/benchmarks.md measures it). A backward that writes a 1x1
convolution's input gradient into the saved activation it no longer needs avoids one such allocation.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["conv1x1_backward", "conv1x1_input_grad_into"]


def conv1x1_backward(
    grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, mask: list[bool]
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """``(dL/dx, dL/dW, dL/db)`` of ``conv2d(x, weight, bias)`` with a 1x1 kernel, stride 1, no padding;
    ``mask`` says which of the three to compute (the others are None).

    Args:
        grad: (B, C_out, H, W) gradient of the output.
        x: (B, C_in, H, W) input.
        weight: (C_out, C_in, 1, 1).
        mask: three booleans, for x, weight and bias.
    """
    out: Any = torch.ops.aten.convolution_backward(
        grad, x, weight, [weight.shape[0]], [1, 1], [0, 0], [1, 1], False, [0, 0], 1, mask
    )
    return out[0], out[1], out[2]


def conv1x1_input_grad_into(
    grad: torch.Tensor, weight: torch.Tensor, buffer: torch.Tensor
) -> torch.Tensor | None:
    """``dL/dx`` of a 1x1 convolution written into ``buffer`` (x's shape), or None when ``buffer`` is
    neither NCHW- nor channels-last-contiguous (the caller then allocates).

    A 1x1 convolution is a matrix product over channels, so its input gradient is ``W^T g`` at every
    position: a batched (C_in, C_out) x (C_out, H*W) product in NCHW, one (B*H*W, C_out) x (C_out, C_in)
    product in channels-last.

    Args:
        grad: (B, C_out, H, W) gradient of the output.
        weight: (C_out, C_in, 1, 1).
        buffer: (B, C_in, H, W) tensor to overwrite.
    """
    b, c_in = buffer.shape[:2]
    w = weight.reshape(weight.shape[0], c_in)
    if buffer.is_contiguous():
        g = grad.contiguous().reshape(b, w.shape[0], -1)
        torch.matmul(w.t(), g, out=buffer.reshape(b, c_in, -1))
        return buffer
    if buffer.is_contiguous(memory_format=torch.channels_last):
        g = grad.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1).reshape(-1, w.shape[0])
        torch.mm(g, w, out=buffer.permute(0, 2, 3, 1).reshape(-1, c_in))
        return buffer
    return None
