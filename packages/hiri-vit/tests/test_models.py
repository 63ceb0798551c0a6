"""hiri_vit_s/b/l: the spec's targets (specs/hiri-vit.md) and the timm model contract, at small inputs.

GFLOPs here are GMACs (multiply-accumulates) as in the paper's tables, from
``ctxnets_shared.profiling.count_gflops`` (torch's FlopCounterMode, halved): it counts convolutions,
linear layers and the attention matmuls (scaled_dot_product_attention), not norms, activations, pooling,
additions or the nearest-neighbour upsampling. Parameter and MAC counts run on the meta device (shapes
only, no arithmetic) so the 768-pixel counts of the large model take no CPU time.
"""

from __future__ import annotations

import copy
import functools

import pytest
import timm
import torch
import torch.nn as nn
from timm.utils.model import freeze_batch_norm_2d

import hiri_vit
from ctxnets_shared.profiling import count_gflops, count_params
from ctxnets_shared.weights import load_pretrained, save_pretrained

# specs/hiri-vit.md "Targets" (paper Table II): params, GFLOPs (MACs) at 448 and at 768, top-1 at 448
SPEC = {
    "hiri_vit_s": (34.8e6, 5.0, 16.1, 84.3),
    "hiri_vit_b": (54.4e6, 9.9, 31.6, 85.2),
    "hiri_vit_l": (94.4e6, 19.9, 63.4, 85.7),
}
MODELS = list(SPEC)
SMALL = 128  # two positions per side in stage 5 (stride 64)


@functools.cache
def _meta(name: str) -> nn.Module:
    with torch.device("meta"):
        return timm.create_model(name)


@functools.cache
def _shared(name: str) -> nn.Module:
    """One real instance per model for read-only checks."""
    torch.manual_seed(0)
    return timm.create_model(name).eval()


def _x(batch: int = 2, size: int = SMALL, chans: int = 3) -> torch.Tensor:
    return torch.randn(batch, chans, size, size, generator=torch.Generator().manual_seed(1))


def test_registered():
    assert set(timm.list_models("hiri_vit_*")) == set(MODELS)
    assert set(hiri_vit.CTXNETS_PACKAGE.models) == set(MODELS)


@pytest.mark.parametrize("name", MODELS)
def test_params_within_2_5pct(name):
    assert count_params(_meta(name)) == pytest.approx(SPEC[name][0], rel=0.025)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("res", [448, 768])
def test_gmacs_within_6pct(name, res):
    target = SPEC[name][1] if res == 448 else SPEC[name][2]
    assert count_gflops(_meta(name), (3, res, res)) == pytest.approx(target, rel=0.06)


def test_meta_count_equals_real_count():
    """The meta-device count is the count of a real forward (same dispatch, including the fused attention)."""
    assert count_gflops(_shared("hiri_vit_s"), (3, 192, 192)) == count_gflops(
        _meta("hiri_vit_s"), (3, 192, 192)
    )


def test_avg_head_is_about_10pct_smaller():
    with torch.device("meta"):
        avg = timm.create_model("hiri_vit_s", head_type="avg")
    ratio = count_params(avg) / count_params(_meta("hiri_vit_s"))
    assert 0.85 < ratio < 0.93


@pytest.mark.parametrize("name", MODELS)
def test_pretrained_cfg(name):
    params, gflops, _, top1 = SPEC[name]
    model = _meta(name)
    cfg = model.pretrained_cfg
    assert (cfg["paper_params"], cfg["paper_gflops"], cfg["paper_img_size"], cfg["paper_top1"]) == (
        params,
        gflops,
        448,
        top1,
    )
    assert cfg["input_size"] == (3, 448, 448) and cfg["pool_size"] == (7, 7)
    assert cfg["params_rtol"] == 0.025 and cfg["gflops_rtol"] == 0.06
    assert not cfg.get("url")
    assert model.get_submodule(cfg["first_conv"]).in_channels == 3
    assert model.get_submodule(cfg["classifier"]) is model.get_classifier()


def test_stage_shapes_448_and_odd():
    model = _shared("hiri_vit_s")
    with torch.no_grad():
        for side, sides in ((448, [112, 56, 28, 14, 7]), (449, [113, 57, 29, 15, 8])):
            feats = model.forward_intermediates(_x(1, side), intermediates_only=True)
            assert [f.shape[-1] for f in feats] == sides and [f.shape[-2] for f in feats] == sides
            assert [f.shape[1] for f in feats] == [32, 64, 128, 320, 512]


@pytest.mark.parametrize("name", ["hiri_vit_b", "hiri_vit_l"])
def test_stage_shapes_450_meta(name):
    feats = _meta(name).forward_intermediates(
        torch.randn(1, 3, 450, 450, device="meta"), intermediates_only=True
    )
    assert [f.shape[-1] for f in feats] == [113, 57, 29, 15, 8]


