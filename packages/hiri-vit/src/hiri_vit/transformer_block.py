"""Multi-head self-attention and the Transformer block of stages 4-5 (Yao et al., "HIRI-ViT: Scaling
Vision Transformer with High Resolution Inputs", TPAMI, Sec. 3 Eqs. 1-3 and Sec. 4).

The block works on channels-last token maps (B, H, W, C): LayerNorm and the attention's linear layers
act on the last axis, and the CFFN sees the same memory as a channels-last (B, C, H, W) view, so no layout
copy is made between the two halves. The paper replaces the LayerNorm before the CFFN by BatchNorm
(Sec. 5.3, 7.6% faster inference).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, use_fused_attn

from ctxnets_shared.layers import AttnLayerSpec, create_attn_layer
from hiri_vit.cffn import CFFN

__all__ = ["MultiHeadAttention", "TransformerBlock", "attention"]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, fused: bool = True) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d)) v`` over (B, heads, N, d) tensors (Eq. 1).

    Args:
        q: (B, heads, Nq, d) queries.
        k: (B, heads, Nk, d) keys.
        v: (B, heads, Nk, d) values.
        fused: use ``F.scaled_dot_product_attention`` (fused kernels); False runs the formula as written.
    """
    if fused:
        return F.scaled_dot_product_attention(q, k, v)
    attn = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    return attn.softmax(dim=-1) @ v


class MultiHeadAttention(nn.Module):
    """Full multi-head self-attention over a (B, H, W, C) token map, qkv bias and output projection.

    Args:
        dim: C.
        num_heads: heads (head dimension ``dim // num_heads``, 64 in every HIRI-ViT variant).
        qkv_bias: bias in the query/key/value projection.
        sr_ratio: spatial reduction of keys and values (PVT-style strided conv + LayerNorm); 1 (the
            default, our reading of the paper) attends to every token.
        fused_attn: ``F.scaled_dot_product_attention`` instead of the plain formula; None follows timm's
            ``use_fused_attn()``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        sr_ratio: int = 1,
        fused_attn: bool | None = None,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be a multiple of num_heads={num_heads}")
        if sr_ratio < 1:
            raise ValueError(f"sr_ratio must be >= 1, got {sr_ratio}")
        self.num_heads = num_heads
        self.sr_ratio = sr_ratio
        self.fused_attn = use_fused_attn() if fused_attn is None else fused_attn
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        if sr_ratio > 1:
            self.sr: nn.Module = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio)
            self.sr_norm: nn.Module = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, dim)

    def _heads(self, t: torch.Tensor, parts: int) -> torch.Tensor:
        # (B, N, parts * C) -> (parts, B, heads, N, d)
        b, n, _ = t.shape
        return t.reshape(b, n, parts, self.num_heads, -1).permute(2, 0, 3, 1, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C)."""
        tokens = x.flatten(1, 2)
        if self.sr_ratio > 1:
            dim = x.shape[-1]
            w_q, w_kv = self.qkv.weight.split([dim, 2 * dim])
            b_q, b_kv = self.qkv.bias.split([dim, 2 * dim]) if self.qkv.bias is not None else (None, None)
            reduced = self.sr(x.permute(0, 3, 1, 2)).flatten(2).transpose(1, 2)
            q = self._heads(F.linear(tokens, w_q, b_q), 1)[0]
            k, v = self._heads(F.linear(self.sr_norm(reduced), w_kv, b_kv), 2).unbind(0)
        else:
            q, k, v = self._heads(self.qkv(tokens), 3).unbind(0)
        out = attention(q, k, v, self.fused_attn).transpose(1, 2).reshape(x.shape)
        return self.proj(out)


class TransformerBlock(nn.Module):
    """Stages 4-5: ``x = x + DropPath(MHA(LN(x)))``, then ``x + DropPath(attn(CFFN(BN(x))))``.

    Args:
        dim: C.
        num_heads: attention heads.
        mlp_ratio: E, the CFFN expansion.
        act_layer: activation class.
        sr_ratio: key/value spatial reduction of the attention (1: none).
        attn_layer: optional attention on the CFFN branch before its residual add (composition hook);
            it sees a (B, C, H, W) map.
        drop_path: stochastic depth rate.
        fused_attn: ``F.scaled_dot_product_attention`` (True) or the plain formula; None follows timm.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        sr_ratio: int = 1,
        attn_layer: AttnLayerSpec = None,
        drop_path: float = 0.0,
        fused_attn: bool | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, num_heads, sr_ratio=sr_ratio, fused_attn=fused_attn)
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp = CFFN(dim, int(dim * mlp_ratio), act_layer)
        self.attn_hook: nn.Module = create_attn_layer(attn_layer, dim) or nn.Identity()
        self.drop_path1: nn.Module = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.drop_path2: nn.Module = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C) (channels-last tokens)."""
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        y = self.attn_hook(self.mlp(self.norm2(x.permute(0, 3, 1, 2))))
        return x + self.drop_path2(y.permute(0, 2, 3, 1))
