"""The block MLP's faster paths (container.mlp) against the three layers run as written."""

from __future__ import annotations

import pytest
import timm
import torch

from container.mlp import ConvMlp, _ConvMlpFunction, conv_mlp_chunked, conv_mlp_train
from ctxnets_shared.testing.fused import (
    assert_autocast_bf16_grads_match,
    assert_compiled_training_matches,
    assert_inference_matches,
    assert_retain_graph_backward_matches,
    assert_training_matches,
    float64_input,
)

C, HIDDEN = 6, 24


def _pair(**kwargs) -> tuple[ConvMlp, ConvMlp]:
    """A fused module and a plain one with the same float64 weights."""
    torch.manual_seed(0)
    fused = ConvMlp(C, HIDDEN, **kwargs).double()
    plain = ConvMlp(C, HIDDEN, fused=False).double()
    plain.load_state_dict(fused.state_dict())
    return fused, plain


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("chunk_bytes", [10**9, HIDDEN * 7 * 5 * 8 * 2])  # whole batch; 2 + 1 images
def test_training_path_equals_autograd_through_the_layers(channels_last, chunk_bytes):
    fused, plain = _pair(chunk_bytes=chunk_bytes)
    x = float64_input(3, C, 7, 5, channels_last=channels_last)
    grad_out = float64_input(3, C, 7, 5)
    assert_training_matches(fused, plain, x, grad_out)


def test_a_trainable_bias_alone_still_gets_its_gradient():
    fused, plain = _pair()
    for module in (fused, plain):
        module.fc1.weight.requires_grad_(False)
        module.fc2.weight.requires_grad_(False)
    x = float64_input(2, C, 4, 4)
    fused(x).sum().backward()
    plain(x).sum().backward()
    assert fused.fc1.bias.grad is not None
    torch.testing.assert_close(fused.fc1.bias.grad, plain.fc1.bias.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fused.fc2.bias.grad, plain.fc2.bias.grad, rtol=1e-10, atol=1e-12)


def test_training_path_gradcheck_with_and_without_bias():
    x = float64_input(2, C, 4, 3).requires_grad_()
    w1 = float64_input(HIDDEN, C, 1, 1).requires_grad_()
    b1 = float64_input(HIDDEN).requires_grad_()
    w2 = float64_input(C, HIDDEN, 1, 1).requires_grad_()
    b2 = float64_input(C).requires_grad_()
    for chunk_bytes in (10**9, 1):  # the whole batch; one image at a time
        run = lambda *a, n=chunk_bytes: conv_mlp_train(*a, chunk_bytes=n)  # noqa: E731
        assert torch.autograd.gradcheck(run, (x, w1, b1, w2, b2))
        assert torch.autograd.gradcheck(run, (x, w1, None, w2, None))


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


def test_compiled_training_runs_the_fused_function_and_equals_the_layers():
    """Under torch.compile a batch the Function chunks still goes through it, eagerly (a graph break), with
    the same gradients."""
    fused, plain = _pair(chunk_bytes=HIDDEN * 5 * 6 * 8)  # one image per chunk
    x, grad_out = float64_input(2, C, 6, 5), float64_input(2, C, 6, 5, seed=2)
    assert_compiled_training_matches(fused, plain, x, grad_out, _ConvMlpFunction)


def test_compiled_training_of_a_batch_in_one_chunk_stays_in_the_graph():
    """Where the Function would not chunk, compiled training runs the plain layers in the graph: no graph
    break (fullgraph), no Function call, the same gradients."""
    fused, plain = _pair()  # the default 16 MiB holds the whole batch
    x, grad_out = float64_input(2, C, 6, 5), float64_input(2, C, 6, 5, seed=2)
    assert_compiled_training_matches(fused, plain, x, grad_out, _ConvMlpFunction, runs_function=False)


@pytest.mark.parametrize(
    "chunk_bytes",
    [
        10**9,  # the whole batch at once
        HIDDEN * 7 * 5 * 8 * 2,  # two images at a time (3 -> 2 + 1)
        HIDDEN * 5 * 8 * 3,  # bands of 3 rows (7 -> 3 + 3 + 1)
        1,  # one row at a time
    ],
)
def test_inference_path_equals_the_layers_and_leaves_the_input_alone(chunk_bytes):
    fused, plain = _pair(chunk_bytes=chunk_bytes)
    assert_inference_matches(fused, plain, float64_input(3, C, 7, 5))


