"""Convolutional feed-forward network (CFFN, paper Eq. 3) and the CFFN block of stage 3 (Yao et al.,
"HIRI-ViT: Scaling Vision Transformer with High Resolution Inputs", TPAMI, Sec. 3 and 4).

The CFFN's three hidden-width tensors (``h = FC(X)``, ``z = act(h)``, ``DWConv(z) + z``) are the largest
activations of stages 3-5. On CPU every fresh tensor of that size costs page faults as well as arithmetic
(docs/benchmarks.md), so with GELU the module has faster CPU paths that keep the maths:

- both fold the residual ``+ z`` into the depthwise kernel (1 added to every filter's centre tap), so
  ``DWConv(z) + z`` is one convolution, and in backward its data gradient already includes the identity;
- inference runs a few images at a time, at most ``chunk_bytes`` of hidden activation each, with GELU in
  place;
- training uses :class:`_CFFNFunction`, which also works a few whole images at a time (so what it keeps
  and every temporary is a buffer glibc reuses), keeps only ``h`` for backward (the tensors a training
  step holds until its backward are the ones that come back as fresh pages every step) and recomputes
  ``z`` and ``DWConv(z) + z`` there, two cheap ops. Under ``torch.compile`` it runs eagerly, as a graph
  break.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import timm.layers.activations as timm_act
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath
from torch.autograd.function import once_differentiable

from ctxnets_shared.layers import (
    AttnLayerSpec,
    conv1x1_backward,
    create_attn_layer,
    fused_cpu_path,
    images_per_chunk,
)

__all__ = ["CFFN", "CFFNBlock", "cffn_chunked", "cffn_train", "gelu_approximation"]

#: hidden-activation bytes a chunk of the faster paths holds (under glibc's 32 MB mmap ceiling)
DEFAULT_CHUNK_BYTES = 16 * 2**20


def gelu_approximation(act: nn.Module) -> str | None:
    """``approximate`` of a GELU module (torch's or timm's), None for any other activation."""
    if isinstance(act, nn.GELU):
        return act.approximate
    if isinstance(act, timm_act.GELU):
        return "none"
    if isinstance(act, timm_act.GELUTanh):
        return "tanh"
    return None


def _dwconv(z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return F.conv2d(z, weight, bias, padding=weight.shape[-1] // 2, groups=weight.shape[0])


def _conv1x1_input_grad(grad: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``dL/dx`` of a 1x1 convolution: the 1x1 convolution of ``grad`` (B, C_out, H, W) with the transposed
    ``weight`` (C_out, C_in, 1, 1) -> (B, C_in, H, W), in ``grad``'s memory format.

    ``W^T g`` at every position is itself a 1x1 convolution, so it runs on oneDNN's forward kernel: on the
    AMD CPU we benchmark on, 1.2-1.6x faster for the stage 3-5 shapes than the same product through MKL's
    ``torch.mm`` into a saved buffer (docs/benchmarks.md).
    """
    # a contiguous transposed weight: oneDNN reorders a strided one on every call
    return F.conv2d(grad, weight.transpose(0, 1).contiguous())


def _with_identity(weight: torch.Tensor) -> torch.Tensor:
    """A copy of a (C, 1, k, k) depthwise kernel (k odd, "same" padding) with 1 added to every centre tap,
    so that ``DWConv'(z) = DWConv(z) + z``."""
    folded = weight.detach().clone()
    centre = weight.shape[-1] // 2
    folded[:, :, centre, centre] += 1
    return folded


