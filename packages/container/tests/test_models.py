"""The three registered networks: exact sizes from the spec and the timm model contract (small inputs)."""

from __future__ import annotations

import copy
import functools
import warnings

import pytest
import timm
import torch

import container
from ctxnets_shared.profiling import count_gflops, count_params
from ctxnets_shared.weights import load_pretrained, save_pretrained

# specs/container.md: parameters, GMACs at 224, top-1 (released checkpoint / abstract / DeiT-S + 0.5)
SPEC = {
    "container_v1_light": (20_633_643, 3.86, 82.26),
    "container_v1": (22_434_234, 8.96, 82.7),
    "container_pam_small": (24_844_912, 4.6 + 12 * 197**2 * 384 / 1e9, 80.3),
}
# specs/container.md: CONTAINER-LIGHT per part
LIGHT_PARTS = {
    "stages.0.patch_embed": 3_264,
    "stages.1.patch_embed": 33_152,
    "stages.2.patch_embed": 164_800,
    "stages.3.patch_embed": 656_896,
    "stages.0.blocks": 230_976,
    "stages.1.blocks": 1_205_760,
    "stages.2.blocks": 8_312_320,
    "stages.3.blocks": 9_512_451,
    "norm": 1_024,
    "head": 513_000,
}
CNNS = ["container_v1_light", "container_v1"]
SMALL = 64


@functools.cache
def _shared(name: str) -> torch.nn.Module:
    """One instance per model for read-only checks."""
    torch.manual_seed(0)
    return timm.create_model(name).eval()


def _x(batch: int = 2, h: int = SMALL, w: int | None = None) -> torch.Tensor:
    return torch.randn(batch, 3, h, w or h, generator=torch.Generator().manual_seed(1))


def test_registered():
    assert set(timm.list_models("container*")) >= set(container.MODELS)
    assert container.CTXNETS_PACKAGE.models == container.MODELS


@pytest.mark.parametrize("name", list(SPEC))
def test_param_count(name):
    params = count_params(_shared(name))
    if name == "container_v1":  # a reconstruction: within 0.5% of the spec's count
        assert params == pytest.approx(SPEC[name][0], rel=0.005)
    else:
        assert params == SPEC[name][0]


def test_container_light_per_part_counts():
    model = _shared("container_v1_light")
    assert {part: count_params(model.get_submodule(part)) for part in LIGHT_PARTS} == LIGHT_PARTS


def test_container_v1_heads_and_official_16_head_option():
    model = _shared("container_v1")
    assert [s.blocks[0].mixer.num_heads for s in model.stages] == [2, 4, 10, 16]
    sixteen = timm.create_model("container_v1", num_heads=16)
    assert [s.blocks[0].mixer.num_heads for s in sixteen.stages] == [16] * 4
    assert count_params(sixteen) == count_params(model)


@pytest.mark.parametrize("name", list(SPEC))
def test_gflops_within_5pct(name):
    assert count_gflops(_shared(name), (3, 224, 224)) == pytest.approx(SPEC[name][1], rel=0.05)


@pytest.mark.parametrize("name", list(SPEC))
def test_pretrained_cfg(name):
    params, gflops, top1 = SPEC[name]
    cfg = _shared(name).pretrained_cfg
    assert cfg["paper_params"] == params and cfg["paper_top1"] == top1
    assert cfg["paper_gflops"] == pytest.approx(gflops, abs=0.01)
    assert cfg["input_size"] == (3, 224, 224) and cfg["crop_pct"] == 0.875  # resize 256, crop 224
    assert cfg["interpolation"] == "bicubic" and cfg["origin_url"] == "https://github.com/allenai/container"
    assert not cfg.get("url")
    model = _shared(name)
    assert model.get_submodule(cfg["first_conv"]).in_channels == 3
    assert model.get_submodule(cfg["classifier"]) is model.get_classifier()


