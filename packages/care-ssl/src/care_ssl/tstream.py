"""The T-stream transformer of CARE: bottleneck-transformer (BoTNet-style) blocks on the CNN's stage-4 map.

Paper: "Revitalizing CNN Attentions via Transformers in Self-Supervised Visual Representation Learning"
(Ge et al., NeurIPS 2021), Sec. 3.2, Fig. 3 and Eq. (2). Each block is 1x1 reduce -> multi-head
self-attention with a learnable positional encoding -> 1x1 expand, residual, ReLU; the first block
downsamples by two and maps to the C5 width, so the stack runs in parallel to the backbone's last stage.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from einops import rearrange
from einops.layers.torch import Rearrange

__all__ = ["MHSA", "POS_EMBEDS", "AbsolutePosEmbed", "BoTBlock", "RelativePosEmbed", "TStream", "pooled_size"]

POS_EMBEDS = ("absolute", "relative")


def pooled_size(size: tuple[int, int]) -> tuple[int, int]:
    """Spatial size after the first block's 2x2 pool (ceil mode, so odd sides match the stride-2 shortcut)."""
    return (math.ceil(size[0] / 2), math.ceil(size[1] / 2))


class AbsolutePosEmbed(nn.Module):
    """Factorised absolute positional encoding: p(y, x) = e_h[y] + e_w[x] (Eq. 2's ``p``, default in CARE).

    Args:
        size: (H, W) of the feature map the attention sees.
        dim_head: per-head query dimension.
    """

    def __init__(self, size: tuple[int, int], dim_head: int) -> None:
        super().__init__()
        self.size = (int(size[0]), int(size[1]))
        scale = dim_head**-0.5
        self.height = nn.Parameter(torch.randn(size[0], dim_head) * scale)
        self.width = nn.Parameter(torch.randn(size[1], dim_head) * scale)

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        """q: (B, heads, H*W, d) -> logits q p^T: (B, heads, H*W, H*W)."""
        p = rearrange(self.height, "h d -> h 1 d") + rearrange(self.width, "w d -> 1 w d")
        return q @ rearrange(p, "h w d -> d (h w)")


class RelativePosEmbed(nn.Module):
    """Relative positional encoding: logit(i, j) = q_i . (r_h[y_j - y_i] + r_w[x_j - x_i]) (paper Table 8).

    Args:
        size: (H, W) of the feature map the attention sees.
        dim_head: per-head query dimension.
    """

    idx_h: torch.Tensor
    idx_w: torch.Tensor

    def __init__(self, size: tuple[int, int], dim_head: int) -> None:
        super().__init__()
        self.size = (int(size[0]), int(size[1]))
        h, w = self.size
        scale = dim_head**-0.5
        self.rel_height = nn.Parameter(torch.randn(2 * h - 1, dim_head) * scale)
        self.rel_width = nn.Parameter(torch.randn(2 * w - 1, dim_head) * scale)
        # index[i, j] = j - i + (n - 1): the offset of key j seen from query i, shifted to be >= 0
        self.register_buffer("idx_h", _offsets(h), persistent=False)
        self.register_buffer("idx_w", _offsets(w), persistent=False)

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        """q: (B, heads, H*W, d) -> logits (B, heads, H*W, H*W)."""
        h, w = self.size
        q = rearrange(q, "b n (y x) d -> b n y x d", y=h, x=w)
        r_h = self.rel_height[self.idx_h]  # (H query rows, H key rows, d)
        r_w = self.rel_width[self.idx_w]  # (W query cols, W key cols, d)
        logits_h = torch.einsum("bnyxd,ykd->bnyxk", q, r_h)
        logits_w = torch.einsum("bnyxd,xld->bnyxl", q, r_w)
        logits = rearrange(logits_h, "b n y x k -> b n y x k 1") + rearrange(
            logits_w, "b n y x l -> b n y x 1 l"
        )
        return rearrange(logits, "b n y x k l -> b n (y x) (k l)")


def _offsets(n: int) -> torch.Tensor:
    pos = torch.arange(n)
    return pos[None, :] - pos[:, None] + n - 1


class MHSA(nn.Module):
    """Multi-head self-attention over all pixels with a positional term (paper Eq. 2).

    softmax(q k^T + q p^T) v, with q scaled by 1/sqrt(d) first, as in the official code.

    Args:
        dim: input channels.
        size: (H, W) of the input map; the positional table is sized to it.
        heads: number of heads.
        dim_head: channels per head.
        pos_embed: "absolute" or "relative".
    """

    def __init__(
        self,
        dim: int,
        size: tuple[int, int],
        heads: int = 4,
        dim_head: int = 128,
        pos_embed: str = "absolute",
    ) -> None:
        super().__init__()
        if pos_embed not in POS_EMBEDS:
            raise ValueError(f"pos_embed must be one of {POS_EMBEDS}, got {pos_embed!r}")
        self.heads = heads
        self.size = (int(size[0]), int(size[1]))
        self.scale = dim_head**-0.5
        self.qkv = nn.Conv2d(dim, 3 * heads * dim_head, 1, bias=False)
        self.to_tokens = Rearrange("b (n d) y x -> b n (y x) d", n=heads)
        self.pos = (AbsolutePosEmbed if pos_embed == "absolute" else RelativePosEmbed)(self.size, dim_head)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        """s: (B, dim, H, W) -> (B, heads*dim_head, H, W)."""
        q, k, v = (self.to_tokens(t) for t in self.qkv(s).chunk(3, dim=1))
        q = q * self.scale
        attn = (q @ k.transpose(-2, -1) + self.pos(q)).softmax(dim=-1)
        return rearrange(attn @ v, "b n (y x) d -> b (n d) y x", y=s.shape[-2])


