"""GC, NL and SNL blocks against the formulas, the spec's parameter counts and bad input."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn as nn
from gcnet_reference import context_block_ref, non_local_ref, non_local_weights_ref, snl_eq2_ref

import gcnet
from ctxnets_shared.layers import create_attn_layer, list_attn_layers
from ctxnets_shared.testing import cuda_like_autocast
from gcnet import GlobalContextBlock, NonLocalBlock, SimplifiedNonLocalBlock

torch.set_default_dtype(torch.float32)
FUSION_SETS = [("channel_add",), ("channel_mul",), ("channel_add", "channel_mul")]


def _randomize(module: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random values for every parameter and BN statistic (the zero init would hide the transform)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.is_floating_point():
                new = torch.rand(t.shape, generator=g) + 0.5 if "running_var" in name else None
                t.copy_(new if new is not None else torch.randn(t.shape, generator=g) * 0.5)
    return {k: v.clone().double() for k, v in module.state_dict().items()}


def _x(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_param_count_r16_c1024():
    # specs/gcnet.md: one GC r16 block at C = 1024 has 133,313 parameters
    assert sum(p.numel() for p in GlobalContextBlock(1024).parameters()) == 133_313


def test_mmcv_parameter_names():
    keys = set(GlobalContextBlock(64, fusion=("channel_add", "channel_mul")).state_dict())
    assert keys == {
        "conv_mask.weight", "conv_mask.bias",
        *(f"{b}.{i}.{p}" for b in ("channel_add_conv", "channel_mul_conv") for i in (0, 1, 3)
          for p in ("weight", "bias")),
    }  # fmt: skip


@pytest.mark.parametrize(("pooling", "fusion"), list(itertools.product(("att", "avg"), FUSION_SETS)))
def test_matches_mmcv_formula(pooling, fusion):
    block = GlobalContextBlock(32, ratio=1 / 4, pooling=pooling, fusion=fusion).double()
    sd = _randomize(block)
    x = _x(2, 32, 5, 7).double()
    torch.testing.assert_close(block(x), context_block_ref(x, sd, pooling, fusion), rtol=1e-10, atol=1e-10)


def test_frozen_mask_and_cpu_bf16_training():
    block = GlobalContextBlock(32, ratio=1 / 4)
    block.conv_mask.requires_grad_(False)
    x = _x(2, 32, 6, 6).requires_grad_()
    block(x).sum().backward()
    assert x.grad is not None and block.conv_mask.weight.grad is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(x)
    out.float().sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("pooling", ["att", "avg"])
def test_trains_under_cuda_autocast_policy(dtype, pooling):
    # CUDA's autocast returns float32 from softmax / LayerNorm beside half-precision conv outputs; the
    # block must train there on the half-precision activations a network feeds it (the removed fused
    # pooling failed in backward: "expected scalar type BFloat16 but found Float")
    block = GlobalContextBlock(32, ratio=1 / 4, pooling=pooling, fusion=("channel_add", "channel_mul"))
    _randomize(block)
    x = _x(2, 32, 6, 5).to(dtype).float()  # exactly representable in dtype
    want = block(x)
    xh = x.to(dtype).requires_grad_()
    with cuda_like_autocast(dtype):
        if pooling == "att":
            assert block.attention_map(xh).dtype == torch.float32  # the policy is in force
        out = block(xh)
        loss = out.float().square().mean()
    loss.backward()
    torch.testing.assert_close(out.float(), want, rtol=0.05, atol=0.05)
    assert xh.grad is not None and torch.isfinite(xh.grad).all() and xh.grad.abs().sum() > 0
    for name, p in block.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def _blocks_for_layout() -> dict[str, nn.Module]:
    blocks: dict[str, nn.Module] = {
        f"gc_{pooling}": GlobalContextBlock(32, ratio=1 / 4, pooling=pooling, fusion=FUSION_SETS[2])
        for pooling in ("att", "avg")
    }
    blocks["snl"] = SimplifiedNonLocalBlock(32)
    blocks.update({f"nl_{mode}": NonLocalBlock(32, mode=mode) for mode in gcnet.NL_MODES})
    return blocks


@pytest.mark.parametrize("name", list(_blocks_for_layout()))
def test_channels_last_in_channels_last_out(name):
    # batch 4: a view that only works for one image would fail here
    block = _blocks_for_layout()[name].double()
    _randomize(block)
    x = _x(4, 32, 5, 6).double()
    for mode in ("eval", "train"):
        getattr(block, mode)()
        xs = [x.clone().requires_grad_(), x.contiguous(memory_format=torch.channels_last).requires_grad_()]
        outs = [block(t) for t in xs]
        assert outs[1].is_contiguous(memory_format=torch.channels_last) and not outs[1].is_contiguous()
        assert outs[0].is_contiguous()
        torch.testing.assert_close(outs[1], outs[0], rtol=1e-10, atol=1e-10)
        grad_out = _x(4, 32, 5, 6, seed=2).double()
        for out in outs:
            out.backward(grad_out)
        assert xs[1].grad is not None and xs[1].grad.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(xs[1].grad, xs[0].grad, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("transform", ["relu", "linear", "single"])
def test_table5d_transforms_match_formula(transform):
    block = GlobalContextBlock(32, ratio=1 / 4, transform=transform).double()
    sd = _randomize(block)
    x = _x(2, 32, 4, 4).double()
    torch.testing.assert_close(block(x), context_block_ref(x, sd, "att", ("channel_add",), transform))


def test_table5d_transform_sizes():
    c = 1024
    sizes = {
        t: sum(p.numel() for p in GlobalContextBlock(c, transform=t).parameters()) for t in gcnet.TRANSFORMS
    }
    mask = c + 1
    assert sizes["single"] == mask + c * c + c  # "w/o ratio": one C x C conv
    assert sizes["linear"] == sizes["relu"] == mask + (c * 64 + 64) + (64 * c + c)
    assert sizes["ln_relu"] == sizes["linear"] + 2 * 64  # LN's scale and shift


@pytest.mark.parametrize("pooling", ["att", "avg"])
def test_add_fusion_is_identity_at_init(pooling):
    x = _x(2, 64, 6, 6)
    assert torch.equal(GlobalContextBlock(64, pooling=pooling)(x), x)
    assert torch.equal(SimplifiedNonLocalBlock(64)(x), x)
    assert torch.equal(NonLocalBlock(64).eval()(x), x)


def test_paper_init():
    block = GlobalContextBlock(256, fusion=("channel_add", "channel_mul"))
    for branch in (block.channel_add_conv, block.channel_mul_conv):
        assert not branch[3].weight.any() and not branch[3].bias.any()
    assert not block.conv_mask.bias.any()
    std = block.conv_mask.weight.std().item()  # Kaiming normal, fan_in = 256, gain sqrt(2)
    assert std == pytest.approx((2 / 256) ** 0.5, rel=0.15)


def test_snl_eq3_equals_eq2():
    block = SimplifiedNonLocalBlock(16).double()
    sd = _randomize(block)
    x = _x(2, 16, 3, 5).double()
    torch.testing.assert_close(block(x), snl_eq2_ref(x, sd))


@pytest.mark.parametrize("mode", gcnet.NL_MODES)
def test_non_local_instantiations_match_formula(mode):
    block = NonLocalBlock(8, mode=mode).double().eval()
    sd = _randomize(block, seed=3)
    x = _x(2, 8, 3, 4, seed=4).double() * 0.5
    torch.testing.assert_close(block.attention_map(x)[1], non_local_weights_ref(x[1], sd, mode))
    torch.testing.assert_close(block(x), non_local_ref(x, sd, mode))


def test_non_local_attention_rows():
    x = _x(1, 8, 3, 4)
    for mode in ("gaussian", "embedded_gaussian"):
        rows = NonLocalBlock(8, mode=mode).attention_map(x).sum(-1)
        torch.testing.assert_close(rows, torch.ones_like(rows))  # softmax over j
    assert (NonLocalBlock(8, mode="concatenation").attention_map(x) >= 0).all()  # ReLU


def test_registered_with_shared_registry():
    names = list_attn_layers()
    assert {names["gc"], names["nl"], names["snl"]} == {"gcnet"}
    assert set(gcnet.CTXNETS_PACKAGE.attn_layers) == {"gc", "nl", "snl"}
    gc = create_attn_layer("gc", 256, ratio=1 / 4, pooling="avg", fusion=("channel_mul",))
    assert isinstance(gc, GlobalContextBlock) and gc.planes == 64 and gc.conv_mask is None
    nl = create_attn_layer("nl", 64, mode="dot_product")
    assert isinstance(nl, NonLocalBlock) and nl.mode == "dot_product"
    assert isinstance(create_attn_layer("snl", 64), SimplifiedNonLocalBlock)


def test_bad_input_is_a_clear_error():
    block = GlobalContextBlock(64)
    with pytest.raises(ValueError, match="expected 64 channels"):
        block(torch.randn(1, 32, 4, 4))
    with pytest.raises(ValueError, match="no positions"):
        block(torch.randn(1, 64, 0, 4))
    with pytest.raises(ValueError, match="no positions"):
        NonLocalBlock(64)(torch.randn(1, 64, 3, 0))
    with pytest.raises(ValueError, match="expected 16 channels"):
        NonLocalBlock(16)(torch.randn(1, 8, 3, 3))
    with pytest.raises(ValueError, match="0 hidden channels.*at least 1/8"):
        GlobalContextBlock(8, ratio=1 / 16)
    with pytest.raises(ValueError, match=r"ratio is a fraction in \(0, 1\]"):
        GlobalContextBlock(64, ratio=16)
    with pytest.raises(ValueError, match="pooling must be one of"):
        GlobalContextBlock(64, pooling="max")
    with pytest.raises(ValueError, match="fusion must be a non-empty subset"):
        GlobalContextBlock(64, fusion=())
    with pytest.raises(ValueError, match="fusion must be a non-empty subset"):
        GlobalContextBlock(64, fusion=("channel_scale",))
    with pytest.raises(ValueError, match="mode must be one of"):
        NonLocalBlock(64, mode="cosine")
    with pytest.raises(ValueError, match="leaves no inner channels"):
        NonLocalBlock(4, reduction=8)
