"""How many whole images a layer's faster CPU path runs at once, so that its widest activation stays
under a byte budget (CONTAINER's MLP, HIRI-ViT's CFFN).

glibc serves allocations above 32 MB with fresh pages from the kernel on every call; chunks below that
are reused heap memory (docs/benchmarks.md measures the difference).
"""

from __future__ import annotations

import torch

__all__ = ["images_per_chunk"]


def images_per_chunk(x: torch.Tensor, channels: int, chunk_bytes: int) -> int:
    """Whole images of ``x`` (B, C, H, W) whose ``channels``-wide activation at H x W fits in
    ``chunk_bytes``; at least one."""
    image_bytes = channels * x.shape[2] * x.shape[3] * x.element_size()
    return max(1, chunk_bytes // max(image_bytes, 1))
