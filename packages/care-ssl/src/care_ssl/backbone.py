"""Any timm backbone as CARE's CNN encoder: its stage-4 (stride 16) and stage-5 (stride 32) maps.

Paper: Ge et al., NeurIPS 2021, Sec. 3.2: the T-stream takes the encoder's feature maps (the official code
taps ResNet's ``layer3``, i.e. C4, stride 16) while the C-stream pools the last stage. Any model following
timm's feature contract (``feature_info`` + ``forward_intermediates``) works: every backbone of ctxnets, and
timm's own CNNs.
"""

from __future__ import annotations

from typing import Any

import timm
import torch
import torch.nn as nn

__all__ = ["Backbone", "BackboneError", "create_backbone"]


class BackboneError(ValueError):
    """A backbone CARE cannot use: unknown name, or no stride-16 / stride-32 feature maps."""


def create_backbone(name: str, **kwargs: Any) -> nn.Module:
    """Build timm model ``name`` without a classifier (``num_classes=0``), from any installed package.

    Raises:
        BackboneError: no installed package registers ``name``.
    """

    def known() -> bool:
        return bool(timm.is_model(name) or timm.is_model(name.split(".")[0]))

    if not known():
        from ctxnets_shared.packages import discover_packages

        discover_packages()  # importing the ctxnets packages registers their models with timm
    if not known():
        raise BackboneError(
            f"unknown backbone {name!r}: no installed package registers a timm model of that name "
            f"(see timm.list_models(), e.g. 'resnet50')"
        )
    kwargs.setdefault("num_classes", 0)
    return timm.create_model(name, pretrained=False, **kwargs)


def _feature_levels(model: nn.Module) -> list[dict[str, Any]]:
    info = getattr(model, "feature_info", None)
    if info is None:
        return []
    if hasattr(info, "get_dicts"):  # timm's FeatureInfo (features_only wrappers)
        return list(info.get_dicts())
    return [dict(d) for d in info]


class Backbone(nn.Module):
    """The online (or momentum) CNN encoder: ``model`` plus where its C4 and C5 maps sit.

    Args:
        model: a timm model built with ``num_classes=0`` (exported as is), or its registered name.
        img_size: square input side the positional tables downstream are sized for.
        in_chans: input channels.

    Attributes:
        c4_index, c5_index: ``forward_intermediates`` indices of the last stride-16 and stride-32 maps.
        c4_shape, c5_shape: (C, H, W) of those maps at ``img_size``.
        num_features: width of the pooled embedding the C-stream projector takes.
    """

    def __init__(self, model: nn.Module | str, img_size: int = 224, in_chans: int = 3) -> None:
        super().__init__()
        self.name = model if isinstance(model, str) else _arch_name(model)
        self.model = create_backbone(model, in_chans=in_chans) if isinstance(model, str) else model
        self.img_size, self.in_chans = int(img_size), int(in_chans)
        levels = _feature_levels(self.model)
        if not levels or not hasattr(self.model, "forward_intermediates"):
            raise BackboneError(
                f"backbone {self.name!r} exposes no feature maps (needs timm's feature_info and "
                f"forward_intermediates)"
            )
        reductions = [int(d["reduction"]) for d in levels]
        if 16 not in reductions or 32 not in reductions:
            raise BackboneError(
                f"backbone {self.name!r} has no stage-4 (stride 16) and stage-5 (stride 32) feature maps: "
                f"its feature strides are {reductions}; CARE needs both, as in a CNN hierarchy"
            )
        self.c4_index = max(i for i, r in enumerate(reductions) if r == 16)
        self.c5_index = max(i for i, r in enumerate(reductions) if r == 32)
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            c4, c5, emb = self(torch.zeros(1, self.in_chans, self.img_size, self.img_size))
        self.model.train(was_training)
        self.c4_shape = tuple(c4.shape[1:])
        self.c5_shape = tuple(c5.shape[1:])
        self.num_features = int(emb.shape[-1])
        for idx, shape in ((self.c4_index, self.c4_shape), (self.c5_index, self.c5_shape)):
            if shape[0] != int(levels[idx]["num_chs"]):
                raise BackboneError(
                    f"backbone {self.name!r}: forward_intermediates index {idx} gives {shape[0]} channels "
                    f"but feature_info says {levels[idx]['num_chs']}"
                )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (B, in_chans, H, W) -> (C4 map, C5 map, pooled embedding (B, num_features))."""
        model: Any = self.model  # timm's feature contract, which nn.Module's typing does not know
        final, (c4, c5) = model.forward_intermediates(x, indices=[self.c4_index, self.c5_index])
        return c4, c5, model.forward_head(final, pre_logits=True)


def _arch_name(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return str(dict(cfg).get("architecture") or type(model).__name__)
