"""Input checks shared by the context blocks, kept out of FX graphs (timm notrace functions)."""

from __future__ import annotations

import torch
from timm.layers import register_notrace_function

__all__ = ["check_feature_map", "hidden_channels"]


@register_notrace_function
def check_feature_map(x: torch.Tensor, channels: int) -> None:
    """Raise ValueError unless ``x`` is a non-empty (B, channels, H, W) map.

    Registered with timm as a notrace function, so ``torch.fx`` keeps it as one opaque call instead of
    tracing the shape comparisons.
    """
    if x.dim() != 4:
        raise ValueError(f"expected a 4-D (B, C, H, W) feature map, got {x.dim()} dimensions")
    if x.shape[1] != channels:
        raise ValueError(f"expected {channels} channels (the block's channels), got {x.shape[1]}")
    if x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(
            f"feature map {x.shape[2]}x{x.shape[3]} has no positions: H and W must be at least 1"
        )


def hidden_channels(channels: int, ratio: float) -> int:
    """Bottleneck width ``P = int(C * ratio)`` (mmcv's rounding), validated.

    Raises:
        ValueError: ``channels`` not positive, ``ratio`` outside (0, 1], or ``P`` rounding to 0.
    """
    if channels <= 0:
        raise ValueError(f"channels must be a positive integer, got {channels}")
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"ratio is a fraction in (0, 1] (1/16 for r16), got {ratio}")
    planes = int(channels * ratio)
    if planes < 1:
        raise ValueError(
            f"ratio={ratio} gives int({channels} * {ratio}) = 0 hidden channels; "
            f"ratio must be at least 1/{channels} for {channels} channels"
        )
    return planes
