"""Blocks compose across packages and with timm: attention hooks, CoT surgery, features on a real photo."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn
from timm.layers import EcaModule, SEModule

import cot
from ctxnets_shared.weights import load_pretrained


def _count(model: nn.Module, cls: type) -> int:
    return sum(isinstance(m, cls) for m in model.modules())


def test_cotnet_with_timm_attention_by_name(photo_batch: torch.Tensor) -> None:
    model = timm.create_model("cotnet50", attn_layer="eca", attn_stages=(2, 3)).eval()
    assert _count(model, EcaModule) == 6 + 3  # every bottleneck of layer3 (6) and layer4 (3)
    with torch.no_grad():
        assert model(photo_batch).shape == (1, 1000)


def test_cotnet_with_callable_attention() -> None:
    model = timm.create_model("se_cotnetd_50", attn_layer=lambda c: SEModule(c, rd_ratio=1 / 8))
    assert _count(model, SEModule) == 3 + 4 + 6 + 3


def test_cot_layers_replace_timm_resnet_convs() -> None:
    resnet = timm.create_model("resnet26")
    replaced = cot.replace_conv3x3(resnet)
    resnet.eval()
    assert replaced, "no 3x3 convolution was replaced"
    assert _count(resnet, cot.CotLayer) == len(replaced)
    with torch.no_grad():
        assert resnet(torch.randn(1, 3, 96, 96)).shape == (1, 1000)


def test_features_on_a_real_photo(photo_batch: torch.Tensor) -> None:
    model = timm.create_model("cotnet50", features_only=True).eval()
    with torch.no_grad():
        feats = model(photo_batch)
    assert [f.shape[-1] for f in feats] == [56, 28, 14, 7]
    assert model.feature_info.channels() == [256, 512, 1024, 2048]
    assert all(torch.isfinite(f).all() for f in feats)


def test_convert_command_then_timm_local_dir(tmp_path: Path, photo_batch: torch.Tensor) -> None:
    """An official-layout training checkpoint through `ctxnets convert`, then loaded by timm and by us."""
    src = timm.create_model("cotnet50").eval()
    ckpt = {"epoch": 1, "state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}
    torch.save(ckpt, tmp_path / "cotnet50.pth.tar")
    exe = shutil.which("ctxnets")
    assert exe
    subprocess.run(
        [exe, "convert", "cotnet50", str(tmp_path / "cotnet50.pth.tar"), str(tmp_path / "out")],
        check=True,
        timeout=300,
    )
    assert json.loads((tmp_path / "out" / "config.json").read_text())["architecture"] == "cotnet50"
    with torch.no_grad():
        ref = src(photo_batch)
        via_timm = timm.create_model(f"local-dir:{tmp_path / 'out'}", pretrained=True).eval()(photo_batch)
        via_ours = load_pretrained(tmp_path / "out")(photo_batch)
    assert torch.equal(via_timm, ref) and torch.equal(via_ours, ref)


@pytest.mark.parametrize("name", ["cotnet50", "se_cotnetd_50"])
def test_zoo_command_checks_paper_numbers(name: str, tmp_path: Path) -> None:
    exe = shutil.which("ctxnets")
    assert exe
    res = subprocess.run(
        [exe, "zoo", "--models", name, "--out", str(tmp_path)], capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stdout + res.stderr
    rows = json.loads((tmp_path / "zoo.json").read_text())["rows"]
    assert [(r["model"], r["passed"]) for r in rows] == [(name, True)]
