"""Gradients of stride-1, unpadded 1x1 convolutions, for the custom autograd Functions of CONTAINER's MLP
and HIRI-ViT's CFFN, whose backward computes only the gradients it needs, a few images at a time.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["conv1x1_backward"]


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
