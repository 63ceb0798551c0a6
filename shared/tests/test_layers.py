"""ConvNormAct, MultiHeadSelfAttention2d against a hand-written attention, feature indices, input checks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from ctxnets_shared.layers import ConvNormAct, MultiHeadSelfAttention2d
from ctxnets_shared.models import check_image_input, feature_take_indices


def test_conv_norm_act_keys_and_shape() -> None:
    m = ConvNormAct(8, 16, 3, stride=2, groups=4)
    assert [k for k, _ in m.named_children()] == ["0", "1", "2"]
    assert isinstance(m[1], nn.BatchNorm2d) and isinstance(m[2], nn.ReLU)
    assert m(torch.randn(2, 8, 9, 9)).shape == (2, 16, 5, 5)
    assert len(ConvNormAct(8, 8, norm_layer=None, act_layer=None)) == 1
    with pytest.raises(ValueError, match="groups=3 must divide"):
        ConvNormAct(8, 16, groups=3)


def _reference_attention(m: MultiHeadSelfAttention2d, x: torch.Tensor) -> torch.Tensor:
    B, C, H, W = x.shape
    h, d = m.num_heads, C // m.num_heads
    q = m.q(x).reshape(B, h, d, H * W)
    k, v = m.kv(x).reshape(B, 2, h, d, H * W).unbind(1)
    attn = torch.softmax(torch.einsum("bhdn,bhdm->bhnm", q, k) / math.sqrt(d), dim=-1)
    out = torch.einsum("bhnm,bhdm->bhdn", attn, v).reshape(B, C, H, W)
    return m.proj(out)


def test_mhsa_matches_reference() -> None:
    torch.manual_seed(0)
    m = MultiHeadSelfAttention2d(32, num_heads=4, qkv_bias=True).eval()
    x = torch.randn(2, 32, 5, 7)
    torch.testing.assert_close(m(x), _reference_attention(m, x), rtol=1e-5, atol=1e-5)


def test_mhsa_spatial_reduction_and_errors() -> None:
    m = MultiHeadSelfAttention2d(32, num_heads=2, sr_ratio=2)
    assert m(torch.randn(1, 32, 8, 8)).shape == (1, 32, 8, 8)
    with pytest.raises(ValueError, match="divisible by num_heads"):
        MultiHeadSelfAttention2d(30, num_heads=4)


def test_mhsa_scripts() -> None:
    m = MultiHeadSelfAttention2d(16, num_heads=2).eval()
    x = torch.randn(1, 16, 4, 4)
    torch.testing.assert_close(torch.jit.script(m)(x), m(x))


@pytest.mark.parametrize(
    ("indices", "expected"),
    [(None, ([0, 1, 2, 3], 3)), (2, ([2, 3], 3)), ([0, -1], ([0, 3], 3)), ((1,), ([1], 1))],
)
def test_feature_take_indices(indices: object, expected: tuple[list[int], int]) -> None:
    assert feature_take_indices(4, indices) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("indices", [0, 5, [4], [-5]])
def test_feature_take_indices_out_of_range(indices: object) -> None:
    with pytest.raises(ValueError, match="out of range"):
        feature_take_indices(4, indices)  # type: ignore[arg-type]


def test_check_image_input() -> None:
    check_image_input(torch.zeros(1, 3, 32, 32), 3, 32)
    with pytest.raises(ValueError, match="expected 3 input channels.*got 1"):
        check_image_input(torch.zeros(1, 1, 32, 32), 3, 32)
    with pytest.raises(ValueError, match="16x40 is smaller than the network stride.*at least 32"):
        check_image_input(torch.zeros(1, 3, 16, 40), 3, 32)
    with pytest.raises(ValueError, match="4-D"):
        check_image_input(torch.zeros(3, 32, 32), 3, 32)
    scripted = torch.jit.script(check_image_input)
    with pytest.raises(Exception, match="smaller than the network stride"):
        scripted(torch.zeros(1, 3, 8, 8), 3, 32)


def test_is_traced_in_eager_fx_and_jit_trace() -> None:
    import torch.fx

    from ctxnets_shared.layers import is_traced

    seen: list[bool] = []

    class Probe(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(is_traced(x))
            return x + 1

    x = torch.zeros(1)
    Probe()(x)
    torch.fx.symbolic_trace(Probe())
    torch.jit.trace(Probe(), x, check_trace=False)
    assert seen == [False, True, True]


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided"])
def test_conv1x1_grads_equal_autograd(layout: str) -> None:
    from ctxnets_shared.layers import conv1x1_backward
    from ctxnets_shared.testing.fused import float64_input

    x = float64_input(2, 5, 4, 3, channels_last=layout == "channels_last", strided=layout == "strided")
    weight = float64_input(7, 5, 1, 1, seed=2).requires_grad_()
    bias = float64_input(7, seed=3).requires_grad_()
    grad = float64_input(2, 7, 4, 3, seed=4)
    xr = x.clone().requires_grad_()
    want = torch.autograd.grad(torch.nn.functional.conv2d(xr, weight, bias), [xr, weight, bias], grad)
    weight = weight.detach()  # as in an autograd Function's backward
    got = conv1x1_backward(grad, x, weight, [True, True, True])
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


def test_float64_input_layouts() -> None:
    from ctxnets_shared.testing.fused import float64_input

    nchw = float64_input(2, 5, 4, 3)
    cl = float64_input(2, 5, 4, 3, channels_last=True)
    strided = float64_input(2, 5, 4, 3, strided=True)
    assert nchw.is_contiguous() and not cl.is_contiguous()
    assert cl.is_contiguous(memory_format=torch.channels_last)
    assert strided.shape == (2, 5, 4, 3) and strided.dtype == torch.float64
    assert not strided.is_contiguous() and not strided.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(cl, nchw, rtol=0, atol=0)
    with pytest.raises(ValueError, match="channels_last or strided"):
        float64_input(2, 5, 4, 3, channels_last=True, strided=True)


def test_is_plain_cpu_only_for_untraced_cpu_tensors_without_autocast() -> None:
    from ctxnets_shared.layers import is_plain_cpu

    x = torch.randn(1, 2, 3, 3)
    assert is_plain_cpu(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not is_plain_cpu(x)
    seen: list[bool] = []

    class Probe(nn.Module):
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            seen.append(is_plain_cpu(t))
            return t + 1

    torch.fx.symbolic_trace(Probe())
    torch.jit.trace(Probe(), (x,), check_trace=False)
    assert seen == [False, False]


def test_fused_cpu_path_picks_inference_training_or_none() -> None:
    from ctxnets_shared.layers import fused_cpu_path

    layer = nn.Conv2d(2, 2, 1)
    x = torch.randn(1, 2, 3, 3)
    assert fused_cpu_path(x, layer) == "training"  # trainable parameters
    with torch.no_grad():
        assert fused_cpu_path(x, layer) == "inference"
    layer.requires_grad_(False)
    assert fused_cpu_path(x, layer) == "inference"
    assert fused_cpu_path(x.requires_grad_(), layer) == "training"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fused_cpu_path(x, layer) is None
    # eager training takes the Function whether or not the batch fits one chunk (under torch.compile a
    # single chunk gets None: container's test_mlp.py compiles both cases)
    assert fused_cpu_path(x, layer, hidden=4, chunk_bytes=10**9) == "training"
    assert fused_cpu_path(x, layer, hidden=4, chunk_bytes=1) == "training"


def test_images_per_chunk_fits_the_budget_and_takes_at_least_one_image() -> None:
    from ctxnets_shared.layers import images_per_chunk

    x = torch.empty(8, 3, 10, 10)  # a 4-channel float32 map at 10 x 10 is 1600 bytes per image
    assert images_per_chunk(x, 4, 1600 * 3) == 3
    assert images_per_chunk(x, 4, 1600 * 3 + 1599) == 3
    assert images_per_chunk(x, 4, 1599) == 1
    assert images_per_chunk(x.double(), 4, 1600 * 3) == 1