def test_inference_chunks_bound_the_hidden_activation():
    fused, _ = _pair()
    seen: list[torch.Size] = []
    fused.fc1.register_forward_hook(lambda _m, _i, out: seen.append(out.shape))
    x = float64_input(4, C, 8, 6)
    with torch.no_grad():
        conv_mlp_chunked(x, fused.fc1, fused.fc2, chunk_bytes=HIDDEN * 8 * 6 * 8 * 2)  # two images
        assert seen == [torch.Size([2, HIDDEN, 8, 6])] * 2
        seen.clear()
        conv_mlp_chunked(x, fused.fc1, fused.fc2, chunk_bytes=HIDDEN * 6 * 8 * 4)  # 4-row bands
        assert seen == [torch.Size([1, HIDDEN, 4, 6])] * 8


def test_compiled_inference_with_chunks_equals_the_layers():
    fused, plain = _pair(chunk_bytes=HIDDEN * 5 * 8 * 2)
    x = float64_input(2, C, 6, 5)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(fused, backend="aot_eager")(x), plain(x), rtol=0, atol=1e-12)


def test_bf16_autocast_trains_as_the_layers_do():
    fused, plain = _pair()
    assert_autocast_bf16_grads_match(
        fused, plain, float64_input(2, C, 4, 4), float64_input(2, C, 4, 4, seed=2)
    )


def test_bad_chunk_size_is_a_clear_error():
    with pytest.raises(ValueError, match="chunk_bytes must be >= 1"):
        ConvMlp(C, HIDDEN, chunk_bytes=0)


def test_container_model_fused_and_plain_mlps_agree_float64():
    """The whole network: logits and every parameter gradient, with and without the faster MLP paths."""
    torch.manual_seed(0)
    fused = timm.create_model("container_v1_light", num_classes=10).double()
    plain = timm.create_model("container_v1_light", num_classes=10, fused_mlp=False).double()
    plain.load_state_dict(fused.state_dict())
    x = float64_input(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fused.eval()(x), plain.eval()(x), rtol=0, atol=1e-10)
    fused.train()
    plain.train()
    fused(x).square().sum().backward()
    plain(x).square().sum().backward()
    for (name, p), q in zip(fused.named_parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-8, atol=1e-10, msg=name)


def test_container_training_backward_writes_into_the_saved_activations(monkeypatch):
    """The patch embeddings' LayerNorm leaves the network channels-last; the buffer path must cover it."""
    import container.mlp as mlp

    written: list[bool] = []
    real = mlp._conv1x1_input_grad_into

    def spy(grad, weight, buffer):
        out = real(grad, weight, buffer)
        written.append(out is not None)
        return out

    monkeypatch.setattr(mlp, "_conv1x1_input_grad_into", spy)
    model = timm.create_model("container_v1_light", num_classes=10).train()
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    assert written == [True] * 18


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided"])
def test_fc2_input_gradient_fills_the_buffer_with_autograds(layout):
    """The backward's ``dL/da`` written into ``a``'s buffer equals autograd's; a buffer that is neither NCHW
    nor channels-last is refused (None), and the caller allocates."""
    from container.mlp import _conv1x1_input_grad_into

    x = float64_input(2, 5, 4, 3, channels_last=layout == "channels_last", strided=layout == "strided")
    weight = float64_input(7, 5, 1, 1, seed=2)
    grad = float64_input(2, 7, 4, 3, seed=4)
    xr = x.clone().requires_grad_()
    (want,) = torch.autograd.grad(torch.nn.functional.conv2d(xr, weight), [xr], grad)
    buffer = x.clone() if layout != "strided" else x
    out = _conv1x1_input_grad_into(grad, weight, buffer)
    if layout == "strided":
        assert out is None
    else:
        assert out is buffer
        torch.testing.assert_close(buffer, want, rtol=1e-12, atol=1e-12)
