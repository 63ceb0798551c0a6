"""Local K x K aggregation of the value map with per-pixel weights, in pure PyTorch.

The dynamic context of a CoT block (Li et al., "Contextual Transformer Networks for Visual Recognition",
TPAMI, Eq. 3) multiplies each value channel's K x K neighbourhood by attention weights that differ per
pixel. The official code runs this as a CuPy CUDA kernel; here it is shift-and-accumulate: pad the value
once, then for each of the K*K offsets add ``shifted value * weight`` into the output. Nothing of size
K*K times the value tensor is ever materialised, and the ops (pad, slice, multiply, add) trace cleanly
through autocast, ``torch.compile``, TorchScript and ONNX export.

Channel sharing is strided: with ``M`` weight maps, value channel ``c`` uses map ``c % M`` (the CUDA
kernel's indexing). Viewing the value as ``(B, C // M, M, H, W)`` lines channel ``c = r * M + m`` up
with map ``m`` by broadcasting, so the shared weights are never repeated in memory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["local_aggregate"]


def local_aggregate(value: torch.Tensor, weight: torch.Tensor, kernel_size: int = 3) -> torch.Tensor:
    """Per-pixel weighted K x K sum with zero padding and strided channel sharing.

    ``out[b, c, h, w] = sum_{i,j} weight[b, c % M, i * K + j, h, w] * value[b, c, h + i - K//2, w + j - K//2]``

    Args:
        value: (B, C, H, W) value map V.
        weight: (B, M, K*K, H, W) attention weights, M dividing C; tap ``i * K + j`` is row i, column j.
        kernel_size: K, odd.

    Returns:
        (B, C, H, W) aggregated map, in the dtype of ``value * weight``.
    """
    B, C, H, W = value.shape
    M = weight.shape[1]
    if weight.dim() != 5 or weight.shape[2] != kernel_size * kernel_size or C % M != 0:
        raise ValueError(
            "weight must be (B, M, K*K, H, W) with M dividing the value's "
            + str(C)
            + " channels and K*K = "
            + str(kernel_size * kernel_size)
            + ", got "
            + str(list(weight.shape))
        )
    pad = kernel_size // 2
    # (B, R, M, H, W): channel c = r * M + m meets map m through broadcasting over R
    v = F.pad(value, [pad, pad, pad, pad]).view(B, C // M, M, H + 2 * pad, W + 2 * pad)
    w = weight.unsqueeze(1)
    out = v[:, :, :, 0:H, 0:W] * w[:, :, :, 0]
    for t in range(1, kernel_size * kernel_size):
        i = t // kernel_size
        j = t % kernel_size
        out = out + v[:, :, :, i : i + H, j : j + W] * w[:, :, :, t]
    return out.reshape(B, C, H, W)
