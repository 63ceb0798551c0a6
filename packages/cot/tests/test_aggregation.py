"""The fast local aggregation against the slow reference: values, gradients, channel-sharing order."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cot import aggregation
from cot.aggregation import _shift_accumulate, local_aggregate


def aggregate_reference(
    value: torch.Tensor, weight: torch.Tensor, kernel_size: int, contiguous: bool = False, dilation: int = 1
):
    """Loop over channels and taps: out[c] = sum_t weight[map(c), t] * shifted value[c].

    ``map(c) = c % M`` (the official CUDA kernel); ``contiguous=True`` uses ``c // (C // M)`` instead, the
    wrong reading of "channels share a map" that the channel-sharing test guards against. Tap (i, j)
    reads the value ``dilation * (i - K // 2)`` rows and ``dilation * (j - K // 2)`` columns away.
    """
    _, C, H, W = value.shape
    M = weight.shape[1]
    p = (kernel_size // 2) * dilation
    padded = F.pad(value, [p, p, p, p])
    out = torch.zeros_like(value)
    for c in range(C):
        m = c // (C // M) if contiguous else c % M
        for i in range(kernel_size):
            for j in range(kernel_size):
                di, dj = i * dilation, j * dilation
                tap = padded[:, c, di : di + H, dj : dj + W]
                out[:, c] = out[:, c] + weight[:, m, i * kernel_size + j] * tap
    return out


SHAPES = [  # (B, C, M, H, W, K): batch 1, odd and non-square sizes, 1x1 maps, 5x5 windows
    (2, 16, 2, 7, 5, 3),
    (1, 32, 4, 9, 9, 3),
    (1, 8, 1, 1, 1, 3),
    (3, 24, 3, 6, 11, 5),
]


def _inputs(B, C, M, H, W, K, dtype=torch.float32):
    g = torch.Generator().manual_seed(B * 1000 + C + H + K)
    v = torch.randn(B, C, H, W, generator=g, dtype=dtype, requires_grad=True)
    w = torch.randn(B, M, K * K, H, W, generator=g, dtype=dtype, requires_grad=True)
    return v, w


@pytest.mark.parametrize("shape", SHAPES)
def test_values_and_gradients_match_reference(shape):
    v, w = _inputs(*shape)
    K = shape[-1]
    out = local_aggregate(v, w, K)
    ref = aggregate_reference(v, w, K)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (v, w), grad)
    want = torch.autograd.grad(ref, (v, w), grad)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES[:2])
def test_plain_path_matches_reference(shape):
    # the path TorchScript / ONNX / inference take (autograd through the in-place shift-and-accumulate)
    v, w = _inputs(*shape)
    K = shape[-1]
    out = _shift_accumulate(v, w, K)
    ref = aggregate_reference(v, w, K)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, (v, w), grad), torch.autograd.grad(ref, (v, w), grad)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(local_aggregate(v, w, K), ref.detach(), rtol=1e-5, atol=1e-5)


def test_gradcheck_float64():
    v, w = _inputs(2, 8, 2, 5, 4, 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, b: local_aggregate(a, b, 3), (v, w))


def test_channel_sharing_is_strided_not_contiguous():
    # channel c must use map c % M; with contiguous grouping (c // (C / M)) the outputs differ completely
    v, w = _inputs(1, 16, 4, 6, 6, 3)
    out = local_aggregate(v, w, 3)
    torch.testing.assert_close(out, aggregate_reference(v, w, 3), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, aggregate_reference(v, w, 3, contiguous=True), atol=1e-2)
    # only map 1 non-zero: channels 1, 5, 9, 13 respond; the contiguous reading would light up 4..7
    w1 = torch.zeros_like(w)
    w1[:, 1] = 1.0
    lit = local_aggregate(v, w1, 3).detach().abs().sum((0, 2, 3)).nonzero().flatten().tolist()
    assert lit == [1, 5, 9, 13]


def test_bad_shapes_raise():
    v, w = _inputs(1, 16, 4, 6, 6, 3)
    with pytest.raises(ValueError, match="M dividing C"):
        local_aggregate(v, w[:, :3], 3)
    with pytest.raises(ValueError, match="K\\*K"):
        local_aggregate(v, w, 5)


@pytest.mark.parametrize("accumulate_min_numel", [0, 1 << 30])
@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[2], SHAPES[3]])
def test_both_weight_gradient_strategies_match_reference(shape, accumulate_min_numel, monkeypatch):
    # large maps accumulate d out / d w channel slice by channel slice, small ones use one sum per tap
    monkeypatch.setattr(aggregation, "ACCUMULATE_MIN_NUMEL", accumulate_min_numel)
    v, w = _inputs(*shape)
    K = shape[-1]
    out = local_aggregate(v, w, K)
    ref = aggregate_reference(v, w, K)
    grad = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, (v, w), grad), torch.autograd.grad(ref, (v, w), grad)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
def test_eager_and_traceable_kernels_agree(shape):
    # inference in eager mode skips the padded copy; TorchScript/ONNX/compile use the padded kernel
    v, w = _inputs(*shape)
    K = shape[-1]
    with torch.no_grad():
        torch.testing.assert_close(
            aggregation._shift_accumulate_eager(v, w, K), _shift_accumulate(v, w, K), rtol=1e-6, atol=1e-6
        )


DILATED = [  # (B, C, M, H, W, K, d): maps smaller than some offsets (empty tap windows), 5x5 windows
    (2, 16, 2, 7, 5, 3, 2),
    (1, 8, 2, 3, 4, 3, 2),
    (1, 24, 3, 9, 8, 5, 3),
    (1, 8, 1, 2, 2, 3, 4),
]


@pytest.mark.parametrize("shape", DILATED)
def test_dilated_aggregation_matches_reference(shape):
    # output_stride 8/16: the window's taps d pixels apart, in the operator (eager) and the padded kernel
    *dims, d = shape
    v, w = _inputs(*dims)
    K = dims[-1]
    ref = aggregate_reference(v, w, K, dilation=d)
    grad = torch.randn_like(ref)
    want = torch.autograd.grad(ref, (v, w), grad)
    for fn in (local_aggregate, _shift_accumulate):
        out = fn(v, w, K, d)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        for a, b in zip(torch.autograd.grad(out, (v, w), grad), want):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # a dilated window differs from the dense one wherever some off-centre tap lands inside the map
    if min(dims[3], dims[4]) > 1:
        assert not torch.allclose(local_aggregate(v, w, K, d), local_aggregate(v, w, K), atol=1e-3)


def test_bad_dilation_raises():
    v, w = _inputs(1, 16, 4, 6, 6, 3)
    with pytest.raises(ValueError, match="dilation >= 1"):
        local_aggregate(v, w, 3, 0)


def test_groups_aggregate_each_half_with_its_own_maps():
    # CoXt: channel c of group h uses map c % (M / groups) of that group's maps
    v, w = _inputs(2, 16, 4, 5, 6, 3, dtype=torch.float64)
    out = local_aggregate(v, w, 3, groups=2)
    halves = [aggregate_reference(vh, wh, 3) for vh, wh in zip(v.chunk(2, 1), w.chunk(2, 1))]
    ref = torch.cat(halves, dim=1)
    torch.testing.assert_close(out, ref)
    grad = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, (v, w), grad), torch.autograd.grad(ref, (v, w), grad)):
        torch.testing.assert_close(a, b)
    assert not torch.allclose(out, local_aggregate(v, w, 3))
    with pytest.raises(ValueError, match="groups >= 1 dividing the number of maps M = 4"):
        local_aggregate(v, w, 3, groups=3)


@pytest.mark.parametrize("groups", [1, 2])
def test_channels_last_value_gives_channels_last_output(groups):
    v, w = _inputs(2, 16, 4, 5, 6, 3)
    ref = local_aggregate(v, w, 3, groups=groups)
    v_cl = v.detach().to(memory_format=torch.channels_last).requires_grad_()
    out = local_aggregate(v_cl, w, 3, groups=groups)
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    torch.testing.assert_close(out, ref)
    grad = torch.randn_like(ref)
    (gv,) = torch.autograd.grad(out, v_cl, grad)
    torch.testing.assert_close(gv, torch.autograd.grad(ref, v, grad)[0])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_value_with_float32_weight_promotes(dtype):
    # CUDA autocast: the GroupNorm gives float32 weights, the value map is half precision
    v, w = _inputs(1, 16, 4, 5, 6, 3)
    v_half = v.detach().to(dtype).requires_grad_()
    out = local_aggregate(v_half, w, 3)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, aggregate_reference(v_half.float(), w, 3), rtol=1e-5, atol=1e-5)
    gv, gw = torch.autograd.grad(out, (v_half, w), torch.ones_like(out))
    assert gv.dtype == dtype and gw.dtype == torch.float32
    assert torch.isfinite(gv.float()).all() and torch.isfinite(gw).all()