@pytest.mark.parametrize("name", list(SPEC))
def test_shapes_at_224(name):
    with torch.no_grad():
        out = _shared(name)(_x(1, 224))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()


def test_shapes_at_256x320():
    model = _shared("container_v1_light")
    with torch.no_grad():
        feats = model.forward_intermediates(_x(1, 256, 320), intermediates_only=True)
        out = model(_x(1, 256, 320))
    assert [tuple(f.shape[1:]) for f in feats] == [(64, 64, 80), (128, 32, 40), (320, 16, 20), (512, 8, 10)]
    assert out.shape == (1, 1000)


def test_mix_scalar_per_mixed_block_starts_at_zero():
    light = _shared("container_v1_light")
    logits = {n: p for n, p in light.named_parameters() if n.endswith("mix_logit")}
    assert sorted(logits) == [f"stages.3.blocks.{i}.mixer.mix_logit" for i in range(3)]
    assert all(p.shape == (1,) and p.item() == 0.0 and p.requires_grad for p in logits.values())
    assert light.no_weight_decay() == set(logits)
    assert sum(n.endswith("mix_logit") for n, _ in _shared("container_v1").named_parameters()) == 18


@pytest.mark.parametrize("name", list(SPEC))
def test_backward_every_param_gets_grad(name):
    model = copy.deepcopy(_shared(name)).train()
    model.reset_classifier(10)
    model(_x(2, 32)).logsumexp(1).sum().backward()  # batch 2: the BNs see 2 values per channel in stage 4
    assert not [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]


@pytest.mark.parametrize("name", CNNS)
def test_reset_classifier(name):
    model = copy.deepcopy(_shared(name))
    model.reset_classifier(0)
    with torch.no_grad():
        feats = model.forward_features(_x(1))
        assert model.forward_head(feats).shape == (1, 512)
        assert model.forward_head(feats, pre_logits=True).shape == (1, 512)
        model.reset_classifier(0, "")
        assert model.forward_head(feats).shape == (1, 512, 2, 2)
    model.reset_classifier(7)
    assert model.get_classifier().out_features == 7 and model.num_classes == 7


