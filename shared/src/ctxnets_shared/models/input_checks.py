"""Clear errors for images a backbone cannot take (wrong channels, smaller than the network stride)."""

from __future__ import annotations

import torch
from timm.layers import register_notrace_function

__all__ = ["check_image_input"]


@register_notrace_function  # a leaf for torch.fx: its checks branch on the input shape
def check_image_input(x: torch.Tensor, in_chans: int, min_size: int) -> None:
    """Raise ValueError unless ``x`` is (B, in_chans, H, W) with H, W >= ``min_size``.

    TorchScript-compatible so a model's ``forward_features`` can call it.

    Args:
        x: input batch.
        in_chans: channels the model was built for.
        min_size: smallest H and W the model takes (usually its total stride).
    """
    if x.dim() != 4:
        raise ValueError("expected a 4-D (B, C, H, W) image batch, got " + str(x.dim()) + " dimensions")
    if x.shape[1] != in_chans:
        raise ValueError(
            "expected " + str(in_chans) + " input channels (the model's in_chans), got " + str(x.shape[1])
        )
    if x.shape[2] < min_size or x.shape[3] < min_size:
        raise ValueError(
            "input "
            + str(x.shape[2])
            + "x"
            + str(x.shape[3])
            + " is smaller than the network stride: H and W must be at least "
            + str(min_size)
        )
