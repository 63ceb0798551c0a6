"""Detection as researchers use these backbones: torchvision's Faster R-CNN with an FPN over features_only.

The GCNet paper's COCO ablations fine-tune Mask R-CNN with frozen BatchNorm (its best results replace it
with synchronised BN, Table 6(a)); a CoTNet or HIRI-ViT user plugs the backbone into a detector the same
way. One training step on a few synthetic images with
boxes: finite losses, and gradients reaching the backbone's context blocks.
"""

from __future__ import annotations

from collections import OrderedDict

import pytest
import timm
import torch
import torch.nn as nn
from timm.utils.model import freeze_batch_norm_2d
from torchvision.models.detection import FasterRCNN
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ctxnets_shared.packages import discover_packages
from ctxnets_shared.testing import randomize_zero_init


class TimmFPNBackbone(nn.Module):
    """A timm ``features_only`` backbone (BatchNorm frozen) under a torchvision FPN: images -> pyramid."""

    def __init__(self, model_name: str, fpn_channels: int = 64, **kwargs: object) -> None:
        super().__init__()
        body = timm.create_model(model_name, features_only=True, **kwargs)
        # random values stand in for pretrained weights: frozen at its zero init, a bottleneck's last BN
        # would keep every residual branch (and its context block) switched off
        self.body = freeze_batch_norm_2d(randomize_zero_init(body))
        self.fpn = FeaturePyramidNetwork(
            self.body.feature_info.channels(), fpn_channels, extra_blocks=LastLevelMaxPool()
        )
        self.out_channels = fpn_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        feats = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))


def _images_and_boxes(size: int) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    gen = torch.Generator().manual_seed(0)
    images = [torch.rand(3, size, size, generator=gen) for _ in range(2)]
    targets = [
        {
            "boxes": torch.tensor([[8.0, 10.0, 70.0, 90.0], [60.0, 40.0, 120.0, 110.0]]),
            "labels": torch.tensor([1, 2]),
        },
        {"boxes": torch.tensor([[20.0, 20.0, 100.0, 60.0]]), "labels": torch.tensor([1])},
    ]
    return images, targets


# model -> (features_only kwargs, class names of its context blocks, image side)
CASES = {
    "gc_resnet50": ({}, ("GlobalContextBlock",), 128),
    "cotnet50": ({}, ("CotLayer",), 128),
    "hiri_vit_s": ({}, ("Attention", "TransformerBlock"), 256),
}


@pytest.mark.parametrize("name", list(CASES))
def test_faster_rcnn_training_step(name: str) -> None:
    discover_packages()
    kwargs, block_names, size = CASES[name]
    torch.manual_seed(0)
    backbone = TimmFPNBackbone(name, **kwargs)
    detector = FasterRCNN(backbone, num_classes=3, min_size=size, max_size=size)
    detector.train()
    images, targets = _images_and_boxes(size)
    losses = detector(images, targets)
    assert set(losses) >= {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    blocks = [m for m in backbone.body.modules() if type(m).__name__ in block_names]
    assert blocks, f"{name} has none of {block_names}"
    reached = [
        m for m in blocks if any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())
    ]
    assert len(reached) == len(blocks), f"{len(blocks) - len(reached)} context blocks got no gradient"
    frozen = [n for n, b in backbone.body.named_buffers() if n.endswith("running_mean")]
    assert frozen, "frozen BatchNorm keeps its statistics as buffers"
