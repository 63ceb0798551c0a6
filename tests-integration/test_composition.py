"""Blocks compose across packages and with timm: attention hooks, CoT surgery, features on a real photo."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections import OrderedDict
from collections.abc import Callable
from functools import partial
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


# ---- ctxnets blocks inside timm's own networks ---------------------------------------------------------


def _gc_params(c: int, ratio: float = 1 / 16) -> int:
    """One GC block (mmcv's ContextBlock): conv_mask, C -> P conv, LayerNorm([P, 1, 1]), P -> C conv."""
    p = int(c * ratio)
    return (c + 1) + (c * p + p) + 2 * p + (p * c + c)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_gc_block_through_timm_resnet50_block_args() -> None:
    from gcnet import GlobalContextBlock

    assert _gc_params(1024) == 133_313  # specs/gcnet.md: one GC r16 block at C=1024
    model = timm.create_model("resnet50", block_args=dict(attn_layer=GlobalContextBlock)).eval()
    # timm puts it in all 16 bottlenecks: gc_resnet50's c3-c5 additions (spec) plus 3 blocks at C=256
    assert _count(model, GlobalContextBlock) == 16
    assert _params(model) == 25_557_032 + 2_521_741 + 3 * _gc_params(256)
    r4 = timm.create_model("resnet50", block_args=dict(attn_layer=partial(GlobalContextBlock, ratio=1 / 4)))
    assert _params(r4) == 25_557_032 + 10_000_909 + 3 * _gc_params(256, 1 / 4)
    # timm's init_weights Kaiming-initialises every conv; zero_init_last() restores the GC identity init
    for gc in (m for m in model.modules() if isinstance(m, GlobalContextBlock)):
        assert gc.channel_add_conv is not None
        assert not gc.channel_add_conv[-1].weight.any() and not gc.channel_add_conv[-1].bias.any()
    y = torch.randn(2, 256, 8, 8)
    with torch.no_grad():
        assert torch.equal(model.layer1[0].se(y), y)
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def _attn_layers() -> dict[str, Callable[..., nn.Module]]:
    from container import ContainerBlock
    from container.aggregation import ContextAggregation
    from gcnet import GlobalContextBlock, NonLocalBlock, SimplifiedNonLocalBlock
    from hiri_vit.cffn import CFFNBlock
    from hiri_vit.hr_block import HRBlock

    return {
        "CotLayer": cot.CotLayer,
        "CoXtLayer": cot.CoXtLayer,
        "GlobalContextBlock": GlobalContextBlock,
        "NonLocalBlock": NonLocalBlock,
        "SimplifiedNonLocalBlock": SimplifiedNonLocalBlock,
        "ContextAggregation": ContextAggregation,
        "ContainerBlock+gc": partial(ContainerBlock, mlp_ratio=4.0, attn_layer="gc"),
        "CFFNBlock": CFFNBlock,
        "HRBlock+eca": partial(HRBlock, attn_layer="eca"),
    }


@pytest.mark.parametrize("name", list(_attn_layers()))
def test_blocks_take_timm_device_and_dtype(name: str) -> None:
    """timm's blocks call ``create_attn(attn_layer, channels, device=..., dtype=...)``."""
    layer = _attn_layers()[name]
    block_args = dict(attn_layer=layer)
    model = timm.create_model("resnet18", block_args=block_args, dtype=torch.float64).eval()
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    assert {b.dtype for b in model.buffers() if b.is_floating_point()} == {torch.float64}
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64, dtype=torch.float64)).dtype == torch.float64
    meta = timm.create_model("resnet18", block_args=block_args, device="meta")
    assert {p.device.type for p in meta.parameters()} == {"meta"}
    assert _params(meta) == _params(model) > 11_689_512  # resnet18 plus the inserted blocks


def test_gc_blocks_after_timm_convnext_blocks() -> None:
    """docs/composition.md's pattern: a GC block after each block of ConvNeXt-T's last two stages."""
    from gcnet import GlobalContextBlock

    convnext = timm.create_model("convnext_tiny").eval()
    assert _params(convnext) == 28_589_128
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = convnext(x)
    keys = set(convnext.state_dict())
    for i in (2, 3):
        stage = convnext.stages[i]
        dim = stage.blocks[0].conv_dw.out_channels
        blocks = []
        for name, block in stage.blocks.named_children():
            blocks += [(name, block), (f"{name}_gc", GlobalContextBlock(dim))]
        stage.blocks = nn.Sequential(OrderedDict(blocks))
    assert _count(convnext, GlobalContextBlock) == 9 + 3
    assert _params(convnext) == 28_589_128 + 9 * _gc_params(384) + 3 * _gc_params(768)
    assert keys <= set(convnext.state_dict())  # pretrained keys unchanged
    with torch.no_grad():
        assert torch.equal(convnext(x), before)  # each GC block starts as the identity
    convnext.train()
    convnext(x).sum().backward()
    gc = convnext.stages[3].blocks.get_submodule("2_gc")
    assert gc.channel_add_conv[-1].weight.grad.abs().sum() > 0
