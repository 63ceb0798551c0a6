"""CONTAINER and CONTAINER-LIGHT backbones (Gao et al., "Container: Context Aggregation Networks",
NeurIPS 2021, Sec. 4; released code: https://github.com/allenai/container).

Four stages, each a non-overlapping patch embedding (conv with kernel = stride, then LayerNorm over
channels) and blocks of ``x + dwconv3x3(x)``, ``x + mixer(BN(x))``, ``x + MLP(BN(x))``. The mixer is a
:class:`~container.aggregation.ContextAggregation`: CONTAINER-LIGHT (the released model) uses a static
5x5 depthwise affinity in stages 1-3 and the sigmoid-mixed dynamic + static affinity in stage 4;
CONTAINER (a reconstruction: the authors did not release it) mixes both in every stage.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import (
    ConvMlp,
    DropPath,
    LayerNorm2d,
    create_classifier,
    register_notrace_function,
    trunc_normal_,
)
from timm.models import checkpoint_seq, generate_default_cfgs, register_model

from container.aggregation import ContextAggregation
from container.convert import ContainerConverter
from ctxnets_shared.layers import AttnLayerSpec, create_attn_layer, reset_attn_layers
from ctxnets_shared.models import check_image_input, feature_take_indices, paper_cfg

__all__ = ["STAGE_MIXERS", "Container", "ContainerBlock", "ContainerStage", "PatchEmbed"]

# stage mixer -> (dynamic affinity, static affinity) of its ContextAggregation
STAGE_MIXERS: dict[str, tuple[str | None, str | None]] = {
    "static": (None, "depthwise"),
    "mixed": ("attention", "depthwise"),
    "dynamic": ("attention", None),
}
# stage-1 tokens above which global attention is warned about (a 512 x 512 input has 128 * 128)
GLOBAL_ATTENTION_WARN_TOKENS = 128 * 128


class PatchEmbed(nn.Module):
    """Non-overlapping patch embedding: conv with kernel = stride = ``patch_size``, LayerNorm over channels.

    (B, in_chs, H, W) -> (B, dim, H / patch_size, W / patch_size).
    """

    def __init__(self, in_chs: int, dim: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chs, dim, patch_size, stride=patch_size)
        self.norm = LayerNorm2d(dim, eps=1e-5)  # the official nn.LayerNorm default

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))


class ContainerBlock(nn.Module):
    """``x + dwconv3x3(x)``, then ``x + DropPath(mixer(BN(x)))``, then ``x + DropPath(attn(MLP(BN(x))))``.

    Args:
        dim: channels.
        mlp_ratio: hidden width of the 1x1-conv MLP over ``dim``.
        mixer: "static" (5x5 depthwise affinity), "mixed" (attention + depthwise, sigmoid mix) or
            "dynamic" (attention only).
        num_heads: attention heads.
        mix: how a mixed block combines its affinities ("sigmoid", "free", "sum").
        kernel_size: depthwise kernel of the static affinity.
        drop_path: stochastic depth rate of both residual branches.
        attn_layer: optional channel attention on the MLP branch's output (the composition hook).
        fused_attn: attention through ``F.scaled_dot_product_attention`` (None: timm's default).
        device: where the parameters are created (timm's factory kwargs).
        dtype: the parameters' dtype.
    """

    def __init__(
        self,
        dim: int,
        mlp_ratio: float,
        mixer: str = "static",
        num_heads: int = 1,
        mix: str = "sigmoid",
        kernel_size: int = 5,
        drop_path: float = 0.0,
        attn_layer: AttnLayerSpec = None,
        fused_attn: bool | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        dd: dict[str, Any] = {"device": device, "dtype": dtype}
        super().__init__()
        dynamic, static = STAGE_MIXERS[mixer]
        self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, **dd)
        self.norm1 = nn.BatchNorm2d(dim, **dd)
        self.mixer = ContextAggregation(
            dim,
            num_heads,
            dynamic=dynamic,
            static=static,
            mix=mix,
            kernel_size=kernel_size,
            fused_attn=fused_attn,
            **dd,
        )
        self.norm2 = nn.BatchNorm2d(dim, **dd)
        # timm's 1x1-conv MLP: the released code's CMlp keys (fc1, fc2), no parameters of its own
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, **dd)
        self.attn: nn.Module = create_attn_layer(attn_layer, dim, **dd) or nn.Identity()
        self.drop_path: nn.Module = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, dim, H, W) -> (B, dim, H, W)."""
        x = x + self.pos_embed(x)
        x = x + self.drop_path(self.mixer(self.norm1(x)))
        return x + self.drop_path(self.attn(self.mlp(self.norm2(x))))


class ContainerStage(nn.Module):
    """A patch embedding followed by ``depth`` :class:`ContainerBlock` s."""

    def __init__(self, in_chs: int, dim: int, patch_size: int, depth: int, **block_kwargs: Any) -> None:
        super().__init__()
        drop_paths = block_kwargs.pop("drop_path", [0.0] * depth)
        self.patch_embed = PatchEmbed(in_chs, dim, patch_size)
        self.blocks = nn.Sequential(*[ContainerBlock(dim, drop_path=dp, **block_kwargs) for dp in drop_paths])
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


@register_notrace_function  # type: ignore[untyped-decorator]
def check_container_input(x: torch.Tensor, in_chans: int, warn_tokens: int) -> None:
    """Clear errors for bad images; a warning when stage-1 global attention would be quadratic in a large one.

    ``warn_tokens`` <= 0 means stage 1 has no global attention.
    """
    check_image_input(x, in_chans, 32)
    height, width = int(x.shape[2]), int(x.shape[3])
    if height % 32 or width % 32:
        raise ValueError(
            f"input {height}x{width}: H and W must be multiples of 32 (the network stride; four patch "
            f"embeddings of stride 4, 2, 2, 2), e.g. pad to {-(-height // 32) * 32}x{-(-width // 32) * 32}"
        )
    tokens = (height // 4) * (width // 4)
    if 0 < warn_tokens < tokens:
        warnings.warn(
            f"stage-1 global attention over {tokens} tokens ({height}x{width} input): time and memory grow "
            f"with the square of the token count (about {tokens * tokens * 4 / 2**30:.1f} GiB per head and "
            f"image for an explicit attention map). For detection-size inputs prefer container_v1_light "
            f"(static affinity in stages 1-3) or a model built with stage_mixers=('static', ...)",
            stacklevel=3,
        )


# traced as one call: timm's tracer (above) and plain torch.fx.symbolic_trace from any root module
torch.fx.wrap("check_container_input")


class Container(nn.Module):
    """CONTAINER backbone: four stages of :class:`ContainerStage`, final BatchNorm, pool, linear head.

    Args:
        embed_dims: channels per stage.
        depths: blocks per stage.
        mlp_ratios: MLP hidden ratio per stage.
        patch_sizes: patch-embedding stride per stage (the product is the network stride, 32).
        stage_mixers: per stage, "static", "mixed" or "dynamic" (see :data:`STAGE_MIXERS`).
        num_heads: heads per stage (an int for every stage); None gives ``dim // head_dim``.
        head_dim: channels per head when ``num_heads`` is None.
        mix: how mixed blocks combine their affinities ("sigmoid" as released, "free", "sum").
        kernel_size: depthwise kernel of the static affinity.
        in_chans: input channels.
        num_classes: classifier outputs (0: no classifier).
        global_pool: timm pool type ("avg", "max", ..., "" for none).
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth, linear from 0 to this over all blocks (0.1 trains the released
            model).
        attn_layer: channel attention after the MLP of every block in ``attn_stages``.
        attn_stages: 0-based stage indices that get ``attn_layer``.
        fused_attn: attention through ``F.scaled_dot_product_attention`` (None: timm's default).
        warn_tokens: warn when stage 1 has global attention over more tokens than this (0: never).
    """

    def __init__(
        self,
        embed_dims: Sequence[int] = (64, 128, 320, 512),
        depths: Sequence[int] = (3, 4, 8, 3),
        mlp_ratios: Sequence[float] = (8, 8, 4, 4),
        patch_sizes: Sequence[int] = (4, 2, 2, 2),
        stage_mixers: Sequence[str] = ("static", "static", "static", "mixed"),
        num_heads: int | Sequence[int] | None = None,
        head_dim: int = 32,
        mix: str = "sigmoid",
        kernel_size: int = 5,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        attn_layer: AttnLayerSpec = None,
        attn_stages: Sequence[int] = (0, 1, 2, 3),
        fused_attn: bool | None = None,
        warn_tokens: int = GLOBAL_ATTENTION_WARN_TOKENS,
    ) -> None:
        super().__init__()
        per_stage = (embed_dims, depths, mlp_ratios, patch_sizes, stage_mixers)
        if any(len(s) != 4 for s in per_stage):
            raise ValueError(
                f"embed_dims, depths, mlp_ratios, patch_sizes, stage_mixers need 4 entries, got {per_stage}"
            )
        bad = [m for m in stage_mixers if m not in STAGE_MIXERS]
        if bad:
            raise ValueError(f"stage_mixers must be from {tuple(STAGE_MIXERS)}, got {tuple(stage_mixers)}")
        if any(i not in range(4) for i in attn_stages):
            raise ValueError(f"attn_stages are 0-based stage indices in 0..3, got {tuple(attn_stages)}")
        heads = [num_heads] * 4 if isinstance(num_heads, int) else num_heads
        if heads is None:
            if any(d % head_dim for d in embed_dims):
                raise ValueError(f"head_dim={head_dim} must divide every stage width {tuple(embed_dims)}")
            heads = [d // head_dim for d in embed_dims]
        if len(heads) != 4:
            raise ValueError(f"num_heads needs one int or 4 entries, got {num_heads}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.warn_tokens = warn_tokens if stage_mixers[0] != "static" else 0

        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        stages, self.feature_info = [], []
        in_chs, reduction, start = in_chans, 1, 0
        for i in range(4):
            reduction *= patch_sizes[i]
            stages.append(
                ContainerStage(
                    in_chs,
                    embed_dims[i],
                    patch_sizes[i],
                    depths[i],
                    mlp_ratio=mlp_ratios[i],
                    mixer=stage_mixers[i],
                    num_heads=heads[i],
                    mix=mix,
                    kernel_size=kernel_size,
                    drop_path=dpr[start : start + depths[i]],
                    attn_layer=attn_layer if i in attn_stages else None,
                    fused_attn=fused_attn,
                )
            )
            self.feature_info.append(dict(num_chs=embed_dims[i], reduction=reduction, module=f"stages.{i}"))
            in_chs, start = embed_dims[i], start + depths[i]
        self.stages = nn.Sequential(*stages)
        self.norm = nn.BatchNorm2d(in_chs)
        self.num_features = self.head_hidden_size = in_chs
        self.global_pool, self.head = create_classifier(in_chs, num_classes, pool_type=global_pool)
        self.apply(self._init_weights)
        reset_attn_layers(self)  # the attn_layer modules' own init (the GC zero init) after ours

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # the official init: Linear trunc-normal(0.02) with zero bias; convs keep PyTorch's default
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """The mix scalars (sigmoid logit / alpha / beta): scalars that weight decay would pull to 0."""
        return {
            n for n, _ in self.named_parameters() if n.rsplit(".", 1)[-1] in ("mix_logit", "alpha", "beta")
        }

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(
            stem=r"^stages\.0\.patch_embed",
            blocks=r"^stages\.(\d+)"
            if coarse
            else [
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^stages\.(\d+)\.patch_embed", (0,)),
                (r"^norm", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for s in self.stages:
            s.grad_checkpointing = enable  # type: ignore[assignment]

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head; ``num_classes=0`` removes the classifier, ``global_pool=''`` the pooling."""
        self.num_classes = num_classes
        pool_type = global_pool if global_pool is not None else self.global_pool.pool_type
        self.global_pool, self.head = create_classifier(self.num_features, num_classes, pool_type=pool_type)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | tuple[int, ...] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage outputs (indices 0-3 at strides 4, 8, 16, 32).

        Args:
            x: (B, in_chans, H, W) images, H and W multiples of 32.
            indices: None for all four, an int n for the last n, or a list of indices.
            norm: apply the final BatchNorm to the last stage's output.
            stop_early: stop after the deepest requested stage.
            output_fmt: only "NCHW".
            intermediates_only: return only the list of feature maps.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(4, indices)
        check_container_input(x, self.in_chans, self.warn_tokens)
        intermediates = []
        stages = self.stages[: max_index + 1] if stop_early else self.stages
        last = len(stages) - 1
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take_indices:
                intermediates.append(self.norm(x) if norm and i == 3 else x)
        if intermediates_only:
            return intermediates
        if last == 3:
            x = self.norm(x)
        return x, intermediates

    def prune_intermediate_layers(
        self,
        indices: int | list[int] | tuple[int, ...] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> list[int]:
        """Drop the stages after the deepest of ``indices`` (and norm / head); returns the kept indices."""
        take_indices, max_index = feature_take_indices(4, indices)
        self.stages = self.stages[: max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()  # type: ignore[assignment]
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> (B, num_features, H / 32, W / 32), after the final BatchNorm."""
        check_container_input(x, self.in_chans, self.warn_tokens)
        return self.norm(self.stages(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, num_features, h, w) -> (B, num_classes) logits, or the pooled features if ``pre_logits``."""
        x = self.global_pool(x)
        if self.drop_rate > 0.0:
            x = F.dropout(x, p=float(self.drop_rate), training=self.training)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> (B, num_classes)."""
        return self.forward_head(self.forward_features(x))


def _create_container(variant: str, pretrained: bool = False, **kwargs: Any) -> Container:
    from container._build import build_model

    return build_model(
        Container,
        variant,
        pretrained,
        converter=ContainerConverter(),
        feature_cfg=dict(feature_cls="getter", out_indices=(0, 1, 2, 3)),
        **kwargs,
    )


_PAPER = "Container: Context Aggregation Networks"
_IDS = "arXiv:2106.01401 (NeurIPS 2021)"
_ORIGIN = "https://github.com/allenai/container"


def _cfg(params: int, gflops: float, top1: float | None, **kwargs: Any) -> Any:
    return paper_cfg(
        paper_params=params,
        paper_gflops=gflops,
        paper_top1=top1,
        paper_name=_PAPER,
        paper_ids=_IDS,
        origin_url=_ORIGIN,
        first_conv="stages.0.patch_embed.proj",
        classifier="head",
        **kwargs,
    )


# specs/container.md: the released model's exact count and fvcore GMACs (checkpoint top-1 82.26); CONTAINER:
# our reconstruction's count within 0.5% of the abstract's "22M", its GMACs, the abstract's 82.7
default_cfgs = generate_default_cfgs(
    {
        "container_v1_light.official_in1k": _cfg(
            20_633_643,
            3.86,
            82.26,
            # the official README's model-zoo link: a Google Drive page, no direct download
            weights_page="https://drive.google.com/file/d/1WMOWoxTX7AQDCbfMYh7naqIHube3K85A/view?usp=sharing",
            notes=(
                "official checkpoint (DeiT trainer checkpoint.pth, weights under 'model'): the Google Drive "
                "link in the Model Zoo table at https://github.com/allenai/container#model-zoo",
            ),
        ),
        "container_v1": _cfg(22_434_234, 8.96, 82.7, params_rtol=0.005),
    }
)


@register_model
def container_v1_light(pretrained: bool = False, **kwargs: Any) -> Container:
    """CONTAINER-LIGHT as released: static 5x5 depthwise affinity in stages 1-3, mixed in stage 4."""
    args: dict[str, Any] = dict(stage_mixers=("static", "static", "static", "mixed"))
    return _create_container("container_v1_light", pretrained, **dict(args, **kwargs))


@register_model
def container_v1(pretrained: bool = False, **kwargs: Any) -> Container:
    """CONTAINER (reconstruction): mixed dynamic + static affinity in all four stages, head dim 32."""
    args: dict[str, Any] = dict(stage_mixers=("mixed",) * 4)
    return _create_container("container_v1", pretrained, **dict(args, **kwargs))
