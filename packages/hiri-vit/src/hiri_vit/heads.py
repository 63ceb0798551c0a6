"""Classification heads: average pooling, and the class-attention head (Yao et al., "HIRI-ViT: Scaling
Vision Transformer with High Resolution Inputs", TPAMI; Table II's parameter counts need the latter).

The paper does not describe its head. One class-attention block whose class token starts as the mean of
the tokens (as in the same authors' Wave-ViT and Dual-ViT), then LayerNorm and a linear classifier,
reproduces Table II's parameters; plain average pooling has about 10% fewer (specs/hiri-vit.md).

Pooling modes (``global_pool``): ``"class_attn"`` (ClassAttentionHead only), ``"avg"`` (mean of the
tokens), or ``""`` (no pooling: per-location logits, ``fc(LN(token))`` for every position, as the EMA
distillation teacher needs).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
import torch.nn as nn
from timm.layers import use_fused_attn

from hiri_vit.transformer_block import attention

__all__ = ["AvgPoolHead", "ClassAttention", "ClassAttentionBlock", "ClassAttentionHead"]


class ClassAttention(nn.Module):
    """Attention whose only query is the class token: (B, 1 + N, C) -> (B, 1, C).

    Args:
        dim: C.
        num_heads: heads.
        fused_attn: ``F.scaled_dot_product_attention`` instead of the plain formula; None follows timm's
            ``use_fused_attn()``.
    """

    def __init__(self, dim: int, num_heads: int, fused_attn: bool | None = None) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be a multiple of num_heads={num_heads}")
        self.num_heads = num_heads
        self.fused_attn = use_fused_attn() if fused_attn is None else fused_attn
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, dim * 2)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1 + N, C), class token first -> (B, 1, C)."""
        b, n, c = x.shape
        q = self.q(x[:, :1]).reshape(b, 1, self.num_heads, -1).transpose(1, 2)
        k, v = self.kv(x).reshape(b, n, 2, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        out = attention(q, k, v, self.fused_attn).transpose(1, 2).reshape(b, 1, c)
        return self.proj(out)


class ClassAttentionBlock(nn.Module):
    """``cls = mean(tokens)``; ``cls += CA(LN([cls, tokens]))``; ``cls += FFN(LN(cls))``: (B, N, C) -> (B, C).

    Args:
        dim: C.
        num_heads: heads.
        mlp_ratio: FFN expansion.
        act_layer: activation class.
        fused_attn: ``F.scaled_dot_product_attention`` (None: timm's ``use_fused_attn()``).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        fused_attn: bool | None = None,
    ) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ClassAttention(dim, num_heads, fused_attn)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            OrderedDict(fc1=nn.Linear(dim, hidden), act=act_layer(), fc2=nn.Linear(hidden, dim))
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> (B, C)."""
        cls = tokens.mean(dim=1, keepdim=True)
        cls = cls + self.attn(self.norm1(torch.cat([cls, tokens], dim=1)))
        cls = cls + self.mlp(self.norm2(cls))
        return cls[:, 0]


def _check_pool(global_pool: str, valid: tuple[str, ...]) -> None:
    if global_pool not in valid:
        raise ValueError(f"global_pool must be one of {valid}, got {global_pool!r}")


class AvgPoolHead(nn.Module):
    """``fc(LN(mean(tokens)))`` on the last stage's (B, C, h, w) map.

    Args:
        dim: C.
        num_classes: classifier outputs (0: no classifier, ``fc`` is Identity).
        global_pool: "avg" or "" (per-location logits, (B, num_classes, h, w)).
        drop_rate: dropout before the classifier.
    """

    pool_types: tuple[str, ...] = ("avg", "")

    def __init__(self, dim: int, num_classes: int, global_pool: str = "avg", drop_rate: float = 0.0) -> None:
        super().__init__()
        _check_pool(global_pool, self.pool_types)
        self.global_pool = global_pool
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(drop_rate)
        self.fc: nn.Module = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()

    def reset(self, num_classes: int, global_pool: str | None = None) -> None:
        """New classifier of ``num_classes`` outputs (0: none); optionally a new pooling mode."""
        if global_pool is not None:
            _check_pool(global_pool, self.pool_types)
            self.global_pool = global_pool
        self.fc = nn.Linear(self.norm.normalized_shape[0], num_classes) if num_classes > 0 else nn.Identity()

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> (B, C)."""
        return tokens.mean(dim=1)

    def forward_dense(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Per-location ``fc(LN(token))``, no pooling: (B, C, h, w) -> (B, num_classes, h, w).

        Shares the head's LayerNorm and classifier (the EMA-distillation teacher's class-probability maps).
        """
        y = self.norm(x.permute(0, 2, 3, 1))
        if not pre_logits:
            y = self.fc(self.drop(y))
        return y.permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, C, h, w) -> (B, num_classes) logits, (B, C) if ``pre_logits``; per location if no pooling."""
        if self.global_pool == "":
            return self.forward_dense(x, pre_logits)
        tokens = x.permute(0, 2, 3, 1).flatten(1, 2)
        y = self.drop(self.norm(self.pool(tokens)))
        return y if pre_logits else self.fc(y)


class ClassAttentionHead(AvgPoolHead):
    """``fc(LN(class_attention_block(tokens)))``; the default HIRI-ViT head.

    Args:
        dim: C.
        num_classes: classifier outputs (0: none).
        num_heads: heads of the class-attention block.
        mlp_ratio: its FFN expansion.
        act_layer: activation class.
        global_pool: "class_attn", "avg" (skip the block) or "" (per-location logits, skip the block).
        drop_rate: dropout before the classifier.
        fused_attn: ``F.scaled_dot_product_attention`` (None: timm's ``use_fused_attn()``).
    """

    pool_types = ("class_attn", "avg", "")

    def __init__(
        self,
        dim: int,
        num_classes: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        global_pool: str = "class_attn",
        drop_rate: float = 0.0,
        fused_attn: bool | None = None,
    ) -> None:
        super().__init__(dim, num_classes, global_pool, drop_rate)
        self.block = ClassAttentionBlock(dim, num_heads, mlp_ratio, act_layer, fused_attn)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> (B, C): the class token, or the mean if ``global_pool == "avg"``."""
        if self.global_pool == "avg":
            return tokens.mean(dim=1)
        return self.block(tokens)
