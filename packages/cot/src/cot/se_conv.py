"""The SE 3x3 convolution of SE-CoTNetD's early stages (Li et al., CoTNet, TPAMI, Sec. 4.1).

SE-CoTNetD keeps ordinary 3x3 convolutions in its high-resolution stages, each followed by a squeeze-and-
excitation gate: the official code builds it as a radix-1 split-attention conv (ResNeSt's ``SplitAttnConv2d``
with ``radix=1``, whose "radix softmax" degenerates to a sigmoid). That is timm's
:class:`timm.layers.SplitAttn` with ``radix=1``, SiLU activations and BatchNorm: the same computation
under the same attribute names (``conv``, ``bn0``, ``fc1``, ``bn1``, ``fc2``), so official checkpoints
load unchanged. Its forward is written out for radix 1, which keeps the input's memory format.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import SplitAttn

__all__ = ["SeConv2d"]


class SeConv2d(SplitAttn):
    """3x3 conv -> BN -> SiLU, then an SE gate with a BN in its bottleneck: (B, C_in, H, W) -> (B, C_out,
    H / stride, W / stride).

    ``out = y * sigmoid(fc2(SiLU(BN(fc1(mean_hw(y))))))`` with ``y = SiLU(BN(conv(x)))``.

    Args:
        in_chs: input channels C_in.
        out_chs: output channels C_out.
        stride: stride of the 3x3 conv.
        dilation: dilation of the 3x3 conv (dilated stages of ``output_stride`` 8 / 16).
        reduction_factor: the gate's bottleneck is ``max(in_chs // reduction_factor, min_attn_chs)``.
        min_attn_chs: lower bound on the bottleneck width.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        stride: int = 1,
        dilation: int = 1,
        reduction_factor: int = 4,
        min_attn_chs: int = 32,
    ) -> None:
        super().__init__(
            in_chs,
            out_chs,
            kernel_size=3,
            stride=stride,
            padding=dilation,
            dilation=dilation,
            radix=1,
            rd_channels=max(in_chs // reduction_factor, min_attn_chs),
            act_layer=nn.SiLU,
            norm_layer=nn.BatchNorm2d,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, H / stride, W / stride), in the memory format of x."""
        y = self.act0(self.drop(self.bn0(self.conv(x))))
        gate = self.fc2(self.act1(self.bn1(self.fc1(y.mean((2, 3), keepdim=True)))))
        return y * gate.sigmoid()  # the radix-1 "softmax"
