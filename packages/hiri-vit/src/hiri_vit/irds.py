"""Inverted residual down-sampling, IRDS-a and IRDS-b (Yao et al., "HIRI-ViT: Scaling Vision Transformer
with High Resolution Inputs", TPAMI, Sec. 4.3 and Figure 5).

Both have the paper's "extra down-sampling shortcut": average pooling (2x2, ceil mode so odd sides give
the same size as the strided conv) and a 1x1 conv. The expansion ``t`` is not given in the paper; t = 4
reproduces Table II's GFLOPs (specs/hiri-vit.md).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from hiri_vit.conv_norm_act import ConvNormAct

__all__ = ["DownsampleShortcut", "IRDSa", "IRDSb"]


class DownsampleShortcut(nn.Sequential):
    """``conv1x1(AvgPool2x2(x))``: (B, C_in, H, W) -> (B, C_out, ceil(H / s), ceil(W / s))."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 2) -> None:
        pool: nn.Module = (
            nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False)
            if stride > 1
            else nn.Identity()
        )
        # no bias: the main path's last conv has one, and the two are summed
        super().__init__(pool, nn.Conv2d(in_chs, out_chs, 1, bias=False))


def _check_stride(stride: int) -> None:
    if stride not in (1, 2):
        raise ValueError(f"IRDS stride must be 1 or 2, got {stride}")


class IRDSa(nn.Module):
    """IRDS-a (after stages 1 and 2): ``conv1x1(act(BN(conv3x3/s(x)))) + shortcut(x)``.

    The strided 3x3 conv expands C_in to t * C_in while it down-samples; the 1x1 conv shrinks to C_out.

    Args:
        in_chs: C_in.
        out_chs: C_out.
        stride: 2 (the paper) or 1 (keeps the resolution; used for lower-resolution reproductions).
        expansion: t.
        act_layer: activation class.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        stride: int = 2,
        expansion: float = 4.0,
        act_layer: Callable[[], nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        _check_stride(stride)
        hidden = int(in_chs * expansion)
        self.conv1 = ConvNormAct(in_chs, hidden, 3, stride=stride, act_layer=act_layer)
        self.conv2 = nn.Conv2d(hidden, out_chs, 1)
        self.shortcut = DownsampleShortcut(in_chs, out_chs, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, ceil(H / stride), ceil(W / stride))."""
        return self.conv2(self.conv1(x)) + self.shortcut(x)


class IRDSb(nn.Module):
    """IRDS-b (after stages 3 and 4): ``conv1x1(DW3x3/s(act(BN(conv1x1(x))))) + shortcut(x)``.

    An inverted residual whose norm and activation follow only the first conv (the paper's difference to
    MobileNetV2's block).

    Args:
        in_chs: C_in.
        out_chs: C_out.
        stride: 2 (the paper) or 1.
        expansion: t.
        act_layer: activation class.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        stride: int = 2,
        expansion: float = 4.0,
        act_layer: Callable[[], nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        _check_stride(stride)
        hidden = int(in_chs * expansion)
        self.conv1 = ConvNormAct(in_chs, hidden, 1, act_layer=act_layer)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden)
        self.conv2 = nn.Conv2d(hidden, out_chs, 1)
        self.shortcut = DownsampleShortcut(in_chs, out_chs, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, ceil(H / stride), ceil(W / stride))."""
        return self.conv2(self.dwconv(self.conv1(x))) + self.shortcut(x)
