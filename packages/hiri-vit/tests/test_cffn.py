"""The CFFN's faster CPU paths (hiri_vit.cffn) against Eq. 3 run as written."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

import hiri_vit.cffn as cffn_module
from ctxnets_shared.testing.fused import (
    assert_autocast_bf16_grads_match,
    assert_compiled_training_matches,
    assert_inference_matches,
    assert_retain_graph_backward_matches,
    assert_training_matches,
    float64_input,
)
from hiri_vit.cffn import CFFN, cffn_chunked

C, HIDDEN = 6, 20


def _pair(approximate: str = "none", **kwargs) -> tuple[CFFN, CFFN]:
    """A fused module and a plain one with the same float64 weights."""
    torch.manual_seed(0)
    act = lambda: nn.GELU(approximate=approximate)  # noqa: E731
    fused = CFFN(C, HIDDEN, act, **kwargs).double()
    plain = CFFN(C, HIDDEN, act, fused=False).double()
    plain.load_state_dict(fused.state_dict())
    return fused, plain


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("chunk_bytes", [10**9, HIDDEN * 7 * 5 * 8 * 2])  # whole batch; 2 + 1 images
def test_training_path_equals_autograd_through_eq3(channels_last, approximate, chunk_bytes):
    fused, plain = _pair(approximate, chunk_bytes=chunk_bytes)
    x = float64_input(3, C, 7, 5, channels_last=channels_last)
    grad_out = float64_input(3, C, 7, 5)
    assert_training_matches(fused, plain, x, grad_out)


def test_training_path_gradcheck_with_and_without_biases():
    x = float64_input(2, C, 4, 3).requires_grad_()
    w1, b1 = float64_input(HIDDEN, C, 1, 1).requires_grad_(), float64_input(HIDDEN).requires_grad_()
    wd, bd = float64_input(HIDDEN, 1, 3, 3).requires_grad_(), float64_input(HIDDEN).requires_grad_()
    w2, b2 = float64_input(C, HIDDEN, 1, 1).requires_grad_(), float64_input(C).requires_grad_()
    apply = cffn_module._CFFNFunction.apply
    for images_per_chunk in (2, 1):
        run = lambda *a, n=images_per_chunk: apply(*a, "none", n)  # noqa: E731
        assert torch.autograd.gradcheck(run, (x, w1, b1, wd, bd, w2, b2))
        assert torch.autograd.gradcheck(run, (x, w1, None, wd, None, w2, None))


@pytest.mark.parametrize("chunk_bytes", [10**9, 1])
def test_second_backward_with_retain_graph_recomputes_the_overwritten_activations(chunk_bytes):
    fused, plain = _pair(chunk_bytes=chunk_bytes)
    assert_retain_graph_backward_matches(
        fused, plain, float64_input(2, C, 5, 5), float64_input(2, C, 5, 5, seed=2)
    )


def test_training_keeps_one_hidden_tensor_per_chunk():
    fused, _ = _pair(chunk_bytes=HIDDEN * 8 * 6 * 8 * 2)  # two images
    y = fused(float64_input(5, C, 8, 6).requires_grad_())
    assert [h.shape for h in y.grad_fn.hs] == [torch.Size([2, HIDDEN, 8, 6])] * 2 + [
        torch.Size([1, HIDDEN, 8, 6])
    ]


def test_compiled_training_runs_the_fused_function_and_equals_eq3():
    """Under torch.compile the training Function runs eagerly (a graph break), with the same gradients."""
    fused, plain = _pair(chunk_bytes=HIDDEN * 5 * 6 * 8)
    x, grad_out = float64_input(2, C, 6, 5), float64_input(2, C, 6, 5, seed=2)
    assert_compiled_training_matches(fused, plain, x, grad_out, cffn_module._CFFNFunction)


def test_frozen_weights_with_trainable_biases_still_get_their_gradients():
    fused, plain = _pair()
    for module in (fused, plain):
        for name, p in module.named_parameters():
            p.requires_grad_(name.endswith("bias"))
    x = float64_input(2, C, 4, 4)
    fused(x).sum().backward()
    plain(x).sum().backward()
    for (name, p), q in zip(fused.named_parameters(), plain.parameters(), strict=True):
        if name.endswith("bias"):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-12, msg=name)
        else:
            assert p.grad is None


@pytest.mark.parametrize(
    "chunk_bytes",
    [
        10**9,  # the whole batch at once
        HIDDEN * 7 * 5 * 8 * 2,  # two images at a time (3 -> 2 + 1)
        1,  # one image at a time
    ],
)
def test_inference_path_equals_eq3_and_leaves_the_input_alone(chunk_bytes):
    fused, plain = _pair(chunk_bytes=chunk_bytes)
    assert_inference_matches(fused, plain, float64_input(3, C, 7, 5))


def test_inference_chunks_bound_the_hidden_activation():
    fused, _ = _pair()
    seen: list[torch.Size] = []
    fused.fc1.register_forward_hook(lambda _m, _i, out: seen.append(out.shape))
    with torch.no_grad():
        cffn_chunked(float64_input(5, C, 8, 6), fused, chunk_bytes=HIDDEN * 8 * 6 * 8 * 2)  # two images
    assert seen == [torch.Size([2, HIDDEN, 8, 6])] * 2 + [torch.Size([1, HIDDEN, 8, 6])]


def test_compiled_inference_with_chunks_equals_eq3():
    fused, plain = _pair(chunk_bytes=HIDDEN * 5 * 6 * 8)
    x = float64_input(2, C, 6, 5)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(fused, backend="aot_eager")(x), plain(x), rtol=0, atol=1e-12)


def test_bf16_autocast_trains_as_eq3_does():
    fused, plain = _pair()
    assert_autocast_bf16_grads_match(
        fused, plain, float64_input(2, C, 4, 4), float64_input(2, C, 4, 4, seed=2)
    )


def test_other_activations_run_eq3_as_written(monkeypatch):
    def refuse(*_args, **_kwargs):
        raise AssertionError("fused path taken for a non-GELU activation")

    monkeypatch.setattr(cffn_module, "_cffn_train_eager", refuse)
    monkeypatch.setattr(cffn_module, "cffn_chunked", refuse)
    module = CFFN(C, HIDDEN, nn.ReLU).double()
    x = float64_input(2, C, 4, 4).requires_grad_()
    z = torch.relu(module.fc1(x))
    torch.testing.assert_close(module(x), module.fc2(module.dwconv(z) + z))


def test_bad_chunk_size_is_a_clear_error():
    with pytest.raises(ValueError, match="chunk_bytes must be >= 1"):
        CFFN(C, HIDDEN, chunk_bytes=0)


@pytest.fixture(scope="module")
def s_pair() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    fused = timm.create_model("hiri_vit_s", num_classes=10).double()
    plain = timm.create_model("hiri_vit_s", num_classes=10, fused_mlp=False).double()
    plain.load_state_dict(fused.state_dict())
    return fused, plain


def test_hiri_vit_s_fused_and_plain_cffns_agree_float64(s_pair):
    """The whole network: logits and every parameter gradient, with and without the faster CFFN paths."""
    fused, plain = s_pair
    # 4 images: at 64 px stage 5 is 1x1, and a training-mode BatchNorm over only 2 values there magnifies
    # float64 rounding (the folded depthwise kernel rounds differently from DWConv(z) + z) to ~1e-6
    x = float64_input(4, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fused.eval()(x), plain.eval()(x), rtol=0, atol=1e-10)
    fused.train()
    plain.train()
    fused(x).square().sum().backward()
    plain(x).square().sum().backward()
    for (name, p), q in zip(fused.named_parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-8, atol=1e-10, msg=name)


def test_hiri_vit_s_training_takes_the_fused_function_in_every_cffn(monkeypatch, s_pair):
    """Stage 3 is NCHW-strided channels-last, stages 4-5 a permuted token view: every CFFN's backward
    computes the fc2 input gradient as a 1x1 convolution with the transposed weight."""
    seen: list[tuple[int, ...]] = []
    real = cffn_module._conv1x1_input_grad

    def spy(grad, weight):
        out = real(grad, weight)
        seen.append(tuple(out.shape))
        return out

    monkeypatch.setattr(cffn_module, "_conv1x1_input_grad", spy)
    fused, _ = s_pair
    fused.train()(float64_input(2, 3, 64, 64)).sum().backward()
    # hiri_vit_s depths (2, 2, 2, 9, 4), widths (32, 64, 128, 320, 512), CFFN expansion 6 in stage 3 and
    # 5 in stages 4-5 (specs/hiri-vit.md): stage 3 at 64 / 16 = 4, stage 4 at 2, stage 5 at 1; backward
    # runs the stages last to first
    assert seen == [(2, 2560, 1, 1)] * 4 + [(2, 1600, 2, 2)] * 9 + [(2, 768, 4, 4)] * 2


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided"])
def test_fc_input_gradient_is_autograds(layout):
    """The transposed-weight 1x1 convolution the Function's backward uses for dL/ds equals autograd's."""
    x = float64_input(2, 5, 4, 3)
    layout_kw = {"channels_last": layout == "channels_last", "strided": layout == "strided"}
    grad = float64_input(2, 7, 4, 3, **layout_kw, seed=4)
    weight = float64_input(7, 5, 1, 1, seed=2)
    xr = x.clone().requires_grad_()
    (want,) = torch.autograd.grad(F.conv2d(xr, weight), [xr], grad)
    torch.testing.assert_close(cffn_module._conv1x1_input_grad(grad, weight), want, rtol=1e-12, atol=1e-12)


def test_the_folded_depthwise_kernel_is_dwconv_plus_identity():
    wd = float64_input(HIDDEN, 1, 3, 3)
    z = float64_input(2, HIDDEN, 5, 4)
    folded = cffn_module._with_identity(wd)
    torch.testing.assert_close(
        F.conv2d(z, folded, padding=1, groups=HIDDEN), F.conv2d(z, wd, padding=1, groups=HIDDEN) + z
    )
    assert not torch.equal(folded, wd)  # a copy: the parameter itself is untouched


def test_gelu_modules_of_torch_and_timm_take_the_fused_paths():
    from timm.layers import get_act_layer

    assert cffn_module.gelu_approximation(get_act_layer("gelu")()) == "none"
    assert cffn_module.gelu_approximation(get_act_layer("gelu_tanh")()) == "tanh"
    assert cffn_module.gelu_approximation(nn.GELU(approximate="tanh")) == "tanh"
    assert cffn_module.gelu_approximation(nn.SiLU()) is None
