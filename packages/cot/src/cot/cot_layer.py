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

:meth:`CotLayer.forward` is the equations above, step by step. With ``memory_efficient`` a training
layer keeps only the outputs of its convolutions on x and recomputes the rest in backward
(``torch.utils.checkpoint``); the results are the same.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.fx
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from cot.aggregation import local_aggregate

__all__ = ["ABLATIONS", "CoXtLayer", "CotLayer"]

# torch.fx.symbolic_trace: the aggregation (shape checks, custom operator) is one node of the graph
torch.fx.wrap("local_aggregate")

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
        radix: branches of the fusion; only 2 (the dynamic and the static context).
        reduction_factor: fusion bottleneck is ``max(dim * radix // reduction_factor, 32)``.
        context: "both" (CoT), "static" (K1 only) or "dynamic" (K2 only), Table 5.
        fusion: "attn" (CoT), "sum" (Linear Fusion) or "concat" (Concatenate + 1x1 conv), Table 5.
        attn_input: "qk" (CoT), "k" (Remove Query) or "q" (Remove Key), Table 6.
        qkv_3x3: 3x3 convs for query (groups 4), key and value (groups 2), Table 6 "3x3*".
        dilation: spacing of the taps of every K x K window (static key conv, aggregation, 3x3 convs);
            greater than 1 in the dilated stages of ``output_stride`` 8 or 16.
        memory_efficient: in training, keep only the outputs of the convolutions on x and recompute the
            rest of the layer (norms, activations, attention embedding, aggregation, fusion) in backward
            with ``torch.utils.checkpoint``; same results and BatchNorm statistics, less memory.
        device: where the parameters are created (timm's factory kwargs: ``create_attn(..., device=...)``).
        dtype: the parameters' dtype.
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
        dilation: int = 1,
        memory_efficient: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        dd: dict[str, Any] = {"device": device, "dtype": dtype}
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
        if radix != 2:
            raise ValueError(
                f"radix must be 2: the fusion's split attention weighs the two contexts K1 and K2 "
                f"(got radix={radix})"
            )
        if dilation < 1:
            raise ValueError(f"dilation must be >= 1, got {dilation}")
        self.dim = dim
        self.kernel_size = kernel_size
        self.dilation = dilation
        self.groups = groups
        self.radix = radix
        self.context = context
        self.fusion = fusion
        self.attn_input = attn_input
        self.interleave_qk = groups > 1
        self.memory_efficient = memory_efficient
        kk = key_kernel_size or kernel_size

        self.key_embed = nn.Sequential(
            nn.Conv2d(
                dim,
                dim,
                kk,
                padding=kk // 2 * dilation,
                dilation=dilation,
                groups=key_groups,
                bias=False,
                **dd,
            ),
            nn.BatchNorm2d(dim, **dd),
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
                nn.Conv2d(dim, dim, 3, padding=dilation, dilation=dilation, groups=4, bias=False, **dd),
                nn.BatchNorm2d(dim, **dd),
                nn.ReLU(inplace=True),
            )
        num_maps = dim // share_planes
        embed_in = 2 * dim if attn_input == "qk" else dim
        self.embed = nn.Sequential(
            nn.Conv2d(embed_in, dim // factor, 1, groups=groups, bias=False, **dd),
            nn.BatchNorm2d(dim // factor, **dd),
            nn.ReLU(inplace=True),
            nn.Conv2d(dim // factor, kernel_size * kernel_size * num_maps, 1, groups=groups, **dd),
            # per-map normalisation of its K*K taps: channels j*K*K .. (j+1)*K*K-1 are map j
            nn.GroupNorm(num_maps, kernel_size * kernel_size * num_maps, **dd),
        )
        if qkv_3x3:
            value_conv = nn.Conv2d(
                dim, dim, 3, padding=dilation, dilation=dilation, groups=2, bias=False, **dd
            )
        else:
            value_conv = nn.Conv2d(dim, dim, 1, groups=groups, bias=False, **dd)
        self.conv1x1 = nn.Sequential(value_conv, nn.BatchNorm2d(dim, **dd))
        self.bn = nn.BatchNorm2d(dim, **dd)
        self.act = nn.SiLU(inplace=True)
        if context == "dynamic" or fusion == "sum":
            return
        if fusion == "concat":
            self.fuse = nn.Sequential(nn.Conv2d(2 * dim, dim, 1, bias=False, **dd), nn.BatchNorm2d(dim, **dd))
            return
        attn_chs = max(dim * radix // reduction_factor, 32)
        self.se = nn.Sequential(
            nn.Conv2d(dim, attn_chs, 1, **dd),
            nn.BatchNorm2d(attn_chs, **dd),
            nn.ReLU(inplace=True),
            nn.Conv2d(attn_chs, radix * dim, 1, **dd),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        k = self.key_embed[0](x)  # the keys' K x K conv
        v = x if self.conv1x1 is None else self.conv1x1[0](x)  # the values' conv X W_v
        if not torch.jit.is_scripting():  # noqa: SIM102  (TorchScript skips only this exact form)
            if self._checkpointed(x):
                if torch.compiler.is_compiling():
                    # the compiler recomputes the region inside its backward graph, where the running
                    # statistics (moved by the forward graph) stay put; it accepts no other context_fn
                    return checkpoint(self._contexts, x, k, v, use_reentrant=False)
                return checkpoint(
                    self._contexts, x, k, v, use_reentrant=False, context_fn=self._checkpoint_contexts
                )
        return self._contexts(x, k, v)

    def _contexts(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Eq. 1-3 and the fusion from x and its key and value convolutions, all (B, C, H, W)."""
        k1 = self.key_embed[2](self.key_embed[1](k))  # Eq. 1: static context, K1 = ReLU(BN(conv(X)))
        if self.embed is None:
            return k1  # Static Context ablation
        q = x if self.conv_q is None else self.conv_q(x)  # the query is x itself (Table 6: or a 3x3 conv)
        a = self.embed(self._attention_input(q, k1))  # Eq. 2: A = [K1, Q] W_theta W_delta (+ GroupNorm)
        a = a.unflatten(1, (-1, self.kernel_size * self.kernel_size))  # (B, C / share_planes, K*K, H, W)
        v = self.conv1x1[1](v)  # value V = BN(X W_v)
        k2 = self.act(self.bn(local_aggregate(v, a, self.kernel_size, self.dilation, self.groups)))  # Eq. 3
        return self._fuse(k1, k2)

    def _checkpointed(self, x: torch.Tensor) -> bool:
        # tracers (torch.jit.trace for ONNX, torch.fx, torch.export) record the plain ops
        if torch.jit.is_tracing() or isinstance(x, torch.fx.Proxy) or torch.compiler.is_exporting():
            return False
        return self.memory_efficient and self.training and torch.is_grad_enabled()

    def _checkpoint_contexts(
        self,
    ) -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
        """Forward and recomputation contexts of the checkpoint (called in forward)."""
        return contextlib.nullcontext(), self._recomputing()

    @contextlib.contextmanager
    def _recomputing(self) -> Iterator[None]:
        # the recomputation re-runs the layer's training BatchNorms: their statistics are put back, so they
        # move once per step
        saved = [b.clone() for b in self.buffers()]
        try:
            yield
        finally:
            with torch.no_grad():
                for b, s in zip(self.buffers(), saved):
                    b.copy_(s)

    def _attention_input(self, q: torch.Tensor, k1: torch.Tensor) -> torch.Tensor:
        """[Q, K1] on channels (B, 2C, H, W); CoXt interleaves them channel by channel (q0, k0, q1, ...)."""
        if self.attn_input == "q":
            return q  # Remove Key ablation
        if self.attn_input == "k":
            return k1  # Remove Query ablation
        if self.interleave_qk:
            return torch.stack([q, k1], dim=2).flatten(1, 2)
        return torch.cat([q, k1], dim=1)

    def _fuse(self, k1: torch.Tensor, k2: torch.Tensor) -> torch.Tensor:
        """Fusion of the two contexts (Sec. 3.2; Table 5 ablations): (B, C, H, W)."""
        if self.se is not None:
            # split attention: channel 2c of the logits weighs K2 at channel c, channel 2c + 1 weighs K1
            logits = self.se((k1 + k2).mean((2, 3), keepdim=True))
            a = logits.unflatten(1, (-1, self.radix)).softmax(dim=2)  # (B, C, 2, 1, 1)
            return k2 * a[:, :, 0] + k1 * a[:, :, 1]
        if self.context == "dynamic":
            return k2
        if self.fuse is not None:
            return self.fuse(torch.cat([k2, k1], dim=1))
        return k2 + k1  # Linear Fusion


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
