"""The unified context-aggregation module and its special cases (paper Sec. 3, specs/container.md)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from container import ContainerBlock, ContextAggregation, DenseAffinity, depthwise_affinity
from container.container import STAGE_MIXERS

B, C, H, W = 2, 16, 5, 6
N = H * W


def _x() -> torch.Tensor:
    return torch.randn(B, C, H, W, generator=torch.Generator().manual_seed(0))


def _tokens(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, N, C)


def _mhsa_from(agg: ContextAggregation) -> nn.MultiheadAttention:
    """torch's multi-head self-attention carrying the module's projections."""
    mha = nn.MultiheadAttention(C, agg.num_heads, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(agg.in_proj.weight.flatten(1))
        mha.in_proj_bias.copy_(agg.in_proj.bias)
        mha.out_proj.weight.copy_(agg.out_proj.weight.flatten(1))
        mha.out_proj.bias.copy_(agg.out_proj.bias)
    return mha.eval()


@pytest.mark.parametrize("fused", [False, True])
def test_pure_attention_is_multi_head_self_attention(fused):
    torch.manual_seed(0)
    agg = ContextAggregation(C, num_heads=4, dynamic="attention", static=None, fused_attn=fused).eval()
    x = _x()
    ref, _ = _mhsa_from(agg)(_tokens(x), _tokens(x), _tokens(x), need_weights=False)
    with torch.no_grad():
        torch.testing.assert_close(_tokens(agg(x)), ref, rtol=1e-5, atol=1e-5)


def test_mixed_with_alpha_1_beta_0_is_multi_head_self_attention():
    torch.manual_seed(0)
    agg = ContextAggregation(C, num_heads=4, static="depthwise", mix="free").eval()
    with torch.no_grad():
        agg.alpha.fill_(1.0)
        agg.beta.fill_(0.0)
    x = _x()
    ref, _ = _mhsa_from(agg)(_tokens(x), _tokens(x), _tokens(x), need_weights=False)
    with torch.no_grad():
        torch.testing.assert_close(_tokens(agg(x)), ref, rtol=1e-5, atol=1e-5)


def _direct_depthwise(agg: ContextAggregation, v_slice: slice, x: torch.Tensor) -> torch.Tensor:
    dw = agg.static
    assert isinstance(dw, nn.Conv2d)
    v = F.conv2d(x, agg.in_proj.weight[v_slice], agg.in_proj.bias[v_slice])
    y = F.conv2d(v, dw.weight, dw.bias, padding=dw.kernel_size[0] // 2, groups=C)
    return F.conv2d(y, agg.out_proj.weight, agg.out_proj.bias)


def test_pure_depthwise_is_a_depthwise_conv():
    torch.manual_seed(0)
    agg = ContextAggregation(C, dynamic=None, static="depthwise", kernel_size=5)
    assert agg.in_proj.out_channels == C and not hasattr(agg, "mix_logit")
    with torch.no_grad():
        torch.testing.assert_close(agg(_x()), _direct_depthwise(agg, slice(0, C), _x()))


def test_mixed_with_alpha_0_is_a_depthwise_conv_on_v():
    torch.manual_seed(0)
    agg = ContextAggregation(C, num_heads=2, static="depthwise", mix="free")
    with torch.no_grad():
        agg.alpha.fill_(0.0)
        agg.beta.fill_(1.0)
        torch.testing.assert_close(agg(_x()), _direct_depthwise(agg, slice(2 * C, 3 * C), _x()))


def test_depthwise_conv_is_a_static_banded_affinity():
    # the unified view: a depthwise conv applies a fixed N x N matrix per channel (plus its bias)
    torch.manual_seed(0)
    conv = nn.Conv2d(C, C, 5, padding=2, groups=C)
    a = depthwise_affinity(conv.weight, H, W)
    assert a.shape == (C, N, N)
    v = _x()
    via_matrix = (a @ v.flatten(2).unsqueeze(-1)).squeeze(-1).reshape(B, C, H, W) + conv.bias.view(1, C, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(via_matrix, conv(v), rtol=1e-5, atol=1e-5)
    # banded: positions more than 2 rows or columns apart never interact
    i, j = 0, N - 1  # opposite corners
    assert torch.all(a[:, i, j] == 0)


@pytest.mark.parametrize("bias", [False, True])
def test_pure_dense_is_a_token_mixing_mlp(bias):
    # one head, A = W_mlp: MLP-Mixer's token mixing (a Linear over the N positions, shared by channels)
    torch.manual_seed(0)
    agg = ContextAggregation(C, num_heads=1, dynamic=None, static="dense", num_tokens=N, dense_bias=bias)
    token_mlp = nn.Linear(N, N, bias=bias)
    with torch.no_grad():
        token_mlp.weight.copy_(agg.static.weight[0])
        if bias:
            agg.static.bias.normal_()
            token_mlp.bias.copy_(agg.static.bias[0])
        x = _x()
        v = agg.in_proj(x)
        mixed = token_mlp(v.flatten(2)).reshape(B, C, H, W)  # Linear over the token axis of (B, C, N)
        torch.testing.assert_close(agg(x), agg.out_proj(mixed), rtol=1e-5, atol=1e-5)


def test_mixed_module_applies_alpha_a_dyn_plus_beta_a_static():
    # Eq. 3 literally: build both affinities as matrices, mix them, apply to V, project
    torch.manual_seed(0)
    heads, d = 2, C // 2
    agg = ContextAggregation(C, num_heads=heads, static="dense", num_tokens=N, mix="free", fused_attn=True)
    with torch.no_grad():
        agg.alpha.fill_(0.7)
        agg.beta.fill_(-0.4)
        x = _x()
        q, k, v = (t.reshape(B, heads, d, N).transpose(-2, -1) for t in agg.in_proj(x).chunk(3, 1))
        a_dyn = (q @ k.transpose(-2, -1) / d**0.5).softmax(-1)
        a = 0.7 * a_dyn + -0.4 * agg.static.weight
        y = (a @ v).transpose(-2, -1).reshape(B, C, H, W)
        torch.testing.assert_close(agg(x), agg.out_proj(y), rtol=1e-5, atol=1e-5)


def test_sigmoid_mix_starts_at_zero_and_learns():
    torch.manual_seed(0)
    agg = ContextAggregation(C, num_heads=2)
    assert agg.mix_logit.shape == (1,) and agg.mix_logit.item() == 0.0 and agg.mix_logit.requires_grad
    alpha, beta = agg.mix_weights()
    assert alpha.item() == beta.item() == 0.5
    opt = torch.optim.SGD(agg.parameters(), lr=0.5)
    agg(_x()).square().mean().backward()
    assert agg.mix_logit.grad is not None and agg.mix_logit.grad.abs().item() > 0
    opt.step()
    assert agg.mix_logit.item() != 0.0


def test_sum_mix_has_no_parameters():
    agg = ContextAggregation(C, num_heads=2, static="dense", num_tokens=N, mix="sum")
    assert {n for n, _ in agg.named_parameters()} == {
        "in_proj.weight",
        "in_proj.bias",
        "static.weight",
        "out_proj.weight",
        "out_proj.bias",
    }


def test_dense_affinity_tied_to_token_count():
    agg = ContextAggregation(C, dynamic=None, static="dense", num_tokens=N)
    with pytest.raises(ValueError, match="tied to 30 tokens, got 36"):
        agg(torch.zeros(1, C, 6, 6))
    with pytest.raises(ValueError, match="tied to 4 tokens"):
        DenseAffinity(2, 4)(torch.zeros(1, 2, 5, 3))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(dynamic="conv"), "dynamic must be one of"),
        (dict(static="mlp"), "static must be one of"),
        (dict(mix="max"), "mix must be one of"),
        (dict(dynamic=None, static=None), "needs a dynamic or a static"),
        (dict(num_heads=3), "divisible by num_heads"),
        (dict(kernel_size=4), "kernel_size must be odd"),
        (dict(static="dense"), "num_tokens"),
    ],
)
def test_bad_options_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ContextAggregation(C, **kwargs)


def _layers_for_layout() -> dict[str, nn.Module]:
    layers: dict[str, nn.Module] = {
        "agg_depthwise": ContextAggregation(C, dynamic=None, static="depthwise"),
        "agg_dense": ContextAggregation(C, num_heads=2, static="dense", num_tokens=N, mix="free"),
        "agg_attention": ContextAggregation(C, num_heads=2, static=None),
        "agg_mixed": ContextAggregation(C, num_heads=2, static="depthwise", mix="sigmoid"),
    }
    layers.update({f"block_{m}": ContainerBlock(C, mlp_ratio=2, mixer=m, num_heads=2) for m in STAGE_MIXERS})
    return layers


@pytest.mark.parametrize("name", list(_layers_for_layout()))
def test_channels_last_in_channels_last_out(name):
    # batch 4 (a view that only works for one image fails there), eval and a training step
    torch.manual_seed(0)
    layer = _layers_for_layout()[name].double()
    x = torch.randn(4, C, H, W, dtype=torch.float64)
    grad_out = torch.randn(4, C, H, W, dtype=torch.float64)
    for mode in ("eval", "train"):
        getattr(layer, mode)()
        xs = [x.clone().requires_grad_(), x.contiguous(memory_format=torch.channels_last).requires_grad_()]
        outs = [layer(t) for t in xs]
        assert outs[0].is_contiguous()
        assert outs[1].is_contiguous(memory_format=torch.channels_last) and not outs[1].is_contiguous()
        torch.testing.assert_close(outs[1], outs[0], rtol=1e-10, atol=1e-10)
        for out in outs:
            out.backward(grad_out)
        assert xs[1].grad is not None
        torch.testing.assert_close(xs[1].grad, xs[0].grad, rtol=1e-10, atol=1e-10)