class BoTBlock(nn.Module):
    """Bottleneck transformer block (paper Fig. 3): 1x1 reduce, MHSA, 1x1 expand, residual, ReLU.

    Args:
        dim: input channels.
        dim_out: output channels.
        size: (H, W) of the input map.
        downsample: the first block of the stack: 2x2 average pool after attention, 3x3 stride-2 shortcut.
        proj_factor: the reduce conv maps to ``dim_out // proj_factor`` channels.
        heads: attention heads.
        dim_head: channels per head.
        pos_embed: "absolute" or "relative".
    """

    def __init__(
        self,
        dim: int,
        dim_out: int,
        size: tuple[int, int],
        downsample: bool = False,
        proj_factor: int = 4,
        heads: int = 4,
        dim_head: int = 128,
        pos_embed: str = "absolute",
    ) -> None:
        super().__init__()
        if downsample or dim != dim_out:
            k, stride = (3, 2) if downsample else (1, 1)
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(dim, dim_out, k, stride=stride, padding=k // 2, bias=False),
                nn.BatchNorm2d(dim_out),
                nn.ReLU(inplace=True),
            )
        else:
            self.shortcut = nn.Identity()
        dim_attn_in, dim_attn_out = dim_out // proj_factor, heads * dim_head
        self.reduce = nn.Sequential(
            nn.Conv2d(dim, dim_attn_in, 1, bias=False), nn.BatchNorm2d(dim_attn_in), nn.ReLU(inplace=True)
        )
        self.attn = MHSA(dim_attn_in, size, heads=heads, dim_head=dim_head, pos_embed=pos_embed)
        # ceil mode: an odd side pools to the same size as the stride-2 shortcut (the official floor crashes)
        self.pool = nn.AvgPool2d(2, ceil_mode=True) if downsample else nn.Identity()
        self.post_attn = nn.Sequential(nn.BatchNorm2d(dim_attn_out), nn.ReLU(inplace=True))
        bn_out = nn.BatchNorm2d(dim_out)
        nn.init.zeros_(bn_out.weight)  # each block starts as its shortcut
        self.expand = nn.Sequential(nn.Conv2d(dim_attn_out, dim_out, 1, bias=False), bn_out)
        self.act = nn.ReLU(inplace=True)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        """s: (B, dim, H, W) -> (B, dim_out, H', W') with H' = ceil(H/2) when downsampling."""
        x = self.expand(self.post_attn(self.pool(self.attn(self.reduce(s)))))
        return self.act(x + self.shortcut(s))


class TStream(nn.Module):
    """The transformer of one T-stream branch: ``depth`` BoT blocks, the first one downsampling.

    Args:
        dim: channels of the input map (C4 width; C5 width in the sequential design).
        dim_out: channels of the output map (the C5 width).
        size: (H, W) of the input map; every positional table is sized from it.
        depth: number of blocks n (paper Table 7; 5 by default).
        downsample: whether the first block halves the map (True in the parallel design, off C4).
        proj_factor: see :class:`BoTBlock`.
        heads: see :class:`BoTBlock`.
        dim_head: see :class:`BoTBlock`.
        pos_embed: see :class:`BoTBlock`.
    """

    def __init__(
        self,
        dim: int,
        dim_out: int,
        size: tuple[int, int],
        depth: int = 5,
        downsample: bool = True,
        proj_factor: int = 4,
        heads: int = 4,
        dim_head: int = 128,
        pos_embed: str = "absolute",
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"the T-stream needs at least one block, got depth={depth}")
        self.in_chans, self.size = dim, (int(size[0]), int(size[1]))
        self.out_size = pooled_size(self.size) if downsample else self.size
        blocks = []
        for i in range(depth):
            first = i == 0
            blocks.append(
                BoTBlock(
                    dim if first else dim_out,
                    dim_out,
                    self.size if first else self.out_size,
                    downsample=first and downsample,
                    proj_factor=proj_factor,
                    heads=heads,
                    dim_head=dim_head,
                    pos_embed=pos_embed,
                )
            )
        self.blocks = nn.Sequential(*blocks)
        self.num_features = dim_out

    def forward(self, c4: torch.Tensor) -> torch.Tensor:
        """c4: (B, dim, H, W) of exactly ``size`` -> (B, dim_out, *out_size)."""
        if c4.ndim != 4 or c4.shape[1] != self.in_chans or tuple(c4.shape[-2:]) != self.size:
            raise ValueError(
                f"T-stream input must be (B, {self.in_chans}, {self.size[0]}, {self.size[1]}) (its "
                f"positional tables are sized to the feature map of the input size CARE was built for), got "
                f"{tuple(c4.shape)}"
            )
        return self.blocks(c4)
