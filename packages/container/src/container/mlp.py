"""The CONTAINER block's MLP, ``fc2(GELU(fc1(x)))`` with 1x1 convolutions (Gao et al., "Container: Context
Aggregation Networks", NeurIPS 2021, Sec. 4; the released code's ``CMlp``), and its faster CPU paths.

The MLP widens stages 1-2 eightfold at strides 4 and 8, so its hidden activation is by far the largest
tensor in the network: (8, 512, 56, 56) floats, 51 MB, at batch 8 and 224. glibc serves allocations
above 32 MB with fresh pages from the kernel on every call, and touching them costs about as much as a
1x1 convolution over them (docs/benchmarks.md). The faster paths keep the maths and avoid those
allocations:

- inference computes the hidden activation a few images (or rows) at a time, at most ``chunk_bytes``
  of it at once, and applies GELU in place, so every buffer is small enough to be reused and peak
  memory falls too (the chunked feed-forward of Reformer, Kitaev et al. 2020, Sec. 3);
- training uses :class:`_ConvMlpFunction`, which also works a few whole images at a time (so the
  pre-activation it keeps, and every temporary, is a buffer glibc reuses), keeps only the pre-activation
  ``h`` for backward, recomputes ``a = GELU(h)`` there, and writes ``dL/da`` into ``a``'s buffer and
  ``dL/dh`` into ``h``'s once each has been read. Under ``torch.compile`` it runs eagerly, as a graph
  break, where the batch needs more than one chunk (stage 1 at batch 8 and 224): what it saves there
  is allocation, which inductor's generated code does not avoid either. A batch that fits one chunk
  runs the plain layers inside the graph, which measured faster than the break (docs/benchmarks.md).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ctxnets_shared.layers import conv1x1_backward, fused_cpu_path, images_per_chunk

__all__ = ["ConvMlp", "conv_mlp_chunked", "conv_mlp_train"]

#: hidden-activation bytes a chunk of the faster paths holds (under glibc's 32 MB mmap ceiling)
DEFAULT_CHUNK_BYTES = 16 * 2**20


def _conv1x1_input_grad_into(
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


class _ConvMlpFunction(torch.autograd.Function):
    """(x, W1, b1, W2, b2) -> ``W2 * GELU(W1 * x + b1) + b2``, a few images at a time, keeping only each
    chunk's ``h = W1 * x + b1`` for a backward that recomputes ``GELU(h)`` into the buffer its gradient
    then reuses."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        w1: torch.Tensor,
        b1: torch.Tensor | None,
        w2: torch.Tensor,
        b2: torch.Tensor | None,
        per_chunk: int,
    ) -> torch.Tensor:
        hs, outs = [], []
        for xs in x.split(per_chunk):
            h = F.conv2d(xs, w1, b1)
            outs.append(F.conv2d(F.gelu(h), w2, b2))
            hs.append(h)
        ctx.save_for_backward(x, w1, b1, w2)
        # the h chunks live on ctx (not saved_tensors) because backward overwrites them with dL/dh
        ctx.hs = hs
        ctx.per_chunk = per_chunk
        ctx.has_bias = (b1 is not None, b2 is not None)
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, w1, b1, w2 = ctx.saved_tensors
        need_x, need_w1, need_b1, need_w2, need_b2, _ = ctx.needs_input_grad
        mask1 = [need_x, need_w1, need_b1 and ctx.has_bias[0]]
        mask2 = [False, need_w2, need_b2 and ctx.has_bias[1]]
        # a second backward (retain_graph=True) finds the h chunks overwritten by the first one's dL/dh
        hs = ctx.hs or [None] * len(x.split(ctx.per_chunk))
        ctx.hs = None
        grad_xs: list[torch.Tensor] = []
        param_grads: list[torch.Tensor | None] = [None] * 4  # w1, b1, w2, b2
        for xs, gs, h in zip(x.split(ctx.per_chunk), grad.split(ctx.per_chunk), hs):
            h = F.conv2d(xs, w1, b1) if h is None else h
            a = F.gelu(h)
            _, grad_w2, grad_b2 = conv1x1_backward(gs, a, w2, mask2)
            # a and h are ours (never returned), so once read they can hold the gradients; GELU keeps
            # h's strides, so dL/da in a's buffer matches h for the in-place gelu_backward
            grad_a = _conv1x1_input_grad_into(gs, w2, a)
            if grad_a is not None:
                grad_h = torch.ops.aten.gelu_backward.grad_input(grad_a, h, grad_input=h)
            else:  # neither NCHW nor channels-last: plain allocations
                grad_a = conv1x1_backward(gs, a, w2, [True, False, False])[0]
                grad_h = torch.ops.aten.gelu_backward(grad_a, h)
            del a, grad_a
            grad_x, grad_w1, grad_b1 = conv1x1_backward(grad_h, xs, w1, mask1)
            if grad_x is not None:
                grad_xs.append(grad_x)
            for i, g in enumerate((grad_w1, grad_b1, grad_w2, grad_b2)):
                acc = param_grads[i]
                param_grads[i] = g if acc is None or g is None else acc.add_(g)
        grad_x_all = None
        if need_x:
            grad_x_all = grad_xs[0] if len(grad_xs) == 1 else torch.cat(grad_xs)
        grad_w1, grad_b1, grad_w2, grad_b2 = param_grads
        return grad_x_all, grad_w1, grad_b1, grad_w2, grad_b2, None


