"""CONTAINER-PAM (Gao et al., "Container: Context Aggregation Networks", NeurIPS 2021, Sec. 4.1).

The paper's demonstration that its unified view improves a plain transformer: DeiT-Small whose every
attention adds a learned static N x N affinity per head after the softmax, ``A = softmax(Q K^T / sqrt(d)) +
A_static`` (alpha = beta = 1 in Eq. 3). The released code does not contain it; this is built on timm's
VisionTransformer with the static part a :class:`~container.aggregation.DenseAffinity`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_function, trunc_normal_
from timm.layers.attention import Attention, maybe_add_mask, resolve_self_attn_mask
from timm.models import VisionTransformer, generate_default_cfgs, register_model

from container._build import build_model
from container.aggregation import DenseAffinity
from ctxnets_shared.models import check_image_input, paper_cfg

__all__ = ["ContainerPam", "PamAttention", "resample_static_affinity"]


def resample_static_affinity(weight: torch.Tensor, grid: int) -> torch.Tensor:
    """A (heads, 1 + g0^2, 1 + g0^2) static affinity over [cls | g0 x g0 patches] for a g x g patch grid.

    The patch-to-patch block is resized bicubically along its query and its key grid (as timm resizes
    position embeddings) and the class token's row and column along the patch grid; key-side resizing is
    scaled by (g0 / g)^2 so each query's total static weight stays what it was trained to be.
    """
    n0 = weight.shape[1]
    g0 = math.isqrt(n0 - 1)
    scale = (g0 / grid) ** 2

    def keys(t: torch.Tensor) -> torch.Tensor:  # (..., g0^2) -> (..., grid^2) along the key grid
        lead = t.shape[:-1]
        t = t.reshape(-1, 1, g0, g0).float()
        t = F.interpolate(t, size=(grid, grid), mode="bicubic", align_corners=False)
        return t.reshape(*lead, grid * grid)

    patches = keys(weight[:, 1:, 1:]) * scale  # (heads, g0^2 queries, grid^2 keys)
    patches = keys(patches.transpose(1, 2)).transpose(1, 2)  # queries too
    cls_row = keys(weight[:, :1, 1:]) * scale
    cls_col = keys(weight[:, 1:, :1].transpose(1, 2)).transpose(1, 2)
    top = torch.cat([weight[:, :1, :1].float(), cls_row], dim=2)
    return torch.cat([top, torch.cat([cls_col, patches], dim=2)], dim=1).to(weight.dtype)


@register_notrace_function  # type: ignore[untyped-decorator]
def static_affinity_for(weight: torch.Tensor, num_tokens: int) -> torch.Tensor:
    if num_tokens == weight.shape[-1]:
        return weight
    grid = math.isqrt(num_tokens - 1)
    if grid * grid != num_tokens - 1:
        raise ValueError(
            f"the static affinity of {weight.shape[-1]} tokens is resized only to square patch grids, got "
            f"{num_tokens} tokens: use a square input or the size the model was built for (img_size)"
        )
    return resample_static_affinity(weight, grid)


# traced as one call: timm's tracer (above) and plain torch.fx.symbolic_trace from any root module
torch.fx.wrap("static_affinity_for")


class PamAttention(Attention):  # type: ignore[misc]
    """timm's multi-head self-attention plus a static affinity per head: ``(softmax(Q K^T / sqrt(d)) +
    A_static) V``, then the output projection.

    Args:
        dim: token width.
        num_tokens: N the static affinity is trained for (1 + patches; other square grids are resampled).
        num_heads: heads.
        static_init_std: std of the static affinity's initialisation (small: training starts near DeiT).
        **kwargs: timm ``Attention`` options (``qkv_bias``, ``attn_drop``, ``proj_drop``, ...).
    """

    def __init__(
        self, dim: int, num_tokens: int, num_heads: int = 8, static_init_std: float = 0.02, **kwargs: Any
    ) -> None:
        super().__init__(dim, num_heads=num_heads, **kwargs)
        self.static = DenseAffinity(num_heads, num_tokens, init_std=static_init_std)

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        """(B, N, dim) -> (B, N, dim). A mask or causal flag applies to the softmax part only."""
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if self.fused_attn:
            p = self.attn_drop.p if self.training else 0.0
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p, is_causal=is_causal)
        else:
            logits = q * self.scale @ k.transpose(-2, -1)
            logits = maybe_add_mask(logits, resolve_self_attn_mask(n, logits, attn_mask, is_causal))
            y = self.attn_drop(logits.softmax(dim=-1)) @ v
        y = (
            y + static_affinity_for(self.static.weight, n) @ v
        )  # beta = 1: the static affinity adds after softmax
        y = y.transpose(1, 2).reshape(b, n, self.attn_dim)
        return self.proj_drop(self.proj(self.norm(y)))


class ContainerPam(VisionTransformer):  # type: ignore[misc]
    """DeiT with :class:`PamAttention` in every block. Takes inputs whose sides are multiples of the patch
    size; square inputs of other sizes than ``img_size`` resample the static affinities.

    Args:
        img_size: the input size the static affinities are tied to (N = 1 + (img_size / patch_size)^2).
        patch_size: patch size.
        static_init_std: std of the static affinities' initialisation.
        **kwargs: timm ``VisionTransformer`` options (``embed_dim``, ``depth``, ``num_heads``, ...).
    """

    def __init__(
        self, img_size: int = 224, patch_size: int = 16, static_init_std: float = 0.02, **kwargs: Any
    ) -> None:
        if "attn_layer" in kwargs or kwargs.get("class_token") is False or kwargs.get("reg_tokens"):
            raise ValueError("container_pam_small fixes attn_layer (PamAttention) and one class token")
        if not isinstance(img_size, int) or img_size % patch_size:
            raise ValueError(f"img_size must be an int multiple of patch_size={patch_size}, got {img_size}")
        kwargs.setdefault("dynamic_img_size", True)
        super().__init__(img_size=img_size, patch_size=patch_size, **kwargs)
        num_tokens = (img_size // patch_size) ** 2 + 1
        self.patch_size = patch_size
        for blk in self.blocks:
            old: Any = blk.attn
            blk.attn = PamAttention(
                old.qkv.in_features,
                num_tokens,
                num_heads=old.num_heads,
                static_init_std=static_init_std,
                qkv_bias=old.qkv.bias is not None,
                attn_drop=old.attn_drop.p,
                proj_drop=old.proj_drop.p,
            )
            for lin in (blk.attn.qkv, blk.attn.proj):  # timm's ViT init for the new projections
                trunc_normal_(lin.weight, std=0.02)
                if lin.bias is not None:
                    nn.init.zeros_(lin.bias)

    def forward_features(self, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:  # type: ignore[override]
        """(B, in_chans, H, W) -> (B, 1 + HW / 256, embed_dim) tokens after the final norm."""
        check_pam_input(x, self.patch_embed.proj.in_channels, self.patch_size)
        return super().forward_features(x, **kwargs)

    def forward_intermediates(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        """timm's ViT ``forward_intermediates`` after the input checks."""
        check_pam_input(x, self.patch_embed.proj.in_channels, self.patch_size)
        return super().forward_intermediates(x, *args, **kwargs)


