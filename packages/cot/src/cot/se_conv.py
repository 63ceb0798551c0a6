"""The SE 3x3 convolution of SE-CoTNetD's early stages (Li et al., CoTNet, TPAMI, Sec. 4.1).

SE-CoTNetD keeps ordinary 3x3 convolutions in its high-resolution stages, each followed by a squeeze-and-
excitation gate: the official code builds it as a radix-1 split-attention conv (ResNeSt's ``SplitAttnConv2d``
with ``radix=1``, whose "radix softmax" degenerates to a sigmoid). The attribute names below are that
module's, so official checkpoints load unchanged.
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["SeConv2d"]


class SeConv2d(nn.Module):
    """3x3 conv -> BN -> SiLU, then an SE gate with a BN in its bottleneck.

    ``out = y * sigmoid(fc2(SiLU(BN(fc1(mean_hw(y))))))`` with ``y = SiLU(BN(conv(x)))``.

    Args:
        in_chs: input channels C_in.
        out_chs: output channels C_out.
        stride: stride of the 3x3 conv.
        reduction_factor: the gate's bottleneck is ``max(in_chs // reduction_factor, min_attn_chs)``.
        min_attn_chs: lower bound on the bottleneck width.
    """

    def __init__(
        self, in_chs: int, out_chs: int, stride: int = 1, reduction_factor: int = 4, min_attn_chs: int = 32
    ) -> None:
        super().__init__()
        attn_chs = max(in_chs // reduction_factor, min_attn_chs)
        self.conv = nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(out_chs)
        self.act0 = nn.SiLU(inplace=True)
        self.fc1 = nn.Conv2d(out_chs, attn_chs, 1)
        self.bn1 = nn.BatchNorm2d(attn_chs)
        self.act1 = nn.SiLU(inplace=True)
        self.fc2 = nn.Conv2d(attn_chs, out_chs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, H / stride, W / stride)."""
        x = self.act0(self.bn0(self.conv(x)))
        gate = self.fc2(self.act1(self.bn1(self.fc1(x.mean((2, 3), keepdim=True)))))
        return x * gate.sigmoid()
