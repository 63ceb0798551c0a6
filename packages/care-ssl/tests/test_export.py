"""Only the online backbone is kept: it exports to a folder timm and our loader read, features identical."""

from __future__ import annotations

import json
from pathlib import Path

import timm
import torch

from care_ssl import CARE, CareConverter
from ctxnets_shared.weights import load_pretrained


def trained_care() -> CARE:
    torch.manual_seed(0)
    m = CARE("resnet18", img_size=32, hidden_dim=32, proj_dim=16, depth=1, dim_head=8)
    opt = torch.optim.SGD(m.online_parameters(), lr=0.1)
    for step in range(1):  # move the weights and BN statistics away from their init
        loss = m(torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)).total
        opt.zero_grad()
        loss.backward()
        opt.step()
        m.update_momentum(step, 1)
    return m


def test_export_then_timm_and_ctxnets_load_give_identical_features(tmp_path: Path) -> None:
    m = trained_care()
    out = m.export_backbone(tmp_path / "bb")
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "resnet18" and config["num_classes"] == 0
    x = torch.randn(2, 3, 48, 48)
    ours = m.backbone.model.eval()
    with torch.no_grad():
        ref = ours(x)
        ref_maps = ours.forward_features(x)
        by_timm = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
        by_loader = load_pretrained(out)
        assert by_timm.num_classes == 0
        torch.testing.assert_close(by_timm(x), ref, rtol=0, atol=0)
        torch.testing.assert_close(by_timm.forward_features(x), ref_maps, rtol=0, atol=0)
        torch.testing.assert_close(by_loader(x), ref, rtol=0, atol=0)
        with_head = timm.create_model(f"local-dir:{out}", pretrained=True, num_classes=10).eval()
        torch.testing.assert_close(with_head.forward_features(x), ref_maps, rtol=0, atol=0)
        assert with_head(x).shape == (2, 10)
    # the exported file holds the backbone only: no transformer, heads or momentum copy
    from ctxnets_shared.weights import load_safetensors

    keys = load_safetensors(out / "model.safetensors").keys()
    assert set(keys) == set(ours.state_dict())


def test_official_checkpoint_keeps_the_student_backbone(tmp_path: Path) -> None:
    """An official-layout CARE checkpoint (DDP-wrapped student + teacher, trans./fc1./fc2.) converts."""
    torch.manual_seed(0)
    student = timm.create_model("resnet18", num_classes=0)
    teacher = timm.create_model("resnet18", num_classes=0)
    ckpt: dict[str, torch.Tensor] = {}
    for k, v in student.state_dict().items():
        ckpt[f"module.student_encoder.{k}"] = v
    for k, v in teacher.state_dict().items():
        ckpt[f"module.teacher_encoder.{k}"] = v
    ckpt["module.student_encoder.trans.net.0.shortcut.0.weight"] = torch.randn(4, 4, 3, 3)
    ckpt["module.student_encoder.fc1.0.weight"] = torch.randn(8, 512)
    ckpt["module.student_encoder.fc2.0.weight"] = torch.randn(8, 512)
    path = tmp_path / "care_official.pth"
    torch.save({"model": ckpt, "epoch": 100}, path)
    out = CareConverter().convert("resnet18", path, tmp_path / "converted", num_classes=0)
    loaded = load_pretrained(out)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), student.eval()(x), rtol=0, atol=0)
