"""timm model contract for the seven registered networks (small inputs; full-size models)."""

from __future__ import annotations

import copy
import functools

import pytest
import timm
import torch

import cot
from ctxnets_shared.profiling import count_gflops, count_params

# specs/cot.md: official parameter counts (exact), paper GFLOPs (MACs) at the paper's resolution, top-1
SPEC = {
    "cotnet50": (22_222_416, 3.3, 224, 81.3),
    "cotnet101": (38_272_048, 6.1, 224, 82.8),
    "cotnext50_2x48d": (30_046_276, 4.3, 224, 82.1),
    "cotnext101_2x48d": (53_346_068, 8.2, 224, 83.2),
    "se_cotnetd_50": (23_107_784, 4.1, 224, 81.6),
    "se_cotnetd_101": (40_912_392, 8.5, 224, 83.2),
    "se_cotnetd_152": (55_783_688, 17.0, 256, 84.0),
}
MODELS = list(SPEC)
SPEC_BLOCKS = {  # blocks per stage, each with one CoT layer or SE conv
    "cotnet50": (3, 4, 6, 3),
    "cotnet101": (3, 4, 23, 3),
    "cotnext50_2x48d": (3, 4, 6, 3),
    "cotnext101_2x48d": (3, 4, 23, 3),
    "se_cotnetd_50": (3, 4, 6, 3),
    "se_cotnetd_101": (3, 4, 23, 3),
    "se_cotnetd_152": (3, 8, 36, 3),
}
SMALL = 64  # two stride-32 cells: every stage still sees > 1 pixel


def _randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random values for zero-initialised weights (bn3 scales, biases) and for BN running statistics.

    A zero bn3 makes every residual branch exactly zero, so a numerical comparison would pass whatever the
    CoT layers compute. The scales stay small (0.1-0.3): with unit-size last-BN scales and uncalibrated
    running statistics the 16-block network amplifies float32 rounding ~100x per stage in eval mode.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.numel() and not p.any():
                scale = torch.rand(p.shape, generator=gen) * 0.2 + 0.1
                p.copy_(scale if name.endswith("weight") and p.dim() == 1 else scale - 0.2)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return model


@functools.cache
def _shared(name: str) -> torch.nn.Module:
    """One instance per model for read-only checks (building the 100+ layer ones takes seconds)."""
    torch.manual_seed(0)
    return _randomise(timm.create_model(name)).eval()


def test_randomise_leaves_no_zero_weights():
    model = _shared("cotnet50")
    assert all(p.any() for p in model.parameters())
    assert float(model.layer1[0].bn3.weight.detach().min()) >= 0.1


def _x(batch: int = 2, size: int = SMALL) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def test_registered():
    assert set(timm.list_models("cot*") + timm.list_models("se_cot*")) >= set(MODELS)
    assert set(cot.CTXNETS_PACKAGE.models) == set(MODELS)


@pytest.mark.parametrize("name", MODELS)
def test_param_count_is_official(name):
    assert count_params(_shared(name)) == SPEC[name][0]


@pytest.mark.parametrize("name", MODELS)
def test_gflops_within_5pct_of_paper(name):
    _, gflops, res, _ = SPEC[name]
    measured = count_gflops(_shared(name), (3, res, res))
    assert measured == pytest.approx(gflops, rel=0.05)


