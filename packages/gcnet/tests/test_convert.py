"""mmdetection GCNet checkpoints (a detector's state dict in mmdet's layout) through MMDetGCNetConverter."""

from __future__ import annotations

import logging

import pytest
import timm
import torch

from ctxnets_shared.weights import CheckpointMismatchError
from gcnet import MMDetGCNetConverter

# the layout of mmdetection's GCNet configs (mask_rcnn_r50_fpn_r16_gcb_c3-c5): backbone keys + detector keys
DETECTOR_KEYS = {
    "neck.lateral_convs.0.conv.weight": (256, 256, 1, 1),
    "neck.fpn_convs.0.conv.weight": (256, 256, 3, 3),
    "rpn_head.rpn_conv.weight": (256, 256, 3, 3),
    "roi_head.bbox_head.fc_cls.weight": (81, 1024),
}


@pytest.fixture(scope="module")
def mmdet_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    backbone = timm.create_model("gc_resnet50", num_classes=0)
    with torch.no_grad():
        for p in backbone.parameters():
            p.normal_()
    state = {f"backbone.{k}": v.clone() for k, v in backbone.state_dict().items()}
    assert "backbone.layer2.0.context_block.conv_mask.weight" in state
    assert "backbone.layer4.2.context_block.channel_add_conv.3.bias" in state
    assert not any(k.startswith("backbone.layer1.") and "context_block" in k for k in state)
    state.update({k: torch.randn(s) for k, s in DETECTOR_KEYS.items()})
    path = tmp_path_factory.mktemp("mmdet") / "mask_rcnn_r50_fpn_r16_gcb_c3-c5_1x_coco.pth"
    torch.save(
        {"meta": {"mmdet_version": "2.25.0", "epoch": 12, "CLASSES": ["person"]}, "state_dict": state}, path
    )
    return path, backbone.state_dict()


def test_converts_backbone_and_reports_detector_keys(mmdet_checkpoint, tmp_path, caplog):
    path, expected = mmdet_checkpoint
    converter = MMDetGCNetConverter()
    with caplog.at_level(logging.WARNING, logger="gcnet.convert"):
        out = converter.convert("gc_resnet50", path, tmp_path / "out")
    assert sorted(converter.ignored_keys) == sorted(DETECTOR_KEYS)
    assert "ignored 4 detector keys" in caplog.text and "roi_head.* (1)" in caplog.text
    model = timm.create_model(f"local-dir:{out}", pretrained=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, expected[k]), k
    assert model.num_classes == 0


def test_wrong_ratio_is_a_clear_mismatch(mmdet_checkpoint, tmp_path):
    path, _ = mmdet_checkpoint
    with pytest.raises(CheckpointMismatchError, match="context_block"):
        MMDetGCNetConverter().convert("gc_resnet50_r4", path, tmp_path / "r4")
    assert not (tmp_path / "r4" / "model.safetensors").exists()