@register_notrace_function  # type: ignore[untyped-decorator]
def check_pam_input(x: torch.Tensor, in_chans: int, patch_size: int) -> None:
    check_image_input(x, in_chans, patch_size)
    if x.shape[2] % patch_size or x.shape[3] % patch_size:
        raise ValueError(
            f"input {x.shape[2]}x{x.shape[3]}: H and W must be multiples of the patch size {patch_size}"
        )


# traced as one call: timm's tracer (above) and plain torch.fx.symbolic_trace from any root module
torch.fx.wrap("check_pam_input")


default_cfgs = generate_default_cfgs(
    {
        # specs/container.md: DeiT-S 22,050,664 + 12 x 6 x 197 x 197 parameters; DeiT-S's 4.6 GMACs plus the
        # static affinities' 12 x 197^2 x 384 = 0.18 G; top-1 DeiT-S 79.8 + 0.5 (paper)
        "container_pam_small": paper_cfg(
            paper_params=24_844_912,
            paper_gflops=4.78,
            paper_top1=80.3,
            paper_name="Container: Context Aggregation Networks",
            paper_ids="arXiv:2106.01401 (NeurIPS 2021)",
            origin_url="https://github.com/allenai/container",
            first_conv="patch_embed.proj",
            classifier="head",
            pool_size=None,
        )
    }
)


@register_model
def container_pam_small(pretrained: bool = False, **kwargs: Any) -> ContainerPam:
    """CONTAINER-PAM on DeiT-Small (patch 16, dim 384, depth 12, 6 heads)."""
    args: dict[str, Any] = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6, qkv_bias=True)
    return build_model(
        ContainerPam,
        "container_pam_small",
        pretrained,
        feature_cfg=dict(feature_cls="getter", out_indices=(9, 10, 11)),
        **dict(args, **kwargs),
    )
