"""timm model contract for the seven registered networks (small inputs; full-size models)."""

from __future__ import annotations

import copy
import functools

import pytest
import timm
import torch

import cot
from ctxnets_shared.profiling import count_gflops, count_params
from ctxnets_shared.weights import load_pretrained, save_pretrained

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
SMALL = 64  # two stride-32 cells: every stage still sees > 1 pixel


@functools.cache
def _shared(name: str) -> torch.nn.Module:
    """One instance per model for read-only checks (building the 100+ layer ones takes seconds)."""
    torch.manual_seed(0)
    return timm.create_model(name).eval()


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


@pytest.mark.parametrize("name", MODELS)
def test_forward(name):
    model = _shared(name)
    with torch.no_grad():
        out = model(_x())
        feats = model.forward_features(_x())
    assert out.shape == (2, 1000) and torch.isfinite(out).all()
    assert feats.shape == (2, model.num_features, SMALL // 32, SMALL // 32) and model.num_features == 2048
    assert model.head_hidden_size == 2048


@pytest.mark.parametrize("name", MODELS)
def test_backward_every_param_gets_grad(name):
    model = copy.deepcopy(_shared(name)).train()
    model.reset_classifier(10)
    model(_x(2, 32)).logsumexp(1).sum().backward()  # batch 2: the SE gates' BN needs 2 values per channel
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


@pytest.mark.parametrize("name", MODELS)
def test_reset_classifier(name):
    model = copy.deepcopy(_shared(name))
    model.reset_classifier(0)
    with torch.no_grad():
        feats = model.forward_features(_x(1))
        assert model.forward_head(feats).shape == (1, 2048)
        assert model.forward_head(feats, pre_logits=True).shape == (1, 2048)
    model.reset_classifier(0, "")
    with torch.no_grad():
        assert model.forward_head(feats).shape == (1, 2048, 2, 2)
    model.reset_classifier(7)
    assert model.get_classifier().out_features == 7 and model.num_classes == 7


@pytest.mark.parametrize("name", MODELS)
def test_features_only(name):
    model = timm.create_model(name, features_only=True).eval()
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    assert model.feature_info.channels() == [256, 512, 1024, 2048]
    with torch.no_grad():
        feats = model(_x(1))
    assert [f.shape[1] for f in feats] == [256, 512, 1024, 2048]
    assert [SMALL // f.shape[-1] for f in feats] == [4, 8, 16, 32]


def test_features_only_out_indices_with_stem():
    model = timm.create_model("cotnet50", features_only=True, out_indices=(0, 4)).eval()
    with torch.no_grad():
        feats = model(_x(1))
    assert [tuple(f.shape[1:]) for f in feats] == [(64, 32, 32), (2048, 2, 2)]


@pytest.mark.parametrize("name", ["cotnet50", "se_cotnetd_50"])
def test_forward_intermediates(name):
    model = _shared(name)
    with torch.no_grad():
        final, inter = model.forward_intermediates(_x(1))
        assert [f.shape[1] for f in inter] == [info["num_chs"] for info in model.feature_info]
        assert [SMALL // f.shape[-1] for f in inter] == [2, 4, 8, 16, 32]
        torch.testing.assert_close(final, model.forward_features(_x(1)))
        only = model.forward_intermediates(_x(1), indices=[1, 2], stop_early=True, intermediates_only=True)
    assert [f.shape[1] for f in only] == [256, 512]
    with pytest.raises(ValueError, match="out of range"):
        model.forward_intermediates(_x(1), indices=[7])


def test_prune_intermediate_layers():
    model = timm.create_model("cotnet50").eval()
    assert model.prune_intermediate_layers(indices=(1, 2)) == [1, 2]
    assert isinstance(model.layer3, torch.nn.Identity) and model.num_classes == 0
    with torch.no_grad():
        feats = model.forward_intermediates(_x(1), indices=(1, 2), intermediates_only=True)
    assert [f.shape[1] for f in feats] == [256, 512]


@pytest.mark.parametrize("name", ["cotnet50", "cotnext50_2x48d", "se_cotnetd_152"])
def test_grad_checkpointing_same_output(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10).eval()  # eval: BN statistics must not move
    x = _x(1).requires_grad_()
    ref = model(x)
    (ref_grad,) = torch.autograd.grad(ref.sum(), x)
    model.set_grad_checkpointing(True)
    out = model(x)
    (grad,) = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(grad, ref_grad)


@pytest.mark.parametrize("name", MODELS)
def test_safetensors_round_trip(name, tmp_path):
    model = _shared(name)
    save_pretrained(model, tmp_path / name)
    loaded = load_pretrained(tmp_path / name)
    assert type(loaded) is type(model)
    for (ka, a), (kb, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert ka == kb and torch.equal(a, b)


def test_torchscript():
    torch.manual_seed(0)
    model = timm.create_model("se_cotnetd_50").eval()  # CoT layers, SE convs and avg-pool shortcuts
    scripted = torch.jit.script(model)
    with torch.no_grad():
        torch.testing.assert_close(scripted(_x(1)), model(_x(1)), rtol=1e-4, atol=1e-4)


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


@pytest.mark.parametrize(
    "shape, match",
    [
        ((1, 1, 64, 64), "input channels"),
        ((1, 3, 16, 64), "smaller than the network stride"),
        ((3, 64, 64), "4-D"),
    ],
)
def test_bad_input_is_a_clear_error(shape, match):
    model = _shared("cotnet50")
    with pytest.raises(ValueError, match=match):
        model(torch.zeros(shape))
    with pytest.raises(ValueError, match=match):
        model.forward_intermediates(torch.zeros(shape))


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
    plain = timm.create_model("cotnet50", num_classes=10, recompute_stages=()).train()
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


def test_channels_last_matches_contiguous():
    # `ctxnets bench --channels-last` and users' channels-last training go through the same kernels
    model = _shared("cotnet50")
    x = _x(2)
    with torch.no_grad():
        ref = model(x)
        out = copy.deepcopy(model).to(memory_format=torch.channels_last)(
            x.to(memory_format=torch.channels_last)
        )
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    train = copy.deepcopy(model).train().to(memory_format=torch.channels_last)
    train(x.to(memory_format=torch.channels_last)).logsumexp(1).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in train.parameters())
