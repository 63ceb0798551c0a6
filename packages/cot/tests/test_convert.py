"""Official-layout checkpoints through CotConverter / the shared convert flow."""

from __future__ import annotations

import pytest
import timm
import torch

import cot
from cot import CotConverter
from ctxnets_shared.weights import CheckpointMismatchError, load_pretrained

# specs/cot.md "Key layout of the official checkpoints", with shapes from the official module definitions
OFFICIAL_KEYS = {
    "cotnet50": {
        "conv1.weight": (64, 3, 7, 7),
        "bn1.running_var": (64,),
        "layer1.0.conv2.key_embed.0.weight": (64, 16, 3, 3),
        "layer1.0.conv2.key_embed.1.weight": (64,),
        "layer1.0.conv2.embed.0.weight": (32, 128, 1, 1),
        "layer1.0.conv2.embed.1.bias": (32,),
        "layer1.0.conv2.embed.3.weight": (72, 32, 1, 1),
        "layer1.0.conv2.embed.3.bias": (72,),
        "layer1.0.conv2.embed.4.weight": (72,),
        "layer1.0.conv2.conv1x1.0.weight": (64, 64, 1, 1),
        "layer1.0.conv2.conv1x1.1.weight": (64,),
        "layer1.0.conv2.bn.weight": (64,),
        "layer1.0.conv2.se.0.weight": (32, 64, 1, 1),
        "layer1.0.conv2.se.1.weight": (32,),
        "layer1.0.conv2.se.3.weight": (128, 32, 1, 1),
        "layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "layer1.0.downsample.1.weight": (256,),
        "layer4.2.conv2.se.0.weight": (256, 512, 1, 1),
        "layer4.2.bn3.weight": (2048,),
        "fc.weight": (1000, 2048),
    },
    "cotnext50_2x48d": {
        "layer1.0.conv2.key_embed.0.weight": (96, 12, 3, 3),
        "layer1.0.conv2.embed.0.weight": (48, 96, 1, 1),
        "layer1.0.conv2.embed.3.weight": (108, 24, 1, 1),
        "layer1.0.conv2.conv1x1.0.weight": (96, 48, 1, 1),
    },
    "se_cotnetd_50": {
        "conv1.0.weight": (32, 3, 3, 3),
        "conv1.1.weight": (32,),
        "conv1.3.weight": (32, 32, 3, 3),
        "conv1.4.weight": (32,),
        "conv1.6.weight": (64, 32, 3, 3),
        "bn1.weight": (64,),
        "layer1.0.conv2.conv.weight": (64, 64, 3, 3),
        "layer1.0.conv2.bn0.weight": (64,),
        "layer1.0.conv2.fc1.weight": (32, 64, 1, 1),
        "layer1.0.conv2.bn1.weight": (32,),
        "layer1.0.conv2.fc2.weight": (64, 32, 1, 1),
        "layer1.0.downsample.1.weight": (256, 64, 1, 1),
        "layer1.0.downsample.2.weight": (256,),
        "layer3.0.conv2.key_embed.0.weight": (256, 64, 3, 3),
        "layer3.1.conv2.fc1.weight": (64, 256, 1, 1),
        "layer4.1.conv2.embed.3.weight": (576, 256, 1, 1),
    },
}


@pytest.mark.parametrize("name", list(OFFICIAL_KEYS))
def test_state_dict_keys_follow_the_official_layout(name):
    state = timm.create_model(name).state_dict()
    for key, shape in OFFICIAL_KEYS[name].items():
        assert key in state, key
        assert tuple(state[key].shape) == shape, key


def test_package_declares_converter():
    assert isinstance(cot.CTXNETS_PACKAGE.converter, CotConverter)


@pytest.fixture(scope="module")
def official():
    """A cotnet50 'official' state dict: random weights, official key names (ours are identical)."""
    torch.manual_seed(0)
    state = timm.create_model("cotnet50").state_dict()
    return {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in state.items()}


def _check_loaded(out_dir, expected):
    model = load_pretrained(out_dir)
    got = model.state_dict()
    for key in ("conv1.weight", "layer1.0.conv2.embed.3.weight", "fc.bias"):
        assert torch.equal(got[key], expected[key])
    return model


def test_plain_state_dict(tmp_path, official):
    torch.save(official, tmp_path / "cotnet50.pth")
    out = CotConverter().convert("cotnet50", tmp_path / "cotnet50.pth", tmp_path / "out")
    model = _check_loaded(out, official)
    # strict load of the official dict into a fresh model: keys are equal
    timm.create_model("cotnet50").load_state_dict(official, strict=True)
    assert model.pretrained_cfg["architecture"] == "cotnet50"


def test_training_checkpoint_with_module_prefix_and_ema(tmp_path, official):
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in official.items()}
    ckpt = {
        "epoch": 349,
        "arch": "cotnet50",
        "state_dict": {f"module.{k}": v for k, v in official.items()},
        "state_dict_ema": {f"module.{k}": v for k, v in ema.items()},
    }
    torch.save(ckpt, tmp_path / "cotnet50.pth.tar")
    _check_loaded(
        CotConverter().convert("cotnet50", tmp_path / "cotnet50.pth.tar", tmp_path / "plain"), official
    )
    out = CotConverter(use_ema=True).convert("cotnet50", tmp_path / "cotnet50.pth.tar", tmp_path / "ema")
    _check_loaded(out, ema)


def test_mismatched_checkpoint_lists_keys(tmp_path, official):
    bad = dict(official)
    del bad["layer2.1.conv2.se.3.bias"]
    bad["layer2.1.conv2.local_conv.weight"] = torch.zeros(1)
    bad["layer1.0.conv2.embed.3.weight"] = torch.zeros(36, 32, 1, 1)
    torch.save({"state_dict": bad}, tmp_path / "bad.pth.tar")
    with pytest.raises(CheckpointMismatchError) as err:
        CotConverter().convert("cotnet50", tmp_path / "bad.pth.tar", tmp_path / "out")
    msg = str(err.value)
    assert "missing:     layer2.1.conv2.se.3.bias" in msg
    assert "unexpected:  layer2.1.conv2.local_conv.weight" in msg
    assert "layer1.0.conv2.embed.3.weight" in msg and "[36, 32, 1, 1]" in msg
    assert not (tmp_path / "out" / "model.safetensors").exists()
