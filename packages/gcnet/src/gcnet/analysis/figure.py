"""Attention heatmaps for several query positions over the input image (the paper's Figures 1-2).

Needs matplotlib (``pip install 'gcnet[analysis]'``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from ctxnets_shared.weights import atomic_write
from gcnet.analysis.probe import AttentionRecord, upsample_maps

__all__ = ["DEFAULT_QUERIES", "plot_attention"]

#: relative (y, x) query positions: centre and the four quadrant centres
DEFAULT_QUERIES: tuple[tuple[float, float], ...] = (
    (0.5, 0.5),
    (0.25, 0.25),
    (0.25, 0.75),
    (0.75, 0.25),
    (0.75, 0.75),
)


def _pyplot():  # type: ignore[no-untyped-def]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:  # an optional extra
        raise ImportError("attention figures need matplotlib: pip install 'gcnet[analysis]'") from e
    return plt


def plot_attention(
    image: np.ndarray | torch.Tensor,
    records: Mapping[str, AttentionRecord],
    path: str | os.PathLike[str],
    queries: Sequence[tuple[float, float]] = DEFAULT_QUERIES,
    batch_index: int = 0,
    title: str | None = None,
) -> Path:
    """Write a PNG: one row per attention block, one column per query position.

    Each panel is the image with the block's attention map of that query over it (bilinear upsampling)
    and the query marked by a cross. The panels of a row share one colour scale, from 0 to the row's
    largest weight, shown by the row's colour bar.

    Args:
        image: (H, W, 3) RGB image, uint8 or float in [0, 1] (what the model saw, before normalisation).
        records: :func:`~gcnet.analysis.capture_attention` output.
        path: PNG file to write (written to a temporary file and renamed).
        queries: relative (y, x) positions in [0, 1].
        batch_index: which image of the captured batch ``image`` is.
        title: figure title (the CLI puts the image name and the model there).

    Returns:
        ``path``.

    Raises:
        ValueError: no records, no queries, or an image that is not (H, W, 3).
    """
    if not records:
        raise ValueError("no attention records to plot")
    if not queries:
        raise ValueError("need at least one query position")
    img = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) RGB, got shape {img.shape}")
    img = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img.astype(np.float32)
    h, w = img.shape[:2]
    plt = _pyplot()
    rows, cols = len(records), len(queries)
    fig, axes = plt.subplots(
        rows, cols, figsize=(2.4 * cols + 0.8, 2.4 * rows + 0.4), squeeze=False, layout="constrained"
    )
    for r, (name, record) in enumerate(records.items()):
        maps = upsample_maps(record.maps(queries)[batch_index : batch_index + 1], (h, w))[0]
        top = float(maps.max()) or 1.0  # all-zero maps still get a scale
        for c, (qy, qx) in enumerate(queries):
            ax = axes[r][c]
            ax.imshow(img.clip(0.0, 1.0))
            heat = ax.imshow(maps[c].numpy(), cmap="jet", alpha=0.5, vmin=0.0, vmax=top)
            ax.plot([qx * (w - 1)], [qy * (h - 1)], marker="x", color="white", markersize=9, mew=2.5)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"query ({qy:.2f}, {qx:.2f})", fontsize=8)
            if c == 0:
                ax.set_ylabel(name, fontsize=7)
        bar = fig.colorbar(heat, ax=list(axes[r]), shrink=0.9, pad=0.01)
        bar.set_label("attention weight", fontsize=7)
        bar.ax.tick_params(labelsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    path = Path(path)
    try:
        with atomic_write(path) as f:
            fig.savefig(f, format="png", dpi=100)
    finally:
        plt.close(fig)
    return path
