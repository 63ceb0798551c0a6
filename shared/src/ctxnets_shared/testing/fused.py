"""Checks that a layer's fused CPU path computes what its plain layers compute (CONTAINER's MLP,
HIRI-ViT's CFFN): outputs and every gradient in float64, a second backward, and bf16 autocast.

``fused`` and ``plain`` are the same module class with the same weights, the fast path on and off.
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn as nn

__all__ = [
    "assert_autocast_bf16_grads_match",
    "assert_compiled_training_matches",
    "assert_inference_matches",
    "assert_retain_graph_backward_matches",
    "assert_training_matches",
    "float64_input",
    "input_and_param_grads",
]


def float64_input(
    *shape: int, channels_last: bool = False, strided: bool = False, seed: int = 1
) -> torch.Tensor:
    """A seeded float64 tensor of ``shape``: NCHW-contiguous, in channels-last memory, or ``strided``
    (every other column of a tensor twice as wide, contiguous in neither format)."""
    if channels_last and strided:
        raise ValueError("float64_input: choose channels_last or strided, not both")
    gen = torch.Generator().manual_seed(seed)
    if strided:
        return torch.randn(*shape[:-1], 2 * shape[-1], dtype=torch.float64, generator=gen)[..., ::2]
    x = torch.randn(*shape, dtype=torch.float64, generator=gen)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def input_and_param_grads(module: nn.Module, x: torch.Tensor, grad_out: torch.Tensor) -> list[torch.Tensor]:
    """``[dL/dx, dL/dp for p in module.parameters()]`` for ``L = <module(x), grad_out>``."""
    x = x.detach().requires_grad_()
    return list(torch.autograd.grad(module(x), [x, *module.parameters()], grad_out))


def assert_inference_matches(fused: nn.Module, plain: nn.Module, x: torch.Tensor) -> None:
    """Same output under ``no_grad`` and ``inference_mode``, and ``x`` left as it was (in-place paths)."""
    before = x.clone()
    with torch.no_grad():
        torch.testing.assert_close(fused(x), plain(x), rtol=0, atol=1e-12)
    with torch.inference_mode():
        torch.testing.assert_close(fused(x), plain(x), rtol=0, atol=1e-12)
    assert torch.equal(x, before), "the fused inference path changed its input"


def assert_training_matches(
    fused: nn.Module, plain: nn.Module, x: torch.Tensor, grad_out: torch.Tensor, atol: float = 1e-12
) -> None:
    """Same output and same input and parameter gradients (float64 tolerances)."""
    torch.testing.assert_close(fused(x.detach().requires_grad_()), plain(x), rtol=0, atol=atol)
    got, want = input_and_param_grads(fused, x, grad_out), input_and_param_grads(plain, x, grad_out)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=atol)


def assert_retain_graph_backward_matches(
    fused: nn.Module, plain: nn.Module, x: torch.Tensor, grad_out: torch.Tensor
) -> None:
    """Two backward passes through one graph (``retain_graph=True``) both give the plain gradients, also
    when the first one overwrote saved activations with gradients."""
    x = x.detach().requires_grad_()
    y = fused(x)
    first = torch.autograd.grad(y, [x, *fused.parameters()], grad_out, retain_graph=True)
    second = torch.autograd.grad(y, [x, *fused.parameters()], grad_out)
    for a, b, want in zip(first, second, input_and_param_grads(plain, x, grad_out), strict=True):
        torch.testing.assert_close(a, want, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(b, want, rtol=1e-10, atol=1e-12)


def assert_autocast_bf16_grads_match(
    fused: nn.Module, plain: nn.Module, x: torch.Tensor, grad_out: torch.Tensor
) -> None:
    """Under CPU bf16 autocast the fused module must step aside: bit-identical float32 gradients."""
    fused, plain = fused.float(), plain.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = input_and_param_grads(fused, x.float(), grad_out.to(torch.bfloat16))
        want = input_and_param_grads(plain, x.float(), grad_out.to(torch.bfloat16))
    for g, w in zip(got, want, strict=True):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, w, rtol=0, atol=0)


def assert_compiled_training_matches(
    fused: nn.Module,
    plain: nn.Module,
    x: torch.Tensor,
    grad_out: torch.Tensor,
    function: type[torch.autograd.Function],
    *,
    runs_function: bool = True,
) -> None:
    """Under ``torch.compile`` (aot_eager) the fused module gives the plain gradients, and runs its training
    ``function`` (eagerly, as a graph break) or, with ``runs_function=False``, does not: then it is compiled
    with ``fullgraph=True``, so a graph break fails too."""
    calls: list[int] = []
    own = function.__dict__.get("apply")
    real = function.apply

    def spy(*args: Any) -> Any:
        calls.append(1)
        return real(*args)

    function.apply = spy  # type: ignore[method-assign]
    torch._dynamo.reset()
    try:
        # an OptimizedModule
        compiled = cast(nn.Module, torch.compile(fused, backend="aot_eager", fullgraph=not runs_function))
        got = input_and_param_grads(compiled, x, grad_out)
    finally:
        torch._dynamo.reset()
        if own is None:
            del function.apply
        else:
            function.apply = own  # type: ignore[method-assign]
    if runs_function:
        assert calls, f"the compiled module did not run {function.__name__}"
    else:
        assert not calls, f"the compiled module ran {function.__name__} ({len(calls)} calls)"
    for g, w in zip(got, input_and_param_grads(plain, x, grad_out), strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
