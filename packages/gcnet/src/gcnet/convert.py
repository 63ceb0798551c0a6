"""Converter from mmdetection GCNet detector checkpoints to GC-ResNet backbone weights (safetensors).

The official GCNet code (xvjiarui/GCNet, on mmdetection) and mmdetection's own GCNet configs save a whole
detector: ``{"meta": ..., "state_dict": {"backbone.conv1.weight", ..., "backbone.layer{2,3,4}.{i}.
context_block.conv_mask.weight", ..., "neck.*", "rpn_head.*", "roi_head.*"}}``. The backbone's keys equal
ours once ``backbone.`` is stripped (torchvision ResNet names, mmcv ContextBlock names); every other key
belongs to the detector and is left out and reported. The result is a backbone without classifier
(``num_classes=0``)::

    ctxnets convert gc_resnet50 mask_rcnn_r50_fpn_r16_gcb_c3-c5_1x_coco.pth out/gc_resnet50
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ctxnets_shared.weights import CheckpointConverter

__all__ = ["MMDetGCNetConverter"]

_logger = logging.getLogger(__name__)
_PREFIX = "backbone."


class MMDetGCNetConverter(CheckpointConverter):
    """mmdetection GCNet checkpoint -> GC-ResNet backbone state dict (``backbone.`` stripped).

    After :meth:`convert_state_dict`, :attr:`ignored_keys` lists the detector keys that were left out.

    Args:
        use_ema: take EMA weights (``ema_*`` keys of mmdetection's EMA hook are not supported; a training
            checkpoint with ``state_dict_ema`` is).
    """

    wrapper_keys = ("state_dict", "model")
    ema_keys = ("state_dict_ema",)

    def __init__(self, use_ema: bool = False) -> None:
        super().__init__(use_ema=use_ema)
        self.ignored_keys: list[str] = []

    def map_key(self, key: str) -> str | None:
        """``backbone.layer2.0.context_block.conv_mask.weight`` -> ``layer2.0.context_block...``; None
        (ignored) for the detector's neck and heads."""
        if key.startswith(_PREFIX):
            return key[len(_PREFIX) :]
        self.ignored_keys.append(key)
        return None

    def convert_state_dict(self, ckpt: Any, model: nn.Module) -> dict[str, torch.Tensor]:
        """Unwrap, keep the backbone, verify against ``model``; logs a summary of the ignored keys."""
        self.ignored_keys = []
        state = super().convert_state_dict(ckpt, model)
        if self.ignored_keys:
            groups = Counter(k.split(".")[0] for k in self.ignored_keys)
            summary = ", ".join(f"{g}.* ({n})" for g, n in sorted(groups.items()))
            _logger.warning(
                "ignored %d detector keys that are not part of the backbone: %s",
                len(self.ignored_keys),
                summary,
            )
        return state

    def convert(
        self,
        model_name: str,
        ckpt_path: str | os.PathLike[str],
        out_dir: str | os.PathLike[str],
        **model_kwargs: Any,
    ) -> Path:
        """Convert for ``model_name`` (a backbone: ``num_classes=0`` unless given) into ``out_dir``."""
        model_kwargs.setdefault("num_classes", 0)
        return super().convert(model_name, ckpt_path, out_dir, **model_kwargs)
