"""Convolutional feed-forward network (CFFN, paper Eq. 3) and the CFFN block of stage 3 (Yao et al.,
"HIRI-ViT: Scaling Vision Transformer with High Resolution Inputs", TPAMI, Sec. 3 and 4)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
from timm.layers import DropPath

from ctxnets_shared.layers import AttnLayerSpec, create_attn_layer

__all__ = ["CFFN", "CFFNBlock"]


class CFFN(nn.Module):
    """``CFFN(X) = FC(DWConv(z) + z), z = act(FC(X))`` (Eq. 3) on a (B, C, H, W) map.

    The FC layers are 1x1 convolutions, so the same module serves the NCHW stages and, through a
    channels-last view, the token stages (a 1x1 conv on a channels-last map is the per-token matmul).

    Args:
        dim: C, input and output channels.
        hidden_dim: E * C, the expanded width.
        act_layer: activation class (sigma in Eq. 3).
        device: where the parameters are created.
        dtype: the parameters' dtype.
    """

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        dd: dict[str, Any] = {"device": device, "dtype": dtype}
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden_dim, 1, **dd)
        self.act = act_layer()
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, groups=hidden_dim, **dd)
        self.fc2 = nn.Conv2d(hidden_dim, dim, 1, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        z = self.act(self.fc1(x))
        return self.fc2(self.dwconv(z) + z)


class CFFNBlock(nn.Module):
    """Stage-3 block: ``x + DropPath(attn(CFFN(BN(x))))`` on a (B, C, H, W) map.

    Args:
        dim: channels C.
        mlp_ratio: E, the CFFN expansion.
        act_layer: activation class.
        attn_layer: optional attention (name, callable ``channels -> nn.Module`` or None) applied to the
            CFFN branch before the residual add (the composition hook, e.g. a GC block).
        drop_path: stochastic depth rate.
        device: where the parameters are created (timm's factory kwargs: ``create_attn(..., device=...)``).
        dtype: the parameters' dtype.
    """

    def __init__(
        self,
        dim: int,
        mlp_ratio: float = 4.0,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        attn_layer: AttnLayerSpec = None,
        drop_path: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        dd: dict[str, Any] = {"device": device, "dtype": dtype}
        super().__init__()
        self.norm = nn.BatchNorm2d(dim, **dd)
        self.mlp = CFFN(dim, int(dim * mlp_ratio), act_layer, **dd)
        self.attn_hook: nn.Module = create_attn_layer(attn_layer, dim, **dd) or nn.Identity()
        self.drop_path: nn.Module = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        return x + self.drop_path(self.attn_hook(self.mlp(self.norm(x))))
