"""The average cosine distance of the paper's statistical analysis (Sec. 3.2.2, Tables 1-3).

``avg_dist = 1 / N_p^2 sum_i sum_j dist(v_i, v_j)`` with ``dist(v_i, v_j) = (1 - cos(v_i, v_j)) / 2``, over
the vectors ``v_i`` of all positions i: the block input ``x_i`` ("input"), the block output before fusion
``z_i - x_i`` ("output") and the attention map of query i, ``w_i`` ("att"). 0 means every position carries
the same direction, 0.5 unrelated (orthogonal) directions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["average_cosine_distance"]


def average_cosine_distance(vectors: torch.Tensor) -> torch.Tensor:
    """Average pairwise cosine distance of the N vectors along the last two dims.

    An all-zero vector has no direction: it is left out of the average (a block whose output is zero
    everywhere, such as a GC block at its identity init, gives NaN rather than a made-up number).

    Args:
        vectors: (..., N, D), N positions of D-dimensional vectors.

    Returns:
        (...) distances in [0, 1]; NaN where fewer than one non-zero vector exists.

    Raises:
        ValueError: fewer than 2 dimensions or no positions.
    """
    if vectors.dim() < 2 or vectors.shape[-2] == 0 or vectors.shape[-1] == 0:
        raise ValueError(f"expected (..., N, D) vectors with N, D >= 1, got shape {tuple(vectors.shape)}")
    v = vectors.double()
    unit = F.normalize(v, dim=-1)
    dist = (1.0 - unit @ unit.transpose(-1, -2)) / 2.0  # (..., N, N)
    valid = (v.abs().amax(dim=-1) > 0).double()  # (..., N)
    pairs = valid.unsqueeze(-1) * valid.unsqueeze(-2)
    total = (dist * pairs).sum(dim=(-1, -2))
    count = pairs.sum(dim=(-1, -2))
    return (total / count).clamp(0.0, 1.0).to(vectors.dtype if vectors.is_floating_point() else torch.float32)
