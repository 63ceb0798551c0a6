"""Slow, obviously-correct references the fast code is checked against (tests only)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def aggregate_reference(
    value: torch.Tensor, weight: torch.Tensor, kernel_size: int, contiguous: bool = False, dilation: int = 1
):
    """Loop over channels and taps: out[c] = sum_t weight[map(c), t] * shifted value[c].

    ``map(c) = c % M`` (the official CUDA kernel); ``contiguous=True`` uses ``c // (C // M)`` instead, the
    wrong reading of "channels share a map" that the channel-sharing test guards against. Tap (i, j)
    reads the value ``dilation * (i - K // 2)`` rows and ``dilation * (j - K // 2)`` columns away.
    """
    _, C, H, W = value.shape
    M = weight.shape[1]
    p = (kernel_size // 2) * dilation
    padded = F.pad(value, [p, p, p, p])
    out = torch.zeros_like(value)
    for c in range(C):
        m = c // (C // M) if contiguous else c % M
        for i in range(kernel_size):
            for j in range(kernel_size):
                di, dj = i * dilation, j * dilation
                tap = padded[:, c, di : di + H, dj : dj + W]
                out[:, c] = out[:, c] + weight[:, m, i * kernel_size + j] * tap
    return out


def cot_layer_reference(layer, x: torch.Tensor) -> torch.Tensor:
    """The CoT / CoXt layer written out step by step (spec steps 1-6) from the layer's own modules."""
    B, C, H, W = x.shape
    g = layer.groups
    k1 = layer.key_embed(x)  # static context
    # CoXt interleaves query and key channel by channel
    qk = torch.stack([x, k1], dim=2).reshape(B, 2 * C, H, W) if g > 1 else torch.cat([x, k1], dim=1)
    w = layer.embed(qk)  # conv, BN, ReLU, conv, GroupNorm
    v = layer.conv1x1(x)
    halves = []
    for h in range(g):  # per group: value channels and maps of that half
        vh = v[:, h * C // g : (h + 1) * C // g]
        wh = w[:, h * w.shape[1] // g : (h + 1) * w.shape[1] // g]
        K = layer.kernel_size
        halves.append(aggregate_reference(vh, wh.reshape(B, -1, K * K, H, W), K, dilation=layer.dilation))
    k2 = F.silu(layer.bn(torch.cat(halves, dim=1)))  # dynamic context
    logits = layer.se((k1 + k2).mean((2, 3), keepdim=True)).reshape(B, C, 2)
    a = logits.softmax(dim=2)
    return k2 * a[:, :, 0, None, None] + k1 * a[:, :, 1, None, None]