class _CFFNFunction(torch.autograd.Function):
    """(x, W1, b1, Wd, bd, W2, b2) -> ``W2 * (DWConv(z) + z) + b2``, ``z = GELU(W1 * x + b1)``, a few images
    at a time, keeping only each chunk's ``h = W1 * x + b1`` for a backward that recomputes the rest and
    writes ``dL/dh`` into ``h``."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        w1: torch.Tensor,
        b1: torch.Tensor | None,
        wd: torch.Tensor,
        bd: torch.Tensor | None,
        w2: torch.Tensor,
        b2: torch.Tensor | None,
        approximate: str,
        per_chunk: int,
    ) -> torch.Tensor:
        hs, outs = [], []
        wd_plus_identity = _with_identity(wd)
        for xs in x.split(per_chunk):
            h = F.conv2d(xs, w1, b1)
            z = F.gelu(h, approximate=approximate)
            outs.append(F.conv2d(_dwconv(z, wd_plus_identity, bd), w2, b2))
            hs.append(h)
        # backward needs the depthwise kernel only in its folded form
        ctx.save_for_backward(x, w1, b1, wd_plus_identity, bd, w2)
        # the h chunks live on ctx (not saved_tensors) because backward overwrites them with dL/dh
        ctx.hs = hs
        ctx.per_chunk = per_chunk
        ctx.has_bias = (b1 is not None, bd is not None, b2 is not None)
        ctx.approximate = approximate
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, w1, b1, wd_plus_identity, bd, w2 = ctx.saved_tensors
        need_x, need_w1, need_b1, need_wd, need_bd, need_w2, need_b2, _, _ = ctx.needs_input_grad
        has_b1, has_bd, has_b2 = ctx.has_bias
        n = ctx.per_chunk
        # a second backward (retain_graph=True) finds the h chunks overwritten by the first one's dL/dh
        hs = ctx.hs or [None] * len(x.split(n))
        ctx.hs = None
        hidden = wd_plus_identity.shape[0]
        pad = wd_plus_identity.shape[-1] // 2
        grad_xs: list[torch.Tensor] = []
        param_grads: list[torch.Tensor | None] = [None] * 6  # w1, b1, wd, bd, w2, b2
        for xs, gs, h in zip(x.split(n), grad.split(n), hs):
            h = F.conv2d(xs, w1, b1) if h is None else h
            z = F.gelu(h, approximate=ctx.approximate)
            s = _dwconv(z, wd_plus_identity, bd)  # DWConv(z) + z
            _, grad_w2, grad_b2 = conv1x1_backward(gs, s, w2, [False, need_w2, need_b2 and has_b2])
            del s
            grad_s = _conv1x1_input_grad(gs, w2)
            # the folded kernel's data gradient is d(DWConv(z) + z)/dz; its weight gradient is DWConv's
            dw: Any = torch.ops.aten.convolution_backward(
                grad_s, z, wd_plus_identity, [hidden], [1, 1], [pad, pad], [1, 1], False, [0, 0], hidden,
                [True, need_wd, need_bd and has_bd],
            )  # fmt: skip
            grad_z = dw[0]
            del z, grad_s
            # h is ours (never returned), so once read it can hold dL/dh
            if grad_z.stride() == h.stride():
                grad_h = torch.ops.aten.gelu_backward.grad_input(
                    grad_z, h, approximate=ctx.approximate, grad_input=h
                )
            else:
                grad_h = torch.ops.aten.gelu_backward(grad_z, h, approximate=ctx.approximate)
            del grad_z
            grad_x, grad_w1, grad_b1 = conv1x1_backward(grad_h, xs, w1, [need_x, need_w1, need_b1 and has_b1])
            if grad_x is not None:
                grad_xs.append(grad_x)
            for i, g in enumerate((grad_w1, grad_b1, dw[1], dw[2], grad_w2, grad_b2)):
                acc = param_grads[i]
                param_grads[i] = g if acc is None or g is None else acc.add_(g)
        grad_x_all = None
        if need_x:
            grad_x_all = grad_xs[0] if len(grad_xs) == 1 else torch.cat(grad_xs)
        return (grad_x_all, *param_grads, None, None)


def cffn_train(x: torch.Tensor, cffn: CFFN, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> torch.Tensor:
    """``CFFN(x)`` (GELU) for training: (B, C, H, W) -> (B, C, H, W), holding one hidden-width tensor for
    backward instead of three, whole images at a time with at most ``chunk_bytes`` of it per chunk (one
    image when one is larger)."""
    approximate = gelu_approximation(cffn.act)
    if approximate is None:
        raise TypeError(f"cffn_train needs a GELU activation, got {type(cffn.act).__name__}")
    return _CFFNFunction.apply(
        x,
        cffn.fc1.weight,
        cffn.fc1.bias,
        cffn.dwconv.weight,
        cffn.dwconv.bias,
        cffn.fc2.weight,
        cffn.fc2.bias,
        approximate,
        images_per_chunk(x, cffn.fc1.out_channels, chunk_bytes),
    )


# torch.compile runs the training Function eagerly, as a graph break (see fused_cpu_path)
_cffn_train_eager = torch.compiler.disable(cffn_train)


def cffn_chunked(x: torch.Tensor, cffn: CFFN, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> torch.Tensor:
    """``CFFN(x)`` (GELU) without autograd: (B, C, H, W) -> (B, C, H, W), whole images at a time with at
    most ``chunk_bytes`` of hidden activation (one image when one is larger), GELU in place and the residual
    folded into the depthwise kernel."""
    approximate = gelu_approximation(cffn.act)
    if approximate is None:
        raise TypeError(f"cffn_chunked needs a GELU activation, got {type(cffn.act).__name__}")

    dwconv = cffn.dwconv
    wd_plus_identity = _with_identity(dwconv.weight)

    def run(xs: torch.Tensor) -> torch.Tensor:
        z = torch.ops.aten.gelu_(cffn.fc1(xs), approximate=approximate)
        return cffn.fc2(_dwconv(z, wd_plus_identity, dwconv.bias))  # DWConv(z) + z

    per_chunk = images_per_chunk(x, cffn.fc1.out_channels, chunk_bytes)
    if per_chunk >= x.shape[0]:
        return run(x)
    return torch.cat([run(xs) for xs in x.split(per_chunk)])


class CFFN(nn.Module):
    """``CFFN(X) = FC(DWConv(z) + z), z = act(FC(X))`` (Eq. 3) on a (B, C, H, W) map.

    The FC layers are 1x1 convolutions, so the same module serves the NCHW stages and, through a
    channels-last view, the token stages (a 1x1 conv on a channels-last map is the per-token matmul).

    Args:
        dim: C, input and output channels.
        hidden_dim: E * C, the expanded width.
        act_layer: activation class (sigma in Eq. 3).
        fused: with GELU, the faster paths of the module docstring, on CPU without autocast, in eager mode
            and under ``torch.compile``. False, another activation or another device runs Eq. 3 as
            written.
        chunk_bytes: hidden-activation bytes each chunk of the faster paths holds.
    """

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        fused: bool = True,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> None:
        super().__init__()
        if chunk_bytes < 1:
            raise ValueError(f"chunk_bytes must be >= 1, got {chunk_bytes}")
        self.fc1 = nn.Conv2d(dim, hidden_dim, 1)
        self.act = act_layer()
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, groups=hidden_dim)
        self.fc2 = nn.Conv2d(hidden_dim, dim, 1)
        self.fused = fused
        self.chunk_bytes = chunk_bytes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        if not torch.jit.is_scripting():
            fusable = self.fused and gelu_approximation(self.act) is not None
            path = fused_cpu_path(x, self) if fusable else None
            if path == "inference":
                return cffn_chunked(x, self, self.chunk_bytes)
            if path == "training":
                return _cffn_train_eager(x, self, self.chunk_bytes)
        z = self.act(self.fc1(x))
        return self.fc2(self.dwconv(z) + z)

    def extra_repr(self) -> str:
        return f"fused={self.fused}, chunk_bytes={self.chunk_bytes}"


class CFFNBlock(nn.Module):
    """Stage-3 block: ``x + DropPath(attn(CFFN(BN(x))))`` on a (B, C, H, W) map.

    Args:
        dim: channels C.
        mlp_ratio: E, the CFFN expansion.
        act_layer: activation class.
        attn_layer: optional attention (name, callable ``channels -> nn.Module`` or None) applied to the
            CFFN branch before the residual add (the composition hook, e.g. a GC block).
        drop_path: stochastic depth rate.
        fused_mlp: the CFFN's faster CPU paths.
    """

    def __init__(
        self,
        dim: int,
        mlp_ratio: float = 4.0,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        attn_layer: AttnLayerSpec = None,
        drop_path: float = 0.0,
        fused_mlp: bool = True,
    ) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(dim)
        self.mlp = CFFN(dim, int(dim * mlp_ratio), act_layer, fused=fused_mlp)
        self.attn_hook: nn.Module = create_attn_layer(attn_layer, dim) or nn.Identity()
        self.drop_path: nn.Module = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        return x + self.drop_path(self.attn_hook(self.mlp(self.norm(x))))