@pytest.mark.parametrize("name", CNNS)
def test_features_only_strides_4_to_32(name):
    model = timm.create_model(name, features_only=True).eval()
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    assert model.feature_info.channels() == [64, 128, 320, 512]
    with torch.no_grad():
        feats = model(_x(1))
    assert [f.shape[1] for f in feats] == [64, 128, 320, 512]
    assert [SMALL // f.shape[-1] for f in feats] == [4, 8, 16, 32]


def test_forward_intermediates_and_prune():
    model = _shared("container_v1_light")
    with torch.no_grad():
        final, inter = model.forward_intermediates(_x(1))
        torch.testing.assert_close(final, model.forward_features(_x(1)))
        assert [f.shape[1] for f in inter] == [64, 128, 320, 512]
        only = model.forward_intermediates(_x(1), indices=[0, 1], stop_early=True, intermediates_only=True)
        assert [f.shape[1] for f in only] == [64, 128]
        normed = model.forward_intermediates(_x(1), indices=1, norm=True, intermediates_only=True)
        torch.testing.assert_close(normed[0], final)
    with pytest.raises(ValueError, match="out of range"):
        model.forward_intermediates(_x(1), indices=[4])
    pruned = copy.deepcopy(model)
    assert pruned.prune_intermediate_layers(indices=(0, 1), prune_norm=True) == [0, 1]
    assert len(pruned.stages) == 2 and pruned.num_classes == 0
    with torch.no_grad():
        feats = pruned.forward_intermediates(_x(1), indices=(0, 1), intermediates_only=True)
    torch.testing.assert_close(feats, only)


@pytest.mark.parametrize("name", CNNS)
def test_grad_checkpointing_same_output(name):
    model = copy.deepcopy(_shared(name))  # eval: BN statistics must not move
    x = _x(1).requires_grad_()
    ref = model(x)
    (ref_grad,) = torch.autograd.grad(ref.sum(), x)
    model.set_grad_checkpointing(True)
    out = model(x)
    (grad,) = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(grad, ref_grad)


@pytest.mark.parametrize("name", list(SPEC))
def test_group_matcher_covers_every_param(name):
    from timm.models import group_parameters

    model = _shared(name)
    for coarse in (False, True):
        groups = group_parameters(model, model.group_matcher(coarse=coarse))
        assert sum(len(v) for v in groups.values()) == len(list(model.parameters()))


def test_attn_layer_hook_and_stages():
    model = timm.create_model("container_v1_light", attn_layer="se", attn_stages=(2, 3)).eval()
    assert isinstance(model.stages[0].blocks[0].attn, torch.nn.Identity)
    assert not isinstance(model.stages[3].blocks[2].attn, torch.nn.Identity)
    assert count_params(model) > SPEC["container_v1_light"][0]
    calls: list[int] = []
    spy = timm.create_model(
        "container_v1_light", attn_layer=lambda c: _Spy(c, calls), attn_stages=(1,)
    ).eval()
    with torch.no_grad():
        spy(_x(1))
    assert calls == [128] * 4  # after the MLP of each of stage 2's four blocks
    with pytest.raises(ValueError, match="attn_stages are 0-based stage indices in 0..3"):
        timm.create_model("container_v1_light", attn_layer="se", attn_stages=(4,))


class _Spy(torch.nn.Module):
    def __init__(self, channels: int, calls: list[int]) -> None:
        super().__init__()
        self.channels, self.calls = channels, calls

    def forward(self, x):
        assert x.shape[1] == self.channels
        self.calls.append(x.shape[1])
        return x


@pytest.mark.parametrize(
    "shape, match",
    [
        ((1, 1, 64, 64), "input channels"),
        ((1, 3, 64, 80 + 8), "multiples of 32.*pad to 64x96"),
        ((1, 3, 48, 64), "multiples of 32"),
        ((1, 3, 16, 64), "smaller than the network stride"),
        ((3, 64, 64), "4-D"),
    ],
)
@pytest.mark.parametrize("name", CNNS)
def test_bad_input_is_a_clear_error(name, shape, match):
    model = _shared(name)
    with pytest.raises(ValueError, match=match):
        model(torch.zeros(shape))
    with pytest.raises(ValueError, match=match):
        model.forward_intermediates(torch.zeros(shape))


def test_pam_bad_input():
    model = _shared("container_pam_small")
    with pytest.raises(ValueError, match="input channels"):
        model(torch.zeros(1, 1, 64, 64))
    with pytest.raises(ValueError, match="multiples of the patch size 16"):
        model(torch.zeros(1, 3, 64, 72))
    with pytest.raises(ValueError, match="square patch grids"):
        model(torch.zeros(1, 3, 64, 96))


def _meta_forward(name: str, h: int, w: int) -> None:
    model = copy.deepcopy(_shared(name)).to("meta")  # shapes only: no detection-size compute
    model(torch.empty(1, 3, h, w, device="meta"))


def test_detection_size_global_attention_warns():
    with pytest.warns(UserWarning, match=r"stage-1 global attention over 67200 tokens \(800x1344 input\)"):
        _meta_forward("container_v1", 800, 1344)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _meta_forward("container_v1", 224, 224)  # classification size: quiet
        _meta_forward("container_v1_light", 800, 1344)  # static affinity in stage 1: quiet


@pytest.mark.parametrize("name", list(SPEC))
def test_safetensors_round_trip(name, tmp_path):
    model = _shared(name)
    save_pretrained(model, tmp_path / name)
    loaded = load_pretrained(tmp_path / name)
    assert type(loaded) is type(model)
    with torch.no_grad():
        torch.testing.assert_close(loaded(_x(1)), model(_x(1)))