@pytest.mark.parametrize("name", MODELS)
def test_pretrained_cfg(name):
    params, gflops, res, top1 = SPEC[name]
    cfg = _shared(name).pretrained_cfg
    assert (cfg["paper_params"], cfg["paper_gflops"], cfg["paper_img_size"], cfg["paper_top1"]) == (
        params,
        gflops,
        res,
        top1,
    )
    assert cfg["input_size"] == (3, res, res) and cfg["pool_size"] == (res // 32, res // 32)
    assert cfg["origin_url"] == "https://github.com/JDAI-CV/CoTNet"
    assert not cfg.get("url")  # nothing downloads at run time
    for field in ("crop_pct", "interpolation", "mean", "std", "paper_name", "paper_ids"):
        assert cfg.get(field), field
    assert cfg["crop_pct"] == (0.888 if res == 256 else 0.875) and cfg["interpolation"] == "bicubic"
    # first_conv / classifier name real modules with the declared shapes
    model = _shared(name)
    first = model.get_submodule(cfg["first_conv"])
    assert first.in_channels == 3
    assert model.get_submodule(cfg["classifier"]) is model.get_classifier()


def test_features_only_out_indices_with_stem():
    model = timm.create_model("cotnet50", features_only=True, out_indices=(0, 4)).eval()
    with torch.no_grad():
        feats = model(_x(1))
    assert [tuple(f.shape[1:]) for f in feats] == [(64, 32, 32), (2048, 2, 2)]


def test_prune_intermediate_layers():
    model = timm.create_model("cotnet50").eval()
    assert model.prune_intermediate_layers(indices=(1, 2)) == [1, 2]
    assert isinstance(model.layer3, torch.nn.Identity) and model.num_classes == 0
    with torch.no_grad():
        feats = model.forward_intermediates(_x(1), indices=(1, 2), intermediates_only=True)
    assert [f.shape[1] for f in feats] == [256, 512]


def _dilations(model):
    """Per stage, per block: (stride of the block, dilation of its 3x3 window)."""
    out = []
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        blocks = []
        for block in stage:
            conv2 = block.conv2
            d = conv2.dilation if isinstance(conv2, cot.CotLayer) else conv2.conv.dilation[0]
            down = not isinstance(block.avd, torch.nn.Identity) or not isinstance(block.aa, torch.nn.Identity)
            stride = 2 if down or (isinstance(conv2, cot.SeConv2d) and conv2.conv.stride[0] == 2) else 1
            blocks.append((stride, d))
        out.append(blocks)
    return out


@pytest.mark.parametrize("name", ["cotnet50", "se_cotnetd_50"])
def test_output_stride_dilates_like_timm_resnet(name):
    # os=16: stage 4 unstrided, first block dilation 1 (where the stride was), then 2; os=8: stages 3-4,
    # dilations 1,2,2.. / 2,4,4 (timm's ResNet first_dilation rule); parameter count unchanged
    for os_, dilated in ((16, {3: (1, 2)}), (8, {2: (1, 2), 3: (2, 4)})):
        model = timm.create_model(name, output_stride=os_)
        assert count_params(model) == SPEC[name][0]
        for stage_idx, blocks in enumerate(_dilations(model)):
            if stage_idx in dilated:
                first, rest = dilated[stage_idx]
                assert blocks == [(1, first)] + [(1, rest)] * (len(blocks) - 1), (os_, stage_idx)
            else:
                assert all(d == 1 for _, d in blocks)
        cap = [min(r, os_) for r in (2, 4, 8, 16, 32)]
        assert [info["reduction"] for info in model.feature_info] == cap
    with pytest.raises(ValueError, match=r"output_stride must be one of \(8, 16, 32\)"):
        timm.create_model(name, output_stride=4)


def test_output_stride_16_same_weights_same_early_stages():
    # the dilated network computes the same first three stages with the same weights
    ref = _shared("cotnet50")
    dil = timm.create_model("cotnet50", output_stride=16).eval()
    dil.load_state_dict(ref.state_dict())
    with torch.no_grad():
        a = ref.forward_intermediates(_x(1), indices=[3, 4], intermediates_only=True)
        b = dil.forward_intermediates(_x(1), indices=[3, 4], intermediates_only=True)
    torch.testing.assert_close(a[0], b[0])
    assert b[1].shape[-1] == 2 * a[1].shape[-1]


def test_drop_block_in_stages_3_and_4():
    model = timm.create_model("cotnet50", drop_block_rate=0.2, num_classes=5)
    kinds = [
        [type(b.drop_block).__name__ for b in s]
        for s in (model.layer1, model.layer2, model.layer3, model.layer4)
    ]
    assert all(k == "Identity" for k in kinds[0] + kinds[1])
    sizes = [{b.drop_block.block_size for b in s} for s in (model.layer3, model.layer4)]
    assert sizes == [{5}, {3}] and isinstance(model.layer3[0].drop_block, timm.layers.DropBlock2d)
    assert count_params(model) == SPEC["cotnet50"][0] + 2048 * 5 + 5 - (2048 * 1000 + 1000)
    model.train()
    out = model(_x(2, 32))
    out.logsumexp(1).sum().backward()
    model.eval()
    with torch.no_grad():  # DropBlock is the identity in eval mode
        ref = timm.create_model("cotnet50", num_classes=5).eval()
        ref.load_state_dict(model.state_dict())
        torch.testing.assert_close(model(_x(1, 32)), ref(_x(1, 32)))
    with pytest.raises(ValueError, match="drop_block_rate"):
        timm.create_model("cotnet50", drop_block_rate=1.5)


def test_fx_trace_and_feature_extraction_float64():
    # torch.fx without timm's registry: plain symbolic_trace and torchvision's create_feature_extractor
    from torchvision.models.feature_extraction import create_feature_extractor

    model = copy.deepcopy(_shared("se_cotnetd_50")).double()
    x = _x(2).double()
    traced = torch.fx.symbolic_trace(model)
    extractor = create_feature_extractor(model, {"layer2": "c3", "layer4": "c5"})
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x))
        feats = extractor(x)
        inter = model.forward_intermediates(x, indices=[2, 4], intermediates_only=True)
    torch.testing.assert_close(feats["c3"], inter[0])
    torch.testing.assert_close(feats["c5"], inter[1])
    with pytest.raises(ValueError, match="input channels"):
        traced(torch.zeros(1, 1, 64, 64, dtype=torch.float64))


