"""Parameter and multiply-accumulate counts.

GFLOPs here follow the papers' convention: billions of multiply-accumulates (MACs). They come from
``torch.utils.flop_counter.FlopCounterMode``, which counts 2 FLOPs per MAC for convolutions, matrix
products (mm/addmm/bmm/baddbmm), and scaled-dot-product attention; we halve its total. Element-wise ops
(activations, norms, residual adds, softmax, CoT's local aggregation) are not counted, as in the fvcore /
mmcv counters the papers used for their tables.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_gflops", "count_params"]


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_gflops(
    model: nn.Module,
    input_size: Sequence[int] = (3, 224, 224),
    batch_size: int = 1,
) -> float:
    """GMACs of one forward pass of a (batch_size, *input_size) input, per image.

    Args:
        model: the network; it is run once in eval mode under ``torch.no_grad`` on its own device.
        input_size: (C, H, W).
        batch_size: images in the probe batch; the result is divided by it.

    Returns:
        Multiply-accumulates per image in units of 1e9 (the papers' "GFLOPs").
    """
    if len(input_size) != 3 or min(input_size) <= 0:
        raise ValueError(f"input_size must be (C, H, W) with positive sizes, got {tuple(input_size)}")
    try:
        param = next(model.parameters())
        device, dtype = param.device, param.dtype
    except StopIteration:
        device, dtype = torch.device("cpu"), torch.float32
    x = torch.randn(batch_size, *input_size, device=device, dtype=dtype)
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 2 / 1e9 / batch_size
