"""Official CONTAINER-LIGHT checkpoints (DeiT-style trainer layout) through ContainerConverter."""

from __future__ import annotations

import argparse
import functools

import pytest
import timm
import torch
from container_reference import OfficialContainerLight

import container
from container import ContainerConverter
from ctxnets_shared.weights import CheckpointMismatchError, load_pretrained
from ctxnets_shared.weights.errors import WeightsNotDownloadableError

# specs/container.md "Official checkpoint keys", shapes from the released module definitions
OFFICIAL_KEYS = {
    "patch_embed1.proj.weight": (64, 3, 4, 4),
    "patch_embed1.norm.weight": (64,),
    "patch_embed4.proj.weight": (512, 320, 2, 2),
    "blocks1.0.pos_embed.weight": (64, 1, 3, 3),
    "blocks1.0.norm1.running_mean": (64,),
    "blocks1.0.conv1.weight": (64, 64, 1, 1),
    "blocks1.0.attn.weight": (64, 1, 5, 5),
    "blocks1.0.conv2.weight": (64, 64, 1, 1),
    "blocks1.0.mlp.fc1.weight": (512, 64, 1, 1),
    "blocks3.7.mlp.fc2.weight": (320, 1280, 1, 1),
    "blocks4.2.sa_weight": (1,),
    "blocks4.2.conv1.weight": (1536, 512, 1, 1),
    "blocks4.2.conv.weight": (512, 1, 5, 5),
    "blocks4.2.conv2.bias": (512,),
    "norm.running_var": (512,),
    "head.weight": (1000, 512),
}


@functools.cache
def _official() -> OfficialContainerLight:
    """The released architecture under its own names, random weights, non-trivial BN statistics."""
    torch.manual_seed(0)
    model = OfficialContainerLight()
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("running_var"):
                t.uniform_(0.5, 2.0)
            elif name.endswith("running_mean") or name.endswith("sa_weight"):
                t.normal_(0, 0.5)
    return model.eval()


def _trainer_checkpoint(model_state, ema_state):
    """What the official main.py saves (DeiT's trainer)."""
    params = [torch.nn.Parameter(torch.zeros(3))]
    opt = torch.optim.AdamW(params, lr=5e-4)
    sched = torch.optim.lr_scheduler.StepLR(opt, 30)
    return {
        "model": model_state,
        "optimizer": opt.state_dict(),
        "lr_scheduler": sched.state_dict(),
        "epoch": 299,
        "model_ema": ema_state,
        "scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000},
        "args": argparse.Namespace(model="container_v1_light", drop_path=0.1, input_size=224, lr=5e-4),
    }


def test_official_key_layout_is_the_spec():
    state = _official().state_dict()
    for key, shape in OFFICIAL_KEYS.items():
        assert tuple(state[key].shape) == shape, key
    assert (
        sum(v.numel() for k, v in state.items() if "running" not in k and "num_batches" not in k)
        == 20_633_643
    )


def test_every_official_key_maps_onto_ours():
    ours = timm.create_model("container_v1_light").state_dict()
    mapped = {container.map_official_key(k): v.shape for k, v in _official().state_dict().items()}
    assert mapped.keys() == ours.keys()
    assert all(ours[k].shape == s for k, s in mapped.items())


def test_package_declares_converter():
    assert isinstance(container.CTXNETS_PACKAGE.converter, ContainerConverter)


def test_trainer_checkpoint_round_trip_matches_the_official_forward(tmp_path):
    official = _official()
    state = official.state_dict()
    ema = {k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}
    ckpt = _trainer_checkpoint({f"module.{k}": v for k, v in state.items()}, ema)
    torch.save(ckpt, tmp_path / "checkpoint.pth")

    out = ContainerConverter().convert("container_v1_light", tmp_path / "checkpoint.pth", tmp_path / "model")
    ours = load_pretrained(out)
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), official(x), rtol=1e-4, atol=1e-4)
    assert ours.pretrained_cfg["architecture"] == "container_v1_light"

    ema_out = ContainerConverter(use_ema=True).convert(
        "container_v1_light", tmp_path / "checkpoint.pth", tmp_path / "ema"
    )
    got = load_pretrained(ema_out).state_dict()
    assert torch.equal(got["stages.3.blocks.2.mixer.mix_logit"], ema["blocks4.2.sa_weight"])
    assert torch.equal(got["stages.0.blocks.0.mixer.static.weight"], ema["blocks1.0.attn.weight"])


def test_bare_state_dict(tmp_path):
    torch.save(_official().state_dict(), tmp_path / "weights.pth")
    out = ContainerConverter().convert("container_v1_light", tmp_path / "weights.pth", tmp_path / "out")
    got = load_pretrained(out).state_dict()
    assert torch.equal(got["stages.2.blocks.7.mixer.in_proj.weight"], _official().blocks3[7].conv1.weight)


def test_mismatch_report_lists_every_key(tmp_path):
    bad = dict(_official().state_dict())
    del bad["blocks4.1.sa_weight"]
    bad["blocks4.1.attn.qkv.weight"] = torch.zeros(1)  # the ViT layout a DeiT-tiny checkpoint would have
    bad["blocks2.0.conv1.weight"] = torch.zeros(128, 64, 1, 1)
    torch.save({"model": bad}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointMismatchError) as err:
        ContainerConverter().convert("container_v1_light", tmp_path / "bad.pth", tmp_path / "out")
    msg = str(err.value)
    assert "1 missing, 1 unexpected, 1 mis-shaped" in msg
    assert "missing:     stages.3.blocks.1.mixer.mix_logit" in msg
    assert "unexpected:  stages.3.blocks.1.mixer.static.qkv.weight" in msg
    assert (
        "stages.1.blocks.0.mixer.in_proj.weight: checkpoint [128, 64, 1, 1] vs model [128, 128, 1, 1]" in msg
    )
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_pretrained_tag_loads_the_official_file_through_timm(tmp_path):
    # the timm way: no separate convert step; the converter is timm's pretrained_filter_fn
    assert timm.list_models("container*", pretrained=True) == ["container_v1_light.official_in1k"]
    official = _official()
    state = official.state_dict()
    ema = {k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}
    torch.save(
        _trainer_checkpoint({f"module.{k}": v for k, v in state.items()}, ema), tmp_path / "checkpoint.pth"
    )
    ours = timm.create_model(
        "container_v1_light.official_in1k",
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(tmp_path / "checkpoint.pth")),
    ).eval()
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), official(x), rtol=1e-4, atol=1e-4)


def test_pretrained_tag_without_a_file_names_the_official_page():
    with pytest.raises(WeightsNotDownloadableError, match="1WMOWoxTX7AQDCbfMYh7naqIHube3K85A"):
        timm.create_model("container_v1_light", pretrained=True)
