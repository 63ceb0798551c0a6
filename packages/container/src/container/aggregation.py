"""The unified context-aggregation module (Gao et al., "Container: Context Aggregation Networks",
NeurIPS 2021, Sec. 3).

Every token mixer is ``Y = (A V) W_o`` with an N x N affinity ``A`` over the N = H*W positions, per head
(Eq. 1-2): a Transformer's ``A`` is dynamic (``softmax(Q K^T / sqrt(d))``), a depthwise conv's is static
and banded (one head per channel, built from the kernel), an MLP-Mixer's is static and dense (one head,
tied to N). CONTAINER mixes a dynamic and a static affinity, ``A_m = alpha * A_dyn_m + beta * A_static_m``
(Eq. 3). :class:`ContextAggregation` is that module with each part an option.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_function, use_fused_attn

__all__ = [
    "DYNAMIC_AFFINITIES",
    "MIXES",
    "STATIC_AFFINITIES",
    "ContextAggregation",
    "DenseAffinity",
    "depthwise_affinity",
]

DYNAMIC_AFFINITIES = ("attention", None)
STATIC_AFFINITIES = ("depthwise", "dense", None)
MIXES = ("sigmoid", "free", "sum")


class DenseAffinity(nn.Module):
    """A learned static N x N affinity per head (MLP-Mixer's token mixing; CONTAINER-PAM's static part).

    Args:
        num_heads: heads, each with its own matrix.
        num_tokens: N, the token count the matrices are tied to.
        bias: add a learned per-head, per-output-token bias (as an ``nn.Linear(N, N)`` over tokens has).
        init_std: std of the normal initialisation (small, so the static part starts near zero).
        device: where the parameters are created.
        dtype: the parameters' dtype.
    """

    def __init__(
        self,
        num_heads: int,
        num_tokens: int,
        bias: bool = False,
        init_std: float = 0.02,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        dd: dict[str, Any] = {"device": device, "dtype": dtype}
        super().__init__()
        self.num_heads = num_heads
        self.num_tokens = num_tokens
        self.weight = nn.Parameter(torch.randn(num_heads, num_tokens, num_tokens, **dd) * init_std)
        self.bias = nn.Parameter(torch.zeros(num_heads, num_tokens, **dd)) if bias else None

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        """(B, heads, N, d) values -> (B, heads, N, d): ``A_static V`` (+ bias)."""
        check_num_tokens(v, self.num_tokens)
        out = torch.matmul(self.weight, v)
        if self.bias is not None:
            out = out + self.bias.unsqueeze(-1)
        return out


@register_notrace_function  # type: ignore[untyped-decorator]
def check_num_tokens(v: torch.Tensor, num_tokens: int) -> None:
    if v.shape[-2] != num_tokens:
        raise ValueError(
            f"the dense static affinity is tied to {num_tokens} tokens, got {v.shape[-2]}: build the module "
            f"for this input size (num_tokens = H * W)"
        )


# traced as one call: timm's tracer (above) and plain torch.fx.symbolic_trace from any root module
torch.fx.wrap("check_num_tokens")


def depthwise_affinity(weight: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The static N x N affinity a depthwise conv applies, one per channel (the paper's Sec. 3.2 view).

    Args:
        weight: (C, 1, k, k) depthwise kernel (odd k, zero 'same' padding).
        height: H of the map.
        width: W of the map.

    Returns:
        (C, N, N) with N = H*W: ``A[c, i, j]`` is the kernel tap that carries position j into position i.
    """
    channels, _, k, _ = weight.shape
    n = height * width
    # convolving a one-hot image at every position j gives column j of A
    eye = torch.eye(n, dtype=weight.dtype, device=weight.device).reshape(n, 1, height, width)
    cols = F.conv2d(eye.expand(n, channels, height, width), weight, padding=k // 2, groups=channels)
    return cols.reshape(n, channels, n).permute(1, 2, 0)


class ContextAggregation(nn.Module):
    """``Y = ((alpha * A_dyn + beta * A_static) V) W_o`` on a (B, C, H, W) map, Eq. 3 of the paper.

    ``V`` (and ``Q``, ``K`` when there is a dynamic part) come from one 1x1 conv ``in_proj``
    (C -> 3C as ``[q | k | v]``, or C -> C for V alone); heads take contiguous ``head_dim`` channel blocks.
    As in the released code, the mix acts on the two branches' outputs, ``alpha * (A_dyn V) + beta *
    (A_static V)``, which equals the mixed affinity applied to V; the depthwise static part keeps its
    conv bias.

    Args:
        dim: channels C.
        num_heads: heads of the dynamic and the dense static part (C must divide by it).
        dynamic: "attention" (softmax(Q K^T / sqrt(d))) or None.
        static: "depthwise" (a ``kernel_size`` depthwise conv: one head per channel), "dense" (a learned
            N x N per head, needs ``num_tokens``) or None.
        mix: with both parts, "sigmoid" (the released code: alpha = sigmoid(w), beta = 1 - alpha, one
            scalar w initialised to 0), "free" (the paper's learnable alpha and beta, both starting at 0.5,
            the released model's starting point) or "sum" (alpha = beta = 1, fixed: CONTAINER-PAM).
        kernel_size: depthwise kernel (odd).
        num_tokens: N = H*W for a dense static part.
        dense_bias: a per-token bias on the dense static part (as an ``nn.Linear`` over tokens).
        qkv_bias: bias of ``in_proj``.
        attn_drop: dropout on the dynamic affinity.
        fused_attn: compute the dynamic branch with ``F.scaled_dot_product_attention`` (same result,
            the N x N map is never stored); None follows timm's ``use_fused_attn()``.
        device: where the parameters are created (timm's factory kwargs: ``create_attn(..., device=...)``).
        dtype: the parameters' dtype.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 1,
        dynamic: str | None = "attention",
        static: str | None = "depthwise",
        mix: str = "sigmoid",
        kernel_size: int = 5,
        num_tokens: int | None = None,
        dense_bias: bool = False,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        fused_attn: bool | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        dd: dict[str, Any] = {"device": device, "dtype": dtype}
        super().__init__()
        if dynamic not in DYNAMIC_AFFINITIES:
            raise ValueError(f"dynamic must be one of {DYNAMIC_AFFINITIES}, got {dynamic!r}")
        if static not in STATIC_AFFINITIES:
            raise ValueError(f"static must be one of {STATIC_AFFINITIES}, got {static!r}")
        if mix not in MIXES:
            raise ValueError(f"mix must be one of {MIXES}, got {mix!r}")
        if dynamic is None and static is None:
            raise ValueError("a context aggregation needs a dynamic or a static affinity (both are None)")
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads} (>= 1)")
        if static == "depthwise" and kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd for a 'same' depthwise conv, got {kernel_size}")
        if static == "dense" and (num_tokens is None or num_tokens < 1):
            raise ValueError("static='dense' ties the affinity to the token count: pass num_tokens = H * W")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.dynamic = dynamic
        self.static_kind = static
        self.mix = mix if (dynamic is not None and static is not None) else None
        self.fused_attn = use_fused_attn() if fused_attn is None else fused_attn

        self.in_proj = nn.Conv2d(dim, 3 * dim if dynamic else dim, 1, bias=qkv_bias, **dd)
        self.static: nn.Module | None = None
        if static == "depthwise":
            self.static = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, **dd)
        elif static == "dense":
            assert num_tokens is not None
            self.static = DenseAffinity(num_heads, num_tokens, bias=dense_bias, **dd)
        if self.mix == "sigmoid":
            self.mix_logit = nn.Parameter(torch.zeros(1, **dd))
        elif self.mix == "free":
            self.alpha = nn.Parameter(torch.full((1,), 0.5, **dd))
            self.beta = nn.Parameter(torch.full((1,), 0.5, **dd))
        self.attn_drop = nn.Dropout(attn_drop)
        self.out_proj = nn.Conv2d(dim, dim, 1, **dd)

    def mix_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha, beta), each of shape (1,); only for a module with both parts."""
        if self.mix == "sigmoid":
            alpha = torch.sigmoid(self.mix_logit)
            return alpha, 1.0 - alpha
        if self.mix == "free":
            return self.alpha, self.beta
        one = self.out_proj.weight.new_ones(1)
        return one, one

    def dynamic_affinity(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """(B, heads, N, d) queries and keys -> (B, heads, N, N) ``softmax(Q K^T / sqrt(d))``, Eq. 2."""
        return (q @ k.transpose(-2, -1) * self.scale).softmax(dim=-1)

    def _dynamic(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.fused_attn:
            p = self.attn_drop.p if self.training else 0.0
            return F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        return self.attn_drop(self.dynamic_affinity(q, k)) @ v

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        # (B, heads * d, H, W) -> (B, heads, N, d); plain reshapes keep the module FX-traceable
        b, c, h, w = t.shape
        return t.reshape(b, self.num_heads, c // self.num_heads, h * w).transpose(-2, -1)

    @staticmethod
    def _map(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        # (B, heads, N, d) -> (B, heads * d, H, W) with like's H, W
        b, c, h, w = like.shape
        return t.transpose(-2, -1).reshape(b, c, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W) aggregated context (before the block's residual add)."""
        qkv = self.in_proj(x)
        v = qkv[:, 2 * self.dim :] if self.dynamic else qkv
        y_dyn = y_static = None
        if self.dynamic is not None:
            q, k, _ = qkv.chunk(3, dim=1)
            y_dyn = self._map(self._dynamic(self._heads(q), self._heads(k), self._heads(v)), x)
        if self.static_kind == "depthwise":
            assert self.static is not None
            y_static = self.static(v)
        elif self.static_kind == "dense":
            assert self.static is not None
            y_static = self._map(self.static(self._heads(v)), x)
        if y_dyn is None:
            assert y_static is not None
            y = y_static
        elif y_static is None:
            y = y_dyn
        else:
            alpha, beta = self.mix_weights()
            y = alpha * y_dyn + beta * y_static
        return self.out_proj(y)

    def extra_repr(self) -> str:
        parts = (self.dim, self.num_heads, self.dynamic, self.static_kind, self.mix)
        return "dim={}, heads={}, dynamic={}, static={}, mix={}".format(*parts)
