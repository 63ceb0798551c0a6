"""HR block: the two-branch block of stages 1-2 (Yao et al., "HIRI-ViT: Scaling Vision Transformer with
High Resolution Inputs", TPAMI, Sec. 4.2 and Figure 4).

The figure is a caption only in the text; the composition below is our reading (specs/hiri-vit.md).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath

from ctxnets_shared.layers import AttnLayerSpec, create_attn_layer

__all__ = ["HRBlock", "upsample_crop"]


def upsample_crop(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Nearest x2 repetition of ``x`` cropped to ``like``'s spatial size.

    A stride-2 3x3 conv (padding 1) maps a side of n to ceil(n / 2); repeating that twice gives n or n + 1,
    so cropping the last row/column restores odd sizes.

    Args:
        x: (B, C, h, w) low-resolution map.
        like: (B, *, H, W) map with ``h == ceil(H / 2)`` and ``w == ceil(W / 2)``.
    """
    up = F.interpolate(x, scale_factor=2.0, mode="nearest")
    return up[:, :, : like.shape[2], : like.shape[3]]


class HRBlock(nn.Module):
    """``x + DropPath(attn(F(BN(x))))`` with ``F(n) = DW3x3(n) + Up(FFN(BN(DW3x3/2(n))))``.

    The high-resolution branch is one depthwise 3x3 conv at full resolution; the low-resolution branch
    down-samples with a strided depthwise conv and runs the (expensive) FFN
    ``1x1 C -> E*C, act, 1x1 E*C -> C`` at a quarter of the positions, then is repeated back up.

    Args:
        dim: channels C.
        mlp_ratio: E, the FFN expansion of the low-resolution branch.
        act_layer: activation class.
        attn_layer: optional attention on the block's branch before the residual add (composition hook).
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
        hidden = int(dim * mlp_ratio)
        self.norm = nn.BatchNorm2d(dim, **dd)
        self.high = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, **dd)
        self.low_down = nn.Conv2d(dim, dim, 3, stride=2, padding=1, groups=dim, **dd)
        self.low_norm = nn.BatchNorm2d(dim, **dd)
        self.low_ffn = nn.Sequential(
            OrderedDict(
                fc1=nn.Conv2d(dim, hidden, 1, **dd),
                act=act_layer(),
                fc2=nn.Conv2d(hidden, dim, 1, **dd),
            )
        )
        self.attn_hook: nn.Module = create_attn_layer(attn_layer, dim, **dd) or nn.Identity()
        self.drop_path: nn.Module = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def branch(self, n: torch.Tensor) -> torch.Tensor:
        """F(n): (B, C, H, W) -> (B, C, H, W)."""
        # high branch first: the order of definition, which FX graph modules keep for their parameters
        high = self.high(n)
        low = self.low_ffn(self.low_norm(self.low_down(n)))
        return high + upsample_crop(low, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        return x + self.drop_path(self.attn_hook(self.branch(self.norm(x))))
