"""Conv -> norm -> activation as an ``nn.Sequential`` with numbered children.

Numbered children (``0`` conv, ``1`` norm, ``2`` act) keep the state-dict keys of the official CoTNet, GCNet
and HIRI-ViT checkpoints, which all build these triples with ``nn.Sequential``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

__all__ = ["ConvNormAct"]


class ConvNormAct(nn.Sequential):
    """``Conv2d(k, stride, groups, padding=k//2) -> norm -> act`` on a (B, C_in, H, W) map.

    Args:
        in_chs: input channels.
        out_chs: output channels.
        kernel_size: square kernel size; padding is ``kernel_size // 2 * dilation`` (same size at stride 1).
        stride: convolution stride.
        groups: convolution groups; must divide both channel counts.
        dilation: convolution dilation.
        bias: conv bias (off by default because a norm follows).
        norm_layer: ``channels -> nn.Module`` or None for no norm.
        act_layer: ``() -> nn.Module`` or None for no activation.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        dilation: int = 1,
        bias: bool = False,
        norm_layer: Callable[[int], nn.Module] | None = nn.BatchNorm2d,
        act_layer: Callable[[], nn.Module] | None = nn.ReLU,
    ) -> None:
        if in_chs % groups or out_chs % groups:
            raise ValueError(f"groups={groups} must divide in_chs={in_chs} and out_chs={out_chs}")
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_chs,
                out_chs,
                kernel_size,
                stride=stride,
                padding=kernel_size // 2 * dilation,
                dilation=dilation,
                groups=groups,
                bias=bias,
            )
        ]
        if norm_layer is not None:
            layers.append(norm_layer(out_chs))
        if act_layer is not None:
            layers.append(act_layer())
        super().__init__(*layers)
