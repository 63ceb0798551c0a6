"""The 'same' depthwise convolution of CONTAINER's static affinity (Gao et al., "Container: Context
Aggregation Networks", NeurIPS 2021, Sec. 3.2: a depthwise conv is a static, banded affinity; 5x5 in
CONTAINER-LIGHT), with a faster CPU weight gradient.

On CPU, oneDNN has a depthwise kernel for the weight gradient only up to three columns wide (with at
most one column of padding). A 5x5 depthwise weight gradient falls to its generic grouped kernel, which
treats every 16 channels as a dense 16 x 16 block: 16x the arithmetic, and 10-20x the time of the
forward pass on this project's machine (docs/benchmarks.md). :func:`depthwise_weight_grad` computes the
same gradient in blocks of three columns, each of which oneDNN's depthwise kernel takes.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ctxnets_shared.layers import is_plain_cpu

__all__ = ["DepthwiseConv2d", "depthwise_weight_grad"]


def _check_kernel_size(kernel_size: int) -> None:
    if kernel_size % 2 == 0 or kernel_size < 1:
        raise ValueError(f"a 'same' depthwise conv needs kernel_size odd and positive, got {kernel_size}")


def _shift_columns(grad: torch.Tensor, s: int) -> torch.Tensor:
    # out[..., w] = grad[..., w - s], zero where w - s is outside the map
    width = grad.shape[-1]
    if abs(s) >= width:
        return torch.zeros_like(grad)
    shifted = F.pad(grad[..., : width - s], (s, 0)) if s > 0 else F.pad(grad[..., -s:], (0, -s))
    return shifted.contiguous(memory_format=torch.channels_last)


def depthwise_weight_grad(grad: torch.Tensor, x: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """``dL/dW`` of a stride-1 depthwise ``k x k`` convolution with ``k // 2`` zero padding.

    With ``p = k // 2``, column ``p + d`` of the gradient is ``sum_{b,h,w} g[b,:,h,w] x[b,:,h+i-p,w+d]``
    (row ``i``). A ``k x 3`` depthwise weight gradient with one column of padding gives the columns
    ``d = -1, 0, 1``; against ``g`` shifted ``s`` columns (``g'[..., w] = g[..., w - s]``) it gives
    ``d = s - 1, s, s + 1``, of which ``s`` and ``s + 1`` are whole (the shift drops only terms whose
    ``x`` lies outside the map for them), and mirrored for ``-s``. So ``s = 2, 4, ...`` cover the rest.

    Args:
        grad: (B, C, H, W) gradient of the output.
        x: (B, C, H, W) input.
        kernel_size: k, odd.

    Returns:
        (C, 1, k, k), equal to ``torch.ops.aten.convolution_backward``'s weight gradient.
    """
    _check_kernel_size(kernel_size)
    channels, p = x.shape[1], kernel_size // 2
    x = x.contiguous(memory_format=torch.channels_last)
    grad = grad.contiguous(memory_format=torch.channels_last)
    weight_grad = [False, True, False]
    if p <= 1:
        full = x.new_empty(channels, 1, kernel_size, kernel_size)  # only its shape is read
        return _depthwise_backward(grad, x, full, [p, p], weight_grad)
    narrow = x.new_empty(channels, 1, kernel_size, 3)

    def three_columns(g: torch.Tensor) -> torch.Tensor:
        return _depthwise_backward(g, x, narrow, [p, 1], weight_grad)

    out = x.new_empty(channels, 1, kernel_size, kernel_size)
    out[..., p - 1 : p + 2] = three_columns(grad)
    for s in range(2, p + 1, 2):
        n = min(2, p - s + 1)  # columns s, s + 1 while they are inside the kernel
        out[..., p + s : p + s + n] = three_columns(_shift_columns(grad, s))[..., 1 : 1 + n]
        out[..., p - s - n + 1 : p - s + 1] = three_columns(_shift_columns(grad, -s))[..., 2 - n : 2]
    return out


def _depthwise_backward(
    grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, padding: list[int], mask: list[bool]
) -> torch.Tensor:
    # the one gradient of (input, weight, bias) that mask selects
    out: Any = torch.ops.aten.convolution_backward(
        grad, x, weight, None, [1, 1], padding, [1, 1], False, [0, 0], x.shape[1], mask
    )
    return out[mask.index(True)]


class _DepthwiseConvFunction(torch.autograd.Function):
    """(x, W, b) -> the 'same' depthwise convolution, with :func:`depthwise_weight_grad` in backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, padding=weight.shape[-1] // 2, groups=weight.shape[0])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        k = weight.shape[-1]
        grad_x = grad_w = grad_b = None
        if need_x:
            grad_x = _depthwise_backward(grad, x, weight, [k // 2, k // 2], [True, False, False])
        if need_w:
            grad_w = depthwise_weight_grad(grad, x, k)
        if need_b and ctx.has_bias:
            grad_b = grad.sum((0, 2, 3))
        return grad_x, grad_w, grad_b


class DepthwiseConv2d(nn.Conv2d):
    """A stride-1 depthwise ``k x k`` convolution with ``k // 2`` zero padding: (B, C, H, W) -> (B, C, H, W).

    An ``nn.Conv2d`` (same parameters and state-dict keys) whose training step on CPU computes the
    weight gradient with :func:`depthwise_weight_grad` when the kernel is wider than 3.

    Args:
        dim: channels C.
        kernel_size: k, odd.
        bias: a per-channel bias.
        fast_weight_grad: the faster CPU weight gradient (same values, to float rounding); False, or
            another device, autocast, tracing or export, runs ``nn.Conv2d`` as it is.
    """

    def __init__(self, dim: int, kernel_size: int, bias: bool = True, fast_weight_grad: bool = True) -> None:
        _check_kernel_size(kernel_size)
        super().__init__(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, bias=bias)
        self.fast_weight_grad = fast_weight_grad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        if not torch.jit.is_scripting() and (
            self.fast_weight_grad
            and self.kernel_size[1] > 3
            and is_plain_cpu(x)
            and torch.is_grad_enabled()
            and self.weight.requires_grad
        ):
            # traceable, so under torch.compile it stays in the graph
            return _DepthwiseConvFunction.apply(x, self.weight, self.bias)
        return self._conv_forward(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, fast_weight_grad={self.fast_weight_grad}"
