"""The static affinity's depthwise conv (container.depthwise) against ATen's own weight gradient and
against ``nn.Conv2d``."""

from __future__ import annotations

from typing import Any

import pytest
import timm
import torch
import torch.nn as nn
from torch._dynamo.backends.common import aot_autograd

from container.depthwise import DepthwiseConv2d, _DepthwiseConvFunction, depthwise_weight_grad
from ctxnets_shared.testing.fused import (
    assert_autocast_bf16_grads_match,
    assert_inference_matches,
    assert_training_matches,
    float64_input,
    input_and_param_grads,
)

C = 5


def _aten_weight_grad(grad: torch.Tensor, x: torch.Tensor, k: int) -> torch.Tensor:
    c, p = x.shape[1], k // 2
    out: Any = torch.ops.aten.convolution_backward(
        grad, x, x.new_empty(c, 1, k, k), None, [1, 1], [p, p], [1, 1], False, [0, 0], c, [False, True, False]
    )
    return out[1]


@pytest.mark.parametrize("kernel_size", [1, 3, 5, 7, 9, 11])
@pytest.mark.parametrize("size", [(1, 1), (2, 3), (5, 2), (4, 7), (9, 12)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_weight_grad_equals_aten(kernel_size, size, channels_last):
    # maps narrower than the kernel too: the shifted blocks then read only zeros
    x = float64_input(2, C, *size, channels_last=channels_last)
    grad = float64_input(2, C, *size, channels_last=channels_last, seed=2)
    got = depthwise_weight_grad(grad, x, kernel_size)
    assert got.shape == (C, 1, kernel_size, kernel_size)
    torch.testing.assert_close(got, _aten_weight_grad(grad, x, kernel_size), rtol=1e-10, atol=1e-12)


def test_weight_grad_float32_at_a_container_size():
    x = torch.randn(2, 16, 28, 28).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(2, 16, 28, 28).contiguous(memory_format=torch.channels_last)
    want = _aten_weight_grad(grad.double(), x.double(), 5)
    torch.testing.assert_close(depthwise_weight_grad(grad, x, 5).double(), want, rtol=1e-4, atol=1e-4)


def _pair(kernel_size: int = 5, bias: bool = True) -> tuple[DepthwiseConv2d, nn.Conv2d]:
    torch.manual_seed(0)
    fast = DepthwiseConv2d(C, kernel_size, bias=bias).double()
    plain = nn.Conv2d(C, C, kernel_size, padding=kernel_size // 2, groups=C, bias=bias).double()
    plain.load_state_dict(fast.state_dict())
    return fast, plain


@pytest.mark.parametrize("kernel_size", [5, 7])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
def test_training_equals_nn_conv2d(kernel_size, bias, channels_last):
    fast, plain = _pair(kernel_size, bias)
    x = float64_input(3, C, 9, 6, channels_last=channels_last)
    assert_training_matches(fast, plain, x, float64_input(3, C, 9, 6, seed=3))
    assert_inference_matches(fast, plain, x)


def _spy_calls(module: nn.Module, x: torch.Tensor, monkeypatch: pytest.MonkeyPatch) -> int:
    calls: list[int] = []
    real = _DepthwiseConvFunction.apply

    def spy(*args: Any) -> Any:
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(_DepthwiseConvFunction, "apply", spy)
    module(x)
    return len(calls)


def test_the_function_runs_only_where_it_pays(monkeypatch):
    fast, _ = _pair()
    x = float64_input(2, C, 6, 6)
    assert _spy_calls(fast, x, monkeypatch) == 1
    with torch.no_grad():
        assert _spy_calls(fast, x, monkeypatch) == 0
    fast.weight.requires_grad_(False)  # a frozen conv needs no weight gradient: oneDNN's input grad is fast
    assert _spy_calls(fast, x, monkeypatch) == 0
    fast.weight.requires_grad_(True)
    assert _spy_calls(DepthwiseConv2d(C, 3).double(), x, monkeypatch) == 0  # oneDNN's own kernel
    fast.fast_weight_grad = False
    assert _spy_calls(fast, x, monkeypatch) == 0


def test_fx_trace_records_the_plain_conv():
    fast, _ = _pair()
    graph = torch.fx.symbolic_trace(fast).graph
    assert not any("Depthwise" in str(node.target) for node in graph.nodes)


def test_compiled_training_keeps_the_fast_weight_grad_in_the_graph():
    # dynamo traces the Function (no graph break), so its backward's k x 3 weight gradients are in the graph
    graphs: list[torch.fx.GraphModule] = []

    def keep(gm: torch.fx.GraphModule, _inputs: Any) -> torch.fx.GraphModule:
        graphs.append(gm)
        return gm

    fast, plain = _pair()
    x = float64_input(2, C, 7, 6, channels_last=True)
    grad_out = float64_input(2, C, 7, 6, seed=3)
    torch._dynamo.reset()
    try:
        backend = aot_autograd(fw_compiler=keep, bw_compiler=keep)
        compiled = torch.compile(fast, backend=backend, fullgraph=True)
        got = input_and_param_grads(compiled, x, grad_out)
    finally:
        torch._dynamo.reset()
    for g, w in zip(got, input_and_param_grads(plain, x, grad_out), strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
    conv_backward_weights = [
        tuple(node.args[2].meta["val"].shape)
        for gm in graphs
        for node in gm.graph.nodes
        if node.target is torch.ops.aten.convolution_backward.default
    ]
    assert (C, 1, 5, 3) in conv_backward_weights, conv_backward_weights


def test_autocast_bf16_steps_aside():
    fast, plain = _pair()
    x, grad_out = float64_input(2, C, 6, 6), float64_input(2, C, 6, 6, seed=3)
    assert_autocast_bf16_grads_match(fast, plain, x, grad_out)


def test_same_parameters_and_keys_as_nn_conv2d():
    fast, plain = _pair()
    assert list(fast.state_dict()) == list(plain.state_dict()) == ["weight", "bias"]
    assert "fast_weight_grad=True" in repr(fast)


@pytest.mark.parametrize("kernel_size", [0, 4, -3])
def test_even_or_non_positive_kernel_is_refused(kernel_size):
    with pytest.raises(ValueError, match="kernel_size odd and positive, got"):
        DepthwiseConv2d(C, kernel_size)
    with pytest.raises(ValueError, match="kernel_size odd and positive, got"):
        depthwise_weight_grad(torch.zeros(1, 1, 3, 3), torch.zeros(1, 1, 3, 3), kernel_size)


def test_container_light_static_affinities_use_it():
    model = timm.create_model("container_v1_light")
    statics = [block.mixer.static for stage in model.stages for block in stage.blocks]
    assert len(statics) == 3 + 4 + 8 + 3  # the released depths
    assert all(isinstance(s, DepthwiseConv2d) and s.kernel_size == (5, 5) for s in statics)