@pytest.mark.parametrize("name", MODELS)
def test_forward_backward(name):
    model = copy.deepcopy(_shared(name)).train()
    model.reset_classifier(10)
    out = model(_x())
    assert out.shape == (2, 10)
    out.logsumexp(1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


def test_forward_features_and_head():
    model = _shared("hiri_vit_s")
    with torch.no_grad():
        feats = model.forward_features(_x())
        assert feats.shape == (2, 512, 2, 2) and model.num_features == model.head_hidden_size == 512
        assert model.forward_head(feats).shape == (2, 1000)
        assert model.forward_head(feats, pre_logits=True).shape == (2, 512)
        dense = model.forward_dense_logits(_x())
        assert dense.shape == (2, 1000, 2, 2) and torch.isfinite(dense).all()


def test_reset_classifier():
    model = copy.deepcopy(_shared("hiri_vit_s"))
    with torch.no_grad():
        feats = model.forward_features(_x(1))
        model.reset_classifier(0)
        assert model.forward_head(feats).shape == (1, 512)
        model.reset_classifier(0, "")
        assert model.forward_head(feats).shape == (1, 512, 2, 2)
        model.reset_classifier(7, "avg")
        assert model.forward_head(feats).shape == (1, 7) and model.get_classifier().out_features == 7
    assert model.num_classes == 7
    with pytest.raises(ValueError, match="global_pool"):
        model.reset_classifier(7, "max")


def test_features_only_default_strides_8_to_64():
    model = timm.create_model("hiri_vit_s", features_only=True).eval()
    assert model.feature_info.reduction() == [8, 16, 32, 64]
    assert model.feature_info.channels() == [64, 128, 320, 512]
    with torch.no_grad():
        feats = model(_x(1))
    assert [tuple(f.shape[1:]) for f in feats] == [(64, 16, 16), (128, 8, 8), (320, 4, 4), (512, 2, 2)]


def test_features_only_stride_4_on_request_and_custom_strides():
    model = timm.create_model("hiri_vit_s", features_only=True, out_indices=(0, 1, 2, 3, 4))
    assert model.feature_info.reduction() == [4, 8, 16, 32, 64]
    model = timm.create_model("hiri_vit_s", features_only=True, downsample_strides=(1, 2, 2, 2)).eval()
    assert model.feature_info.reduction() == [4, 8, 16, 32]  # derived from the stride options
    with torch.no_grad():
        assert [f.shape[-1] for f in model(_x(1, 64))] == [16, 8, 4, 2]


def test_forward_intermediates_and_prune():
    model = _shared("hiri_vit_s")
    with torch.no_grad():
        final, inter = model.forward_intermediates(_x(1))
        torch.testing.assert_close(final, model.forward_features(_x(1)))
        assert [f.shape[1] for f in inter] == [info["num_chs"] for info in model.feature_info]
        only = model.forward_intermediates(_x(1), indices=[1, 2], stop_early=True, intermediates_only=True)
        assert [f.shape[1] for f in only] == [64, 128]
    with pytest.raises(ValueError, match="out of range"):
        model.forward_intermediates(_x(1), indices=[5])
    pruned = copy.deepcopy(model)
    assert pruned.prune_intermediate_layers(indices=(1, 2)) == [1, 2]
    assert len(pruned.stages) == 3


def test_grad_checkpointing_same_outputs_and_grads():
    torch.manual_seed(0)
    a = timm.create_model("hiri_vit_s", num_classes=5).train()
    b = copy.deepcopy(a)
    b.set_grad_checkpointing(True)
    x = _x(2, 64)
    ya, yb = a(x), b(x)
    torch.testing.assert_close(ya, yb)
    ya.sum().backward()
    yb.sum().backward()
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, msg=n)


def test_group_matcher_and_no_weight_decay():
    model = _meta("hiri_vit_s")
    assert model.no_weight_decay() == set()
    from timm.models import group_parameters

    groups = group_parameters(model, model.group_matcher(coarse=True))
    assert len(groups) == 1 + 5 + 1  # stem, five stages, head


def test_fx_trace_forward_backward():
    from torchvision.models.feature_extraction import create_feature_extractor

    model = copy.deepcopy(_shared("hiri_vit_s"))
    gm = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        torch.testing.assert_close(gm(_x()), model(_x()))
    gm.train()
    gm(_x()).sum().backward()
    fe = create_feature_extractor(model.eval(), return_nodes=["stages.1", "stages.4"])
    with torch.no_grad():
        out = fe(_x(1))
    assert out["stages.1"].shape == (1, 64, 16, 16) and out["stages.4"].shape == (1, 512, 2, 2)