def conv_mlp_train(
    x: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor | None,
    w2: torch.Tensor,
    b2: torch.Tensor | None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> torch.Tensor:
    """``fc2(GELU(fc1(x)))`` for training: (B, C, H, W) -> (B, C_out, H, W), holding one hidden-size tensor
    for backward instead of two, whole images at a time with at most ``chunk_bytes`` of it per chunk (one
    image when one is larger).

    Args:
        x: input map.
        w1: (hidden, C, 1, 1) ``fc1`` weight; ``b1`` its (hidden,) bias or None.
        w2: (C_out, hidden, 1, 1) ``fc2`` weight; ``b2`` its (C_out,) bias or None.
        chunk_bytes: hidden-activation bytes per chunk.
    """
    return _ConvMlpFunction.apply(x, w1, b1, w2, b2, images_per_chunk(x, w1.shape[0], chunk_bytes))


# torch.compile runs the training Function eagerly, as a graph break (see fused_cpu_path)
_conv_mlp_train_eager = torch.compiler.disable(conv_mlp_train)


def conv_mlp_chunked(
    x: torch.Tensor, fc1: nn.Conv2d, fc2: nn.Conv2d, chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> torch.Tensor:
    """``fc2(GELU(fc1(x)))`` without autograd: (B, C, H, W) -> (B, C_out, H, W), at most ``chunk_bytes``
    of the hidden activation at a time (whole images while one fits, else bands of rows), GELU in place.
    """
    b, _, height, width = x.shape
    row_bytes = fc1.out_channels * width * x.element_size()
    image_bytes = row_bytes * height
    if image_bytes * b <= chunk_bytes:
        return fc2(torch.ops.aten.gelu_(fc1(x)))
    if image_bytes <= chunk_bytes:
        parts = [fc2(torch.ops.aten.gelu_(fc1(xs))) for xs in x.split(chunk_bytes // image_bytes)]
        return torch.cat(parts)
    rows = max(1, chunk_bytes // row_bytes)
    images = [
        torch.cat([fc2(torch.ops.aten.gelu_(fc1(band))) for band in image.split(rows, dim=2)], dim=2)
        for image in x.split(1)
    ]
    return torch.cat(images)


class ConvMlp(nn.Module):
    """``fc2(GELU(fc1(x)))`` with 1x1 convolutions on a (B, C, H, W) map (the block's channel MLP).

    Args:
        dim: input channels C.
        hidden_dim: hidden channels (``mlp_ratio * C``).
        out_dim: output channels (default C).
        fused: the faster paths of the module docstring, on CPU without autocast, in eager mode and under
            ``torch.compile``. False, or any other device, runs the three layers as written (where the
            caching allocator makes allocation cheap).
        chunk_bytes: hidden-activation bytes each chunk of the faster paths holds.
    """

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        out_dim: int | None = None,
        fused: bool = True,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> None:
        super().__init__()
        if chunk_bytes < 1:
            raise ValueError(f"chunk_bytes must be >= 1, got {chunk_bytes}")
        self.fc1 = nn.Conv2d(dim, hidden_dim, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden_dim, out_dim or dim, 1)
        self.fused = fused
        self.chunk_bytes = chunk_bytes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C_out, H, W)."""
        if not torch.jit.is_scripting():
            path = fused_cpu_path(x, self, self.fc1.out_channels, self.chunk_bytes) if self.fused else None
            if path == "inference":
                return conv_mlp_chunked(x, self.fc1, self.fc2, self.chunk_bytes)
            if path == "training":
                return _conv_mlp_train_eager(
                    x, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias, self.chunk_bytes
                )
        return self.fc2(self.act(self.fc1(x)))

    def extra_repr(self) -> str:
        return f"fused={self.fused}, chunk_bytes={self.chunk_bytes}"
