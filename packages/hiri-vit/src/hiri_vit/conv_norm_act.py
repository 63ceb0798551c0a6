"""Conv -> BatchNorm -> activation, the triple of the HR-stem and the IRDS layers (Yao et al., "HIRI-ViT:
Scaling Vision Transformer with High Resolution Inputs", TPAMI, Sec. 4.1 and 4.3).

An ``nn.Sequential`` with numbered children (``0`` conv, ``1`` norm, ``2`` act), so the state-dict keys
are ``<name>.0.weight``, ``<name>.1.running_mean``, ...
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

__all__ = ["ConvNormAct"]


class ConvNormAct(nn.Sequential):
    """``act(BN(Conv2d(x)))`` with padding ``kernel_size // 2``: (B, C_in, H, W) -> (B, C_out, H / s, W / s).

    Args:
        in_chs: input channels.
        out_chs: output channels.
        kernel_size: square kernel size (odd: the same size at stride 1).
        stride: convolution stride.
        act_layer: activation class.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 1,
        stride: int = 1,
        act_layer: Callable[[], nn.Module] = nn.GELU,
    ) -> None:
        # no conv bias: the BatchNorm's shift replaces it
        conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride=stride, padding=kernel_size // 2, bias=False)
        super().__init__(conv, nn.BatchNorm2d(out_chs), act_layer())
