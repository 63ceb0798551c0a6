"""Multi-head self-attention over the positions of an NCHW feature map (Vaswani et al., Eq. 1).

The query-dependent global attention that the Section 3 analysis (Cao et al., "Global Context Networks",
TPAMI) sets beside the NL, SNL and GC blocks: :mod:`gcnet.analysis.probe` reads its maps. The
softmax(QK^T / sqrt(d)) V product goes through ``torch.nn.functional.scaled_dot_product_attention``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops.layers.torch import Rearrange

__all__ = ["MultiHeadSelfAttention2d"]


class MultiHeadSelfAttention2d(nn.Module):
    """Global multi-head self-attention on a (B, C, H, W) map, returning (B, C, H, W).

    Args:
        dim: channels C; must be divisible by ``num_heads``.
        num_heads: attention heads.
        qkv_bias: bias on the 1x1 qkv projection.
        attn_drop: dropout on attention probabilities (training only).
        proj_drop: dropout after the output projection.
        sr_ratio: spatial reduction of keys/values (PVT-style strided conv) to cut the N^2 cost on
            high-resolution maps; 1 is plain global attention.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        sr_ratio: int = 1,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.attn_drop = attn_drop
        self.q = nn.Conv2d(dim, dim, 1, bias=qkv_bias)
        self.kv = nn.Conv2d(dim, dim * 2, 1, bias=qkv_bias)
        self.sr: nn.Module = (
            nn.Sequential(nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio), nn.BatchNorm2d(dim))
            if sr_ratio > 1
            else nn.Identity()
        )
        self.proj = nn.Conv2d(dim, dim, 1)
        self.proj_drop = nn.Dropout(proj_drop)
        # (B, heads*d, H, W) -> (B, heads, H*W, d)
        self.to_heads = Rearrange("b (h d) y x -> b h (y x) d", h=num_heads)
        self.to_kv_heads = Rearrange("b (t h d) y x -> t b h (y x) d", t=2, h=num_heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, C, H, W)."""
        B, C, H, W = x.shape
        q = self.to_heads(self.q(x))
        kv = self.to_kv_heads(self.kv(self.sr(x)))
        out = F.scaled_dot_product_attention(
            q, kv[0], kv[1], dropout_p=self.attn_drop if self.training else 0.0
        )
        out = out.transpose(2, 3).reshape(B, C, H, W)
        return self.proj_drop(self.proj(out))
