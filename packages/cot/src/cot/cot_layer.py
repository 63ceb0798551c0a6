"""The Contextual Transformer (CoT) layer and its CoTNeXt variant (Li et al., TPAMI, Sec. 3.2, Fig. 2).

A CoT layer replaces a 3x3 convolution (C -> C channels, stride 1):

1. static context  ``K1 = ReLU(BN(conv3x3_g4(X)))`` (contextualised keys, Eq. 1);
2. attention       ``A = GN(conv1x1(ReLU(BN(conv1x1([X, K1])))))``, K*K weights per pixel for each of
   ``C / share_planes`` maps (Eq. 2; the GroupNorm is the only normalisation, no softmax);
3. value           ``V = BN(conv1x1(X))``;
4. dynamic context ``K2 = SiLU(BN(aggregate(V, A)))`` (Eq. 3, local K x K aggregation, strided sharing);
5. fusion          radix-2 split attention over ``K1 + K2`` chooses per channel between them.

This follows the official implementation, which the released checkpoints were trained with, including
its attribute names (``key_embed``, ``embed``, ``conv1x1``, ``bn``, ``se``). The ablations of the paper's
Tables 5 and 6 are constructor options; :data:`ABLATIONS` names them.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from torch.autograd.function import once_differentiable

from cot.aggregation import normed_local_aggregate

__all__ = ["ABLATIONS", "CoXtLayer", "CotLayer"]

_CONTEXTS = ("both", "static", "dynamic")
_FUSIONS = ("attn", "sum", "concat")
_ATTN_INPUTS = ("qk", "q", "k")

#: The paper's ablation variants of CoTNet-50 (Tables 5 and 6) as CotLayer kwargs.
ABLATIONS: dict[str, dict[str, Any]] = {
    "static_only": dict(context="static"),
    "dynamic_only": dict(context="dynamic"),
    "linear_fusion": dict(fusion="sum"),
    "concatenate": dict(fusion="concat"),
    "key_kernel_1": dict(key_kernel_size=1),
    "key_kernel_3": dict(),
    "key_kernel_5": dict(kernel_size=5),
    "qkv_3x3": dict(qkv_3x3=True),
    "remove_query": dict(attn_input="k"),
    "remove_key": dict(attn_input="q"),
}


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


def _bn_recompute(
    x: torch.Tensor,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
) -> torch.Tensor:
    # a training-mode BN recomputed for backward: the same batch statistics; the running statistics it
    # updates are throw-away copies, so the module's move once, and the same tensors are saved as before
    return F.batch_norm(x, running_mean.clone(), running_var.clone(), weight, bias, True, 0.1, eps)


def _silu_fusion(
    u: torch.Tensor, s: torch.Tensor, k: torch.Tensor, a0: torch.Tensor, a1: torch.Tensor
) -> torch.Tensor:
    """Radix-2 fusion ``SiLU(u) * a0 + k * a1`` given ``s = SiLU(u)``: (B, C, H, W)."""
    if not torch.jit.is_scripting():  # noqa: SIM102  (TorchScript skips only this exact form)
        if not torch.jit.is_tracing() and not torch.compiler.is_compiling():
            if torch.is_grad_enabled():
                return _SiluFusion.apply(u, s.detach(), k, a0, a1)
            return s.mul_(a0).addcmul_(k, a1)  # inference: s is not needed afterwards
    return s * a0 + k * a1


class CotLayer(nn.Module):
    """Contextual Transformer layer: (B, C, H, W) -> (B, C, H, W).

    Args:
        dim: channels C; divisible by ``share_planes * groups`` and by ``key_groups``.
        kernel_size: local aggregation window K (and the key's kernel unless ``key_kernel_size`` is set).
        key_kernel_size: kernel of the static-key conv (Table 6 "kernel size": 1 keeps a 3x3 window).
        key_groups: groups of the static-key conv (4 for CoT, 8 for CoXt).
        groups: groups of the attention and value 1x1 convs; the aggregation runs per group (CoXt: 2).
        share_planes: value channels sharing one attention map (there are C / share_planes maps).
        factor: the attention embedding's reduction, 2C -> C / factor.
        radix: branches of the fusion (2: dynamic and static context).
        reduction_factor: fusion bottleneck is ``max(dim * radix // reduction_factor, 32)``.
        context: "both" (CoT), "static" (K1 only) or "dynamic" (K2 only), Table 5.
        fusion: "attn" (CoT), "sum" (Linear Fusion) or "concat" (Concatenate + 1x1 conv), Table 5.
        attn_input: "qk" (CoT), "k" (Remove Query) or "q" (Remove Key), Table 6.
        qkv_3x3: 3x3 convs for query (groups 4), key and value (groups 2), Table 6 "3x3*".
        memory_efficient: in training keep only the outputs of the convolutions on x and recompute the
            rest of the layer (element-wise work and two small 1x1 convs) in backward; same results,
            less memory.
    """

    def __init__(
        self,
        dim: int,
        kernel_size: int = 3,
        *,
        key_kernel_size: int | None = None,
        key_groups: int = 4,
        groups: int = 1,
        share_planes: int = 8,
        factor: int = 2,
        radix: int = 2,
        reduction_factor: int = 4,
        context: str = "both",
        fusion: str = "attn",
        attn_input: str = "qk",
        qkv_3x3: bool = False,
        memory_efficient: bool = True,
    ) -> None:
        super().__init__()
        if context not in _CONTEXTS or fusion not in _FUSIONS or attn_input not in _ATTN_INPUTS:
            raise ValueError(
                f"context must be one of {_CONTEXTS}, fusion one of {_FUSIONS}, attn_input one of "
                f"{_ATTN_INPUTS}; got {context!r}, {fusion!r}, {attn_input!r}"
            )
        if dim % (share_planes * groups) or dim % key_groups or kernel_size % 2 == 0:
            raise ValueError(
                f"dim={dim} must be divisible by share_planes*groups={share_planes * groups} and "
                f"key_groups={key_groups}, and kernel_size={kernel_size} must be odd"
            )
        self.dim = dim
        self.kernel_size = kernel_size
        self.groups = groups
        self.radix = radix
        self.context = context
        self.fusion = fusion
        self.attn_input = attn_input
        self.interleave_qk = groups > 1
        self.memory_efficient = memory_efficient
        kk = key_kernel_size or kernel_size

        self.key_embed = nn.Sequential(
            nn.Conv2d(dim, dim, kk, padding=kk // 2, groups=key_groups, bias=False),
            nn.BatchNorm2d(dim),
            nn.ReLU(inplace=True),
        )
        # optional parts are None when an ablation drops them (typed Any: TorchScript resolves a None
        # attribute statically, and only calls or indexes submodules through ``self``)
        self.conv_q: Any = None
        self.embed: Any = None
        self.conv1x1: Any = None
        self.bn: Any = None
        self.act: Any = None
        self.se: Any = None
        self.fuse: Any = None
        if context == "static":
            return

        if qkv_3x3:
            self.conv_q = nn.Sequential(
                nn.Conv2d(dim, dim, 3, padding=1, groups=4, bias=False),
                nn.BatchNorm2d(dim),
                nn.ReLU(inplace=True),
            )
        num_maps = dim // share_planes
        embed_in = 2 * dim if attn_input == "qk" else dim
        self.embed = nn.Sequential(
            nn.Conv2d(embed_in, dim // factor, 1, groups=groups, bias=False),
            nn.BatchNorm2d(dim // factor),
            nn.ReLU(inplace=True),
            nn.Conv2d(dim // factor, kernel_size * kernel_size * num_maps, 1, groups=groups),
            # per-map normalisation of its K*K taps: channels j*K*K .. (j+1)*K*K-1 are map j
            nn.GroupNorm(num_maps, kernel_size * kernel_size * num_maps),
        )
        if qkv_3x3:
            value_conv = nn.Conv2d(dim, dim, 3, padding=1, groups=2, bias=False)
        else:
            value_conv = nn.Conv2d(dim, dim, 1, groups=groups, bias=False)
        self.conv1x1 = nn.Sequential(value_conv, nn.BatchNorm2d(dim))
        self.bn = nn.BatchNorm2d(dim)
        self.act = nn.SiLU(inplace=True)
        if context == "dynamic" or fusion == "sum":
            return
        if fusion == "concat":
            self.fuse = nn.Sequential(nn.Conv2d(2 * dim, dim, 1, bias=False), nn.BatchNorm2d(dim))
            return
        attn_chs = max(dim * radix // reduction_factor, 32)
        self.se = nn.Sequential(
            nn.Conv2d(dim, attn_chs, 1),
            nn.BatchNorm2d(attn_chs),
            nn.ReLU(inplace=True),
            nn.Conv2d(attn_chs, radix * dim, 1),
        )

    def _query_embed(self, x: torch.Tensor) -> torch.Tensor | None:
        """The query's half of the attention embedding's first conv, (B, C / factor, H, W), or None.

        conv([q, k]) is computed as conv(q) + conv(k) on the split weight: the same result without the
        2C-channel concatenation. CoXt interleaves q and k channel by channel.
        """
        if self.attn_input == "k":
            return None
        q = x
        if self.conv_q is not None:
            q = self.conv_q(x)
        weight = self.embed[0].weight
        if self.attn_input == "q":
            return F.conv2d(q, weight, groups=self.groups)
        wq = weight[:, 0::2] if self.interleave_qk else weight[:, : self.dim]
        return F.conv2d(q, wq, groups=self.groups)

    def _attention_logits(self, hq: torch.Tensor | None, k: torch.Tensor, update_stats: bool) -> torch.Tensor:
        """The attention embedding up to (not including) its GroupNorm: (B, K*K*M, H, W)."""
        weight = self.embed[0].weight
        if hq is None:
            h = F.conv2d(k, weight, groups=self.groups)
        elif self.attn_input == "q":
            h = hq
        else:
            wk = weight[:, 1::2] if self.interleave_qk else weight[:, self.dim :]
            h = hq + F.conv2d(k, wk, groups=self.groups)
        bn = self.embed[1]
        if update_stats or not self.training:
            h = bn(h)
        else:
            h = _bn_recompute(h, bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps)
        return self.embed[3](self.embed[2](h))

    def _context(
        self, k_pre: torch.Tensor, z: torch.Tensor, hq: torch.Tensor | None, update_stats: bool = True
    ) -> torch.Tensor:
        """Everything after the three convolutions on x: (B, C, H, W).

        Args:
            k_pre: the static key conv's output (before its BN).
            z: the value conv's output (before its BN).
            hq: :meth:`_query_embed` of x.
            update_stats: False when recomputing in backward (BN running statistics move once).
        """
        B, C, H, W = k_pre.shape
        g = self.groups
        # a recomputation pass must not move the BN running statistics a second time
        update_stats = update_stats or not self.training
        bn = self.key_embed[1]
        if update_stats:
            k = bn(k_pre)
        else:  # (mypy types a Sequential's items as plain Modules)
            k = _bn_recompute(k_pre, bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps)  # type: ignore[arg-type]
        k = self.key_embed[2](k)
        logits = self._attention_logits(hq, k, update_stats)
        bn = self.conv1x1[1]
        if update_stats:
            value = bn(z)
        else:
            value = _bn_recompute(z, bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps)
        v = normed_local_aggregate(
            value.view(B * g, C // g, H, W),
            logits,
            self.embed[4].weight,
            self.embed[4].bias,
            self.embed[4].num_groups,
            self.embed[4].eps,
            self.kernel_size,
            g,
        )
        v = v.view(B, C, H, W)
        if update_stats:
            u = self.bn(v)
        else:
            u = _bn_recompute(
                v, self.bn.running_mean, self.bn.running_var, self.bn.weight, self.bn.bias, self.bn.eps
            )
        if self.se is not None:
            s = F.silu(u)
            gap = s.mean((2, 3), keepdim=True) + k.mean((2, 3), keepdim=True)
            a = self.se[0](gap)
            bn = self.se[1]
            if update_stats:
                a = bn(a)
            else:
                a = _bn_recompute(a, bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps)
            a = self.se[3](self.se[2](a))
            # channel 2c of the fusion logits weighs K2 at channel c, channel 2c + 1 weighs K1
            a = a.view(B, C, self.radix).softmax(dim=2)
            return _silu_fusion(u, s, k, a[:, :, 0].view(B, C, 1, 1), a[:, :, 1].view(B, C, 1, 1))
        v = self.act(u)
        if self.context == "dynamic":
            return v
        if self.fuse is not None:
            return self.fuse(torch.cat([v, k], dim=1))
        return v + k  # Linear Fusion

    @torch.jit.unused
    def _checkpointed(self, k_pre: torch.Tensor, z: torch.Tensor, hq: torch.Tensor | None) -> torch.Tensor:
        # Only the convolutions' outputs on x are kept; the key's BN/ReLU, the attention embedding after
        # its query half (one 1x1 conv on k, BN, ReLU, the logits conv), the GroupNorm, the aggregation
        # and the fusion are recomputed in backward: element-wise work and two small 1x1 convs, in
        # exchange for five activations fewer per layer (K1, the embedding's BN input and output, the
        # logits and the aggregate).
        calls = [0]

        def run(k_pre: torch.Tensor, z: torch.Tensor, hq: torch.Tensor | None) -> torch.Tensor:
            calls[0] += 1
            return self._context(k_pre, z, hq, update_stats=calls[0] == 1)

        return torch.utils.checkpoint.checkpoint(run, k_pre, z, hq, use_reentrant=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        k_pre = self.key_embed[0](x)
        if self.embed is None:
            return self.key_embed[2](self.key_embed[1](k_pre))  # Static Context ablation
        z = self.conv1x1[0](x)
        hq = self._query_embed(x)
        if not torch.jit.is_scripting():  # noqa: SIM102  (TorchScript skips only this exact form)
            if (
                self.memory_efficient
                and self.training
                and torch.is_grad_enabled()
                and not torch.jit.is_tracing()
            ):
                if torch.compiler.is_compiling():
                    # the compiler recomputes the region inside its backward graph, where the running
                    # statistics (updated once, after the forward graph) cannot move twice
                    return torch.utils.checkpoint.checkpoint(self._context, k_pre, z, hq, use_reentrant=False)
                return self._checkpointed(k_pre, z, hq)
        return self._context(k_pre, z, hq)


class CoXtLayer(CotLayer):
    """CoTNeXt's layer: CoT with a groups-8 key conv, groups-2 attention/value convs and q/k interleaved.

    Args:
        dim: channels C, divisible by 16.
        kernel_size: local aggregation window K.
        **kwargs: any :class:`CotLayer` option (ablations).
    """

    def __init__(self, dim: int, kernel_size: int = 3, **kwargs: Any) -> None:
        kwargs.setdefault("key_groups", 8)
        kwargs.setdefault("groups", 2)
        super().__init__(dim, kernel_size, **kwargs)
