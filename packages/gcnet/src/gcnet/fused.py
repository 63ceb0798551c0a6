"""The GC block's fused attention pooling: :meth:`gcnet.gc_block.GlobalContextBlock.context` in fewer passes.

Same result as the block's step-by-step context modelling (Cao et al., GCNet, TPAMI, Eq. 5, first term),
``c = sum_j softmax_j(W_k x_j + b_k) x_j``, with a hand-written backward. Autograd's backward of the
step-by-step version writes two full-size (B, C, H, W) gradients for ``x`` (one through the 1x1 conv
``W_k``, one through the weighted sum) and adds them; here both come from one batched matrix product,

``dL/dx_j = g a_j + W_k^T (dL/dlogit_j) = [g, W_k^T] @ [a_j, dL/dlogit_j]^T``  (a (C, 2) x (2, N) product),

and the attention logits are a matrix-vector product instead of a C -> 1 convolution, whose weight gradient
is slow in oneDNN. On CPU this makes the GC block's training step several times cheaper at stage-3 sizes,
which is where GC-ResNet-50 loses most against ResNet-50 (docs/benchmarks.md).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.autograd.function import once_differentiable

__all__ = ["attention_pool"]


class _AttentionPool(torch.autograd.Function):
    """(x, W_k, b_k) -> context (B, C, 1, 1), keeping ``x`` and the attention (B, 1, N) for backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        b, c = x.shape[:2]
        flat = x.reshape(b, c, -1)
        logits = torch.matmul(weight.reshape(1, 1, c).to(x.dtype), flat)  # (B, 1, N)
        if bias is not None:
            logits = logits + bias.to(x.dtype).reshape(1, 1, 1)
        attn = logits.softmax(dim=-1)
        ctx.save_for_backward(x, weight, attn)
        ctx.has_bias = bias is not None
        return torch.bmm(flat, attn.transpose(1, 2)).unsqueeze(-1)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, attn = ctx.saved_tensors
        b, c = x.shape[:2]
        flat = x.reshape(b, c, -1)
        g = grad.reshape(b, c, 1).to(x.dtype)
        # softmax backward: dL/dlogit = a * (dL/da - <a, dL/da>), with dL/da_j = g . x_j
        grad_attn = torch.bmm(g.transpose(1, 2), flat)
        grad_logits = attn * (grad_attn - (attn * grad_attn).sum(dim=-1, keepdim=True))
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            left = torch.cat([g, weight.reshape(1, c, 1).to(x.dtype).expand(b, c, 1)], dim=2)
            grad_x = torch.bmm(left, torch.cat([attn, grad_logits], dim=1)).view_as(x)
        if ctx.needs_input_grad[1]:
            grad_weight = torch.matmul(flat, grad_logits.transpose(1, 2)).sum(0)
            grad_weight = grad_weight.reshape(weight.shape).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_logits.sum().reshape(1).to(weight.dtype)
        return grad_x, grad_weight, grad_bias


def attention_pool(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Attention pooling ``sum_j softmax_j(W_k x_j + b_k) x_j``: (B, C, H, W) -> (B, C, 1, 1).

    Args:
        x: the feature map.
        weight: ``conv_mask.weight``, (1, C, 1, 1).
        bias: ``conv_mask.bias``, (1,), or None.
    """
    return _AttentionPool.apply(x, weight, bias)
