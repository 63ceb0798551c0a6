"""What CARE keeps: the online CNN encoder (paper Sec. 3.3, "we only keep the CNN encoder_1").

:func:`export_backbone` writes it as a timm ``local-dir`` safetensors folder; :class:`CareConverter` turns an
official CARE checkpoint (ChongjianGE/CARE, ResNet-50) into the same kind of folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ctxnets_shared.weights import CheckpointConverter, save_pretrained

if TYPE_CHECKING:
    from care_ssl.care import CARE

__all__ = ["CareConverter", "backbone_model_args", "export_backbone"]


def backbone_model_args(care: CARE) -> dict[str, Any]:
    """The ``timm.create_model`` kwargs that rebuild the exported backbone (``num_classes`` aside)."""
    args = dict(care.backbone_kwargs)
    if care.in_chans != 3:
        args["in_chans"] = care.in_chans
    return args


def export_backbone(care: CARE, out_dir: str | os.PathLike[str]) -> Path:
    """Write ``care``'s online backbone to ``out_dir`` (``model.safetensors`` + ``config.json``).

    The backbone has no classifier and is recorded with ``num_classes=0``, so timm and
    ``ctxnets_shared.weights.load_pretrained`` load it without missing ``fc.*`` keys. To fine-tune with a
    head: ``timm.create_model("local-dir:DIR", pretrained=True, num_classes=N)``. SyncBatchNorm layers have
    BatchNorm2d's state-dict keys, so a backbone converted for DDP exports the same way.
    """
    model: Any = care.backbone.model  # timm model: pretrained_cfg is a plain attribute
    original = getattr(model, "pretrained_cfg", None)
    # the weights are CARE's, not those of the timm tag the architecture was registered with
    cfg = {k: v for k, v in dict(original or {}).items() if k not in ("tag", "paper_ids", "origin_url")}
    cfg.update(num_classes=0, input_size=(care.in_chans, care.img_size, care.img_size))
    model.pretrained_cfg = cfg
    try:
        return save_pretrained(
            model, out_dir, architecture=care.backbone.name, model_args=backbone_model_args(care) or None
        )
    finally:
        model.pretrained_cfg = original


class CareConverter(CheckpointConverter):
    """Official CARE checkpoint -> the online ResNet-50 (``timm.create_model("resnet50", num_classes=0)``).

    Keys lose ``module.student_encoder.``; the transformer (``trans.``), the heads (``fc1.``, ``fc2.``) and
    the momentum encoder (``teacher_encoder.``) are dropped.
    """

    strip_prefixes = ("module.student_encoder.", "module.", "student_encoder.")
    _dropped = ("trans.", "fc1.", "fc2.", "fc.", "teacher_encoder.")

    def map_key(self, key: str) -> str | None:
        """Backbone keys keep their (timm-identical) names; everything else is dropped."""
        return None if key.startswith(self._dropped) else key