def test_trains_with_frozen_and_eval_bn():
    model = freeze_batch_norm_2d(copy.deepcopy(_shared("hiri_vit_s")).train())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    model(_x(2, 64)).sum().backward()
    model = copy.deepcopy(_shared("hiri_vit_s")).train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    before = model.stages[0].blocks[0].norm.running_mean.clone()
    model(_x(2, 64)).sum().backward()
    torch.testing.assert_close(model.stages[0].blocks[0].norm.running_mean, before)


def test_autocast_bf16_finite():
    model = _shared("hiri_vit_s")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(_x())
    assert torch.isfinite(out.float()).all()


def test_bad_input():
    model = _shared("hiri_vit_s")
    with pytest.raises(ValueError, match="input channels"):
        model(_x(1, SMALL, chans=1))
    with pytest.raises(ValueError, match="at least 64"):
        model(torch.randn(1, 3, 63, 128))
    with pytest.raises(ValueError, match="4-D"):
        model(torch.randn(3, 128, 128))
    with pytest.raises(ValueError, match="downsample_strides"):
        timm.create_model("hiri_vit_s", downsample_strides=(2, 3, 2, 2))
    with pytest.raises(ValueError, match="attn_stages"):
        timm.create_model("hiri_vit_s", attn_stages=(5,))
    with pytest.raises(ValueError, match="head_type"):
        timm.create_model("hiri_vit_s", head_type="max")


def test_min_size_follows_strides():
    model = timm.create_model("hiri_vit_s", downsample_strides=(1, 2, 2, 2)).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 1000)
    with pytest.raises(ValueError, match="at least 32"):
        model(torch.randn(1, 3, 31, 31))


@pytest.mark.parametrize("attn_layer", ["se", "eca", lambda c: nn.Conv2d(c, c, 1)])
def test_attn_layer_hook(attn_layer):
    model = timm.create_model("hiri_vit_s", attn_layer=attn_layer, attn_stages=(2, 3), num_classes=3).train()
    hooks = [type(s.blocks[0].attn_hook) for s in model.stages]
    assert hooks[0] is hooks[1] is hooks[4] is nn.Identity
    assert hooks[2] is hooks[3] and hooks[2] is not nn.Identity
    model(_x(2, 64)).sum().backward()
    assert model.stages[3].blocks[0].attn_hook.parameters().__next__().grad is not None


def test_options_build_and_run():
    model = timm.create_model(
        "hiri_vit_s",
        stem_width=16,
        irds_expansion=2,
        sr_ratios=(2, 1),
        act_layer="silu",
        head_type="avg",
        in_chans=1,
        num_classes=4,
        fused_attn=False,
        channels_last=False,
    ).eval()
    assert model.stem.conv[0].out_channels == 16 and model.stages[1].downsample.conv1[0].out_channels == 64
    assert isinstance(model.stem.conv[2], nn.SiLU)
    with torch.no_grad():
        assert model(_x(1, SMALL, chans=1)).shape == (1, 4)


def test_channels_last_is_the_same_function():
    model = copy.deepcopy(_shared("hiri_vit_s"))
    with torch.no_grad():
        a = model(_x())
        model.channels_last = False
        torch.testing.assert_close(model(_x()), a, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("model_channels_last", [True, False])
def test_channels_last_input_batch_4_eval_and_training_step(model_channels_last):
    """A channels-last input gives the NCHW input's logits and gradients, whichever layout the model runs."""
    torch.manual_seed(0)
    model = timm.create_model("hiri_vit_s", num_classes=5, channels_last=model_channels_last)
    x = _x(4)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x_cl), model(x), rtol=1e-4, atol=1e-4)
    grads = []
    for inp in (x, x_cl):
        trained = copy.deepcopy(model).train()
        out = trained(inp)
        assert out.shape == (4, 5)
        out.logsumexp(1).sum().backward()
        grads.append([p.grad for p in trained.parameters()])
    for (name, _), ga, gb in zip(model.named_parameters(), *grads, strict=True):
        torch.testing.assert_close(gb, ga, rtol=1e-3, atol=1e-5, msg=name)


def test_save_load_round_trip(tmp_path):
    model = timm.create_model("hiri_vit_s", num_classes=3, head_type="avg").eval()
    save_pretrained(model, tmp_path, model_args={"head_type": "avg"})
    loaded = load_pretrained(tmp_path)
    assert isinstance(loaded, hiri_vit.HiriViT) and loaded.num_classes == 3
    with torch.no_grad():
        torch.testing.assert_close(loaded(_x(1)), model(_x(1)))
