"""HR-stem: the two-branch high-resolution stem of HIRI-ViT (Yao et al., "HIRI-ViT: Scaling Vision
Transformer with High Resolution Inputs", TPAMI, Sec. 4.1 and Figure 3c).

The paper gives the layers in words only; the widths, norms and activations below are our reading
(specs/hiri-vit.md), each an option where the text is silent.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
import torch.nn as nn

from hiri_vit.conv_norm_act import ConvNormAct

__all__ = ["HRStem"]


class HRStem(nn.Module):
    """Stride-4 stem: a strided 3x3 conv, then a high- and a low-resolution branch, summed and batch-normed.

    ``s = act(BN(conv3x3/2(x)))``;
    high-resolution branch: ``conv3x3/2(DW3x3(s))`` (one cheap conv at H/2, then down-sample);
    low-resolution branch: ``conv1x1(act(BN(conv3x3(act(BN(conv3x3/2(s)))))))`` (more convs at H/4);
    output ``BN(high + low)``.

    Args:
        in_chans: image channels.
        out_chs: C1, the channels of stage 1.
        stem_width: Cs, the channels of the first conv and of both branches (None: ``out_chs``).
        act_layer: activation class (GELU in the paper's hybrid blocks).
    """

    def __init__(
        self,
        in_chans: int,
        out_chs: int,
        stem_width: int | None = None,
        act_layer: Callable[[], nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        width = stem_width or out_chs
        self.conv = ConvNormAct(in_chans, width, 3, stride=2, act_layer=act_layer)
        self.high = nn.Sequential(
            OrderedDict(
                dw=nn.Conv2d(width, width, 3, padding=1, groups=width, bias=False),
                down=nn.Conv2d(width, out_chs, 3, stride=2, padding=1, bias=False),
            )
        )
        self.low = nn.Sequential(
            OrderedDict(
                down=ConvNormAct(width, width, 3, stride=2, act_layer=act_layer),
                conv=ConvNormAct(width, width, 3, act_layer=act_layer),
                proj=nn.Conv2d(width, out_chs, 1, bias=False),
            )
        )
        self.norm = nn.BatchNorm2d(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> (B, out_chs, ceil(H / 4), ceil(W / 4))."""
        x = self.conv(x)
        return self.norm(self.high(x) + self.low(x))