@pytest.mark.parametrize("name", MODELS)
def test_matches_official_forward_float64(name, official_cot, official_se_conv):
    # every CoT layer and SE conv replaced by the official forward written out from the spec
    model = copy.deepcopy(_shared(name)).double()
    official = copy.deepcopy(model)
    replaced = 0
    for m in official.modules():
        if isinstance(m, (cot.CotLayer, cot.SeConv2d)):
            forward = official_cot if isinstance(m, cot.CotLayer) else official_se_conv
            m.forward = functools.partial(forward, m)
            replaced += 1
    assert replaced == sum(SPEC_BLOCKS[name])
    x = _x(2).double()
    with torch.no_grad():
        torch.testing.assert_close(model(x), official(x), rtol=1e-10, atol=1e-10)


def test_frozen_bn_finetuning_runs_and_keeps_statistics():
    # the reproduction: freeze_batch_norm_2d, train(), backward (default recompute stages 1-3)
    from timm.utils.model import freeze_batch_norm_2d

    model = freeze_batch_norm_2d(copy.deepcopy(_shared("cotnet50"))).train()
    before = {k: v.clone() for k, v in model.named_buffers()}
    out = model(_x(2, 32))
    out.logsumexp(1).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert all(torch.equal(v, before[k]) for k, v in model.named_buffers())
    with torch.no_grad():
        torch.testing.assert_close(out, _shared("cotnet50")(_x(2, 32)), rtol=1e-4, atol=1e-4)


def test_group_matcher_covers_every_param():
    from timm.models import group_parameters

    groups = group_parameters(_shared("cotnet50"), _shared("cotnet50").group_matcher())
    assert sum(len(v) for v in groups.values()) == len(list(_shared("cotnet50").parameters()))


def test_attn_layer_hook():
    model = timm.create_model("cotnet50", attn_layer="se", attn_stages=(2, 3)).eval()
    assert isinstance(model.layer1[0].attn, torch.nn.Identity)
    assert not isinstance(model.layer3[0].attn, torch.nn.Identity)
    assert count_params(model) > SPEC["cotnet50"][0]
    calls = []
    model2 = timm.create_model("cotnet50", attn_layer=lambda c: _Spy(c, calls), attn_stages=(0,)).eval()
    with torch.no_grad():
        model2(_x(1))
    assert calls == [256, 256, 256]  # after bn3 (4 * planes channels), once per layer1 block


class _Spy(torch.nn.Module):
    def __init__(self, channels, calls):
        super().__init__()
        self.channels, self.calls = channels, calls

    def forward(self, x):
        assert x.shape[1] == self.channels
        self.calls.append(x.shape[1])
        return x


def test_drop_path_and_dropout_train():
    model = timm.create_model("cotnet50", drop_rate=0.2, drop_path_rate=0.1, num_classes=5).train()
    assert model(_x()).shape == (2, 5)


def test_recompute_stages_choose_memory_efficient_layers():
    def flags(model):
        stages = (model.layer1, model.layer2, model.layer3, model.layer4)
        return [{m.memory_efficient for m in s.modules() if isinstance(m, cot.CotLayer)} for s in stages]

    assert flags(timm.create_model("cotnet50")) == [{True}, {True}, {True}, {False}]
    assert flags(timm.create_model("cotnet50", recompute_stages=(3,))) == [{False}, {False}, {False}, {True}]
    with pytest.raises(ValueError, match="recompute_stages are 0-based stage indices in 0..3"):
        timm.create_model("cotnet50", recompute_stages=(4,))
    with pytest.raises(ValueError, match="attn_stages are 0-based stage indices in 0..3"):
        timm.create_model("cotnet50", attn_layer="se", attn_stages=(-1,))
    everywhere = timm.create_model("cotnet50", cot_kwargs=dict(memory_efficient=True))
    assert flags(everywhere) == [{True}] * 4
    # recomputation changes memory, not results: same loss gradients as a model storing everything
    torch.manual_seed(0)
    plain = _randomise(timm.create_model("cotnet50", num_classes=10, recompute_stages=())).train()
    fast = copy.deepcopy(plain)
    for m in fast.modules():
        if isinstance(m, cot.CotLayer):
            m.memory_efficient = True
    x = _x(2)
    losses = [m(x).logsumexp(1).sum() for m in (plain, fast)]
    torch.testing.assert_close(losses[0], losses[1])
    grads = [torch.autograd.grad(loss, list(m.parameters())) for loss, m in zip(losses, (plain, fast))]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["cotnet50", "cotnext50_2x48d"])
def test_channels_last_matches_contiguous_float64(name):
    # batch 4 (CoXt's per-group aggregation used to fail on channels-last input at batch > 1): same
    # logits in eval, same logits and gradients after a training step
    model = copy.deepcopy(_shared(name)).double()
    model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x = _x(4).double()
    x_cl = x.to(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(model_cl(x_cl), model(x))
    outs = []
    for m, inp in ((model, x), (model_cl, x_cl)):
        out = m.train()(inp)
        out.logsumexp(1).sum().backward()
        outs.append(out.detach())
    torch.testing.assert_close(outs[1], outs[0])
    grads = dict(model.named_parameters())
    for n, p in model_cl.named_parameters():
        torch.testing.assert_close(p.grad, grads[n].grad, msg=n)
