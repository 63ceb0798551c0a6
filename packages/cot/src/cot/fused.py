"""The CoT layer's fused path: :meth:`cot.cot_layer.CotLayer.forward` with fewer activations kept.

Same results as the layer's step-by-step forward (Li et al., CoTNet, TPAMI, Eq. 1-3 and the fusion),
computed so that training keeps less for backward and runs fewer kernels:

- ``conv1x1([Q, K1])`` of Eq. 2 is ``conv1x1_q(Q) + conv1x1_k(K1)`` on the split weight, without the
  2C-channel concatenation;
- the attention's GroupNorm runs inside the aggregation operator, which keeps only its logits
  (:func:`cot.aggregation.normed_local_aggregate`);
- the fusion ``SiLU(u) * a0 + K1 * a1`` keeps ``u`` instead of ``SiLU(u)``;
- with ``memory_efficient`` only the outputs of the convolutions on x are kept in training: the key's
  BN/ReLU, the attention embedding after its query half, the aggregation and the fusion are recomputed
  in backward (element-wise work and two small 1x1 convs for five activations fewer per layer).

The recomputation re-runs every BatchNorm of that tail. A training-mode ``nn.BatchNorm2d`` re-runs on
copies of its running statistics (they move once); a norm that does not change state (eval mode, frozen,
``track_running_stats=False``) is simply called again. A layer with any other norm, e.g. a training
SyncBatchNorm whose second call would synchronise again, keeps every activation instead.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from torch.autograd.function import once_differentiable

from cot.aggregation import normed_local_aggregate

if TYPE_CHECKING:
    from cot.cot_layer import CotLayer

__all__ = ["fused_forward"]

Norm = Callable[[nn.Module, torch.Tensor], torch.Tensor]


class _SiluFusion(torch.autograd.Function):
    """``s * a0 + k * a1`` with ``s = SiLU(u)`` given, keeping ``u`` rather than ``s`` for backward (one
    activation fewer: ``u`` is kept anyway for the SiLU in the fusion's pooled input)."""

    @staticmethod
    def forward(
        ctx: Any, u: torch.Tensor, s: torch.Tensor, k: torch.Tensor, a0: torch.Tensor, a1: torch.Tensor
    ) -> torch.Tensor:
        ctx.save_for_backward(u, k, a0, a1)
        return torch.mul(s, a0).addcmul_(k, a1)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        u, k, a0, a1 = ctx.saved_tensors
        need = ctx.needs_input_grad
        grad_u = grad_k = grad_a0 = grad_a1 = None
        if need[0]:
            grad_u = torch.ops.aten.silu_backward(g * a0, u).to(u.dtype)
        if need[2]:
            grad_k = (g * a1).to(k.dtype)
        # per-(batch, channel) dot products over H*W (vecdot reads each operand once, no product tensor)
        gf = g.flatten(2)
        if need[3]:
            grad_a0 = torch.linalg.vecdot(gf, F.silu(u).to(g.dtype).flatten(2)).view(a0.shape).to(a0.dtype)
        if need[4]:
            grad_a1 = torch.linalg.vecdot(gf, k.to(g.dtype).flatten(2)).view(a1.shape).to(a1.dtype)
        return grad_u, None, grad_k, grad_a0, grad_a1


def _silu_fusion(
    u: torch.Tensor, s: torch.Tensor, k: torch.Tensor, a0: torch.Tensor, a1: torch.Tensor
) -> torch.Tensor:
    """Radix-2 fusion ``SiLU(u) * a0 + k * a1`` given ``s = SiLU(u)``: (B, C, H, W)."""
    if torch.compiler.is_compiling():
        return s * a0 + k * a1
    if torch.is_grad_enabled():
        return _SiluFusion.apply(u, s.detach(), k, a0, a1)
    return s.mul_(a0).addcmul_(k, a1)  # inference: s is not needed afterwards


def _call(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return norm(x)


def _call_again(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)`` once more, in backward, with the same result and no change of state."""
    if type(norm) is nn.BatchNorm2d and norm.training and norm.track_running_stats:
        # the same batch statistics; the running statistics it moves are throw-away copies
        assert norm.running_mean is not None and norm.running_var is not None
        return F.batch_norm(
            x,
            norm.running_mean.clone(),
            norm.running_var.clone(),
            norm.weight,
            norm.bias,
            True,
            0.0,
            norm.eps,
        )
    return norm(x)


def _rerunnable(norm: nn.Module) -> bool:
    """Whether :func:`_call_again` reproduces ``norm``'s forward without side effects."""
    if type(norm) is nn.BatchNorm2d:
        return True
    if isinstance(norm, (nn.BatchNorm2d, nn.SyncBatchNorm)):
        return not norm.training  # eval mode: a pure function of x (a training SyncBatchNorm synchronises)
    # torchvision's / detectron2's FrozenBatchNorm2d (timm.utils.model.freeze_batch_norm_2d): stateless
    return type(norm).__name__ == "FrozenBatchNorm2d"


def _tail_norms(layer: CotLayer) -> list[nn.Module]:
    norms = [layer.key_embed[1], layer.embed[1], layer.conv1x1[1], layer.bn]
    if layer.se is not None:
        norms.append(layer.se[1])
    if layer.fuse is not None:
        norms.append(layer.fuse[1])
    return norms


def _query_embed(layer: CotLayer, x: torch.Tensor) -> torch.Tensor | None:
    """The query's half of the attention embedding's first conv, (B, C / factor, H, W), or None."""
    if layer.attn_input == "k":
        return None
    q = x if layer.conv_q is None else layer.conv_q(x)
    weight = layer.embed[0].weight
    if layer.attn_input == "q":
        return F.conv2d(q, weight, groups=layer.groups)
    wq = weight[:, 0::2] if layer.interleave_qk else weight[:, : layer.dim]
    return F.conv2d(q, wq, groups=layer.groups)


def _tail(
    layer: CotLayer, k_pre: torch.Tensor, z: torch.Tensor, hq: torch.Tensor | None, norm: Norm = _call
) -> torch.Tensor:
    """Everything after the three convolutions on x: (B, C, H, W).

    Args:
        layer: the CoT layer.
        k_pre: the static key conv's output (before its BN).
        z: the value conv's output (before its BN).
        hq: :func:`_query_embed` of x.
        norm: how to run a norm module (:func:`_call_again` when recomputing in backward).
    """
    B, C, H, W = k_pre.shape
    g = layer.groups
    k = layer.key_embed[2](norm(layer.key_embed[1], k_pre))  # K1
    weight = layer.embed[0].weight
    if hq is None:
        h = F.conv2d(k, weight, groups=g)
    elif layer.attn_input == "q":
        h = hq
    else:
        wk = weight[:, 1::2] if layer.interleave_qk else weight[:, layer.dim :]
        h = hq + F.conv2d(k, wk, groups=g)
    logits = layer.embed[3](layer.embed[2](norm(layer.embed[1], h)))
    value = norm(layer.conv1x1[1], z)
    gn = layer.embed[4]
    v = normed_local_aggregate(
        value.view(B * g, C // g, H, W),
        logits,
        gn.weight,
        gn.bias,
        gn.num_groups,
        gn.eps,
        layer.kernel_size,
        g,
        layer.dilation,
    ).view(B, C, H, W)
    u = norm(layer.bn, v)
    if layer.se is not None:
        s = F.silu(u)
        gap = s.mean((2, 3), keepdim=True) + k.mean((2, 3), keepdim=True)
        a = layer.se[3](layer.se[2](norm(layer.se[1], layer.se[0](gap))))
        a = a.view(B, C, layer.radix).softmax(dim=2)
        return _silu_fusion(u, s, k, a[:, :, 0].view(B, C, 1, 1), a[:, :, 1].view(B, C, 1, 1))
    v = layer.act(u)
    if layer.context == "dynamic":
        return v
    if layer.fuse is not None:
        return norm(layer.fuse[1], layer.fuse[0](torch.cat([v, k], dim=1)))
    return v + k


def _recomputed(
    layer: CotLayer, k_pre: torch.Tensor, z: torch.Tensor, hq: torch.Tensor | None
) -> torch.Tensor:
    calls = [0]

    def run(k_pre: torch.Tensor, z: torch.Tensor, hq: torch.Tensor | None) -> torch.Tensor:
        calls[0] += 1
        return _tail(layer, k_pre, z, hq, _call if calls[0] == 1 else _call_again)

    return torch.utils.checkpoint.checkpoint(run, k_pre, z, hq, use_reentrant=False)


def fused_forward(layer: CotLayer, x: torch.Tensor) -> torch.Tensor:
    """:meth:`CotLayer.forward`, fused and (``memory_efficient``, training) recomputing: (B, C, H, W)."""
    k_pre = layer.key_embed[0](x)
    if layer.embed is None:
        return layer.key_embed[2](layer.key_embed[1](k_pre))  # Static Context ablation
    z = layer.conv1x1[0](x)
    hq = _query_embed(layer, x)
    recompute = (
        layer.memory_efficient
        and layer.training
        and torch.is_grad_enabled()
        and all(_rerunnable(n) for n in _tail_norms(layer))
    )
    if not recompute:
        return _tail(layer, k_pre, z, hq)
    if torch.compiler.is_compiling():
        # the compiler recomputes the region inside its backward graph, where the running statistics
        # (updated once, after the forward graph) cannot move twice
        return torch.utils.checkpoint.checkpoint(
            functools.partial(_tail, layer), k_pre, z, hq, use_reentrant=False
        )
    return _recomputed(layer, k_pre, z, hq)
