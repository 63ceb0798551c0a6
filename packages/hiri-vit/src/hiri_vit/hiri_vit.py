"""HIRI-ViT backbones (Yao et al., "HIRI-ViT: Scaling Vision Transformer with High Resolution Inputs",
TPAMI; Sec. 4, Table I).

Five stages at strides 4, 8, 16, 32, 64 (with the default down-sampling strides): HR-stem -> HR blocks ->
IRDS-a -> HR blocks -> IRDS-a -> CFFN blocks -> IRDS-b -> Transformer blocks -> IRDS-b -> Transformer
blocks -> head. BatchNorm in stages 1-3, LayerNorm before the attention of stages 4-5 and BatchNorm before
their CFFN. No official code exists: where the paper is silent this follows specs/hiri-vit.md, and every
such choice is a constructor option.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx
import torch.nn as nn
from timm.layers import get_act_layer, register_notrace_function, trunc_normal_
from timm.models import checkpoint_seq, generate_default_cfgs, register_model

from ctxnets_shared.layers import AttnLayerSpec, reset_attn_layers
from ctxnets_shared.models import build_model_with_args, check_image_input, feature_take_indices, paper_cfg
from hiri_vit.cffn import CFFNBlock
from hiri_vit.heads import AvgPoolHead, ClassAttentionHead
from hiri_vit.hr_block import HRBlock
from hiri_vit.hr_stem import HRStem
from hiri_vit.irds import IRDSa, IRDSb
from hiri_vit.transformer_block import TransformerBlock

__all__ = ["HiriStage", "HiriViT"]

NUM_STAGES = 5
HEAD_TYPES = ("class_attn", "avg")

# the input check branches on shapes: FX tracers (timm's, torch.fx's, torchvision's feature extractor) must
# record it as one call instead of tracing into it
register_notrace_function(check_image_input)
torch.fx.wrap("check_image_input")


class HiriStage(nn.Module):
    """A down-sampling layer (Identity for stage 1) and a sequence of blocks: (B, C_in, H, W) -> NCHW.

    Token stages (4-5) run their blocks on a channels-last (B, H, W, C) map and return a (B, C, H, W) view
    of it (channels-last strides), so the next IRDS and feature consumers see NCHW like every other stage.

    Args:
        downsample: IRDS module or Identity.
        blocks: the stage's blocks.
        tokens: the blocks take (B, H, W, C) maps (Transformer blocks).
    """

    def __init__(self, downsample: nn.Module, blocks: Sequence[nn.Module], tokens: bool = False) -> None:
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.Sequential(*blocks)
        self.tokens = tokens
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C, H / stride, W / stride)."""
        x = self.downsample(x)
        if self.tokens:
            x = x.permute(0, 2, 3, 1).contiguous()
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        if self.tokens:
            x = x.permute(0, 3, 1, 2)
        return x


def _per_stage(name: str, value: Sequence[Any], n: int) -> tuple[Any, ...]:
    if len(value) != n:
        raise ValueError(f"{name} needs {n} values, got {tuple(value)}")
    return tuple(value)


class HiriViT(nn.Module):
    """HIRI-ViT: HR-stem, five stages (HR, HR, CFFN, Transformer, Transformer) and a classification head.

    Args:
        embed_dims: C1..C5 (Table I).
        mlp_ratios: E1..E5, the FFN/CFFN expansions.
        depths: d1..d5, blocks per stage.
        num_heads: heads of stages 4 and 5 (head dimension 64 in the paper's variants).
        in_chans: image channels.
        num_classes: classifier outputs (0: no classifier).
        head_type: "class_attn" (default; reproduces Table II's parameters) or "avg".
        global_pool: pooling of the head: "class_attn" (class_attn head only), "avg", or "" (per-location
            logits); None picks the head's own (``head_type``).
        stem_width: channels inside the HR-stem (None: C1).
        downsample_strides: strides of the four IRDS layers (1 or 2 each). The stem's stride is 4.
        irds_expansion: expansion t of the IRDS layers.
        sr_ratios: key/value spatial reduction of the attention in stages 4 and 5 (1: full attention).
        act_layer: activation (a timm name or class), GELU by default.
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth, increasing linearly over all blocks to this rate.
        attn_layer: attention (name, callable ``channels -> nn.Module`` or None) inserted on the FFN branch
            of every block of ``attn_stages``, before the residual add (e.g. "gc" from gcnet, "se", "eca").
        attn_stages: 0-based stage indices (0..4) that get ``attn_layer``.
        fused_attn: ``F.scaled_dot_product_attention`` (True) or the plain attention formula (False);
            None follows timm's ``use_fused_attn()``.
        channels_last: run in channels-last memory from the stem on (the same values; the token stages use
            that layout anyway, so no copy is made between stages 3 and 4). Feature maps are still
            (B, C, H, W) tensors, with channels-last strides.
    """

    def __init__(
        self,
        embed_dims: Sequence[int] = (32, 64, 128, 320, 512),
        mlp_ratios: Sequence[float] = (4, 4, 6, 5, 5),
        depths: Sequence[int] = (2, 2, 2, 9, 4),
        num_heads: Sequence[int] = (5, 8),
        in_chans: int = 3,
        num_classes: int = 1000,
        head_type: str = "class_attn",
        global_pool: str | None = None,
        stem_width: int | None = None,
        downsample_strides: Sequence[int] = (2, 2, 2, 2),
        irds_expansion: float = 4.0,
        sr_ratios: Sequence[int] = (1, 1),
        act_layer: str | Callable[..., nn.Module] = "gelu",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        attn_layer: AttnLayerSpec = None,
        attn_stages: Sequence[int] = (0, 1, 2, 3, 4),
        fused_attn: bool | None = None,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        dims = _per_stage("embed_dims", embed_dims, NUM_STAGES)
        ratios = _per_stage("mlp_ratios", mlp_ratios, NUM_STAGES)
        depths = _per_stage("depths", depths, NUM_STAGES)
        heads = _per_stage("num_heads", num_heads, 2)
        strides = _per_stage("downsample_strides", downsample_strides, NUM_STAGES - 1)
        srs = _per_stage("sr_ratios", sr_ratios, 2)
        if any(s not in (1, 2) for s in strides):
            raise ValueError(f"downsample_strides must each be 1 or 2, got {strides}")
        if any(i not in range(NUM_STAGES) for i in attn_stages):
            raise ValueError(f"attn_stages are 0-based stage indices in 0..4, got {tuple(attn_stages)}")
        if head_type not in HEAD_TYPES:
            raise ValueError(f"head_type must be one of {HEAD_TYPES}, got {head_type!r}")
        if in_chans < 1:
            raise ValueError(f"in_chans must be >= 1, got {in_chans}")
        act = get_act_layer(act_layer)
        assert act is not None

        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.channels_last = channels_last
        self.num_features = self.head_hidden_size = dims[-1]
        self.grad_checkpointing = False

        self.stem = HRStem(in_chans, dims[0], stem_width, act)
        reduction = 4
        total_blocks = sum(depths)
        dpr = [drop_path_rate * k / max(total_blocks - 1, 1) for k in range(total_blocks)]
        block_idx = 0
        stages: list[HiriStage] = []
        self.feature_info: list[dict[str, Any]] = []
        for i in range(NUM_STAGES):
            dim = dims[i]
            downsample: nn.Module = nn.Identity()
            if i > 0:
                irds = IRDSa if i < 3 else IRDSb
                downsample = irds(dims[i - 1], dim, strides[i - 1], irds_expansion, act)
                reduction *= strides[i - 1]
            hook = attn_layer if i in attn_stages else None
            blocks: list[nn.Module] = []
            for j in range(depths[i]):
                common = dict(
                    mlp_ratio=ratios[i], act_layer=act, attn_layer=hook, drop_path=dpr[block_idx + j]
                )
                if i < 2:
                    blocks.append(HRBlock(dim, **common))
                elif i == 2:
                    blocks.append(CFFNBlock(dim, **common))
                else:
                    attn = dict(sr_ratio=srs[i - 3], fused_attn=fused_attn)
                    blocks.append(TransformerBlock(dim, heads[i - 3], **attn, **common))
            block_idx += depths[i]
            stages.append(HiriStage(downsample, blocks, tokens=i >= 3))
            self.feature_info.append(dict(num_chs=dim, reduction=reduction, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.min_img_size = reduction  # every stage keeps at least one position

        pool = global_pool if global_pool is not None else head_type
        self.head: AvgPoolHead | nn.Identity
        if head_type == "class_attn":
            self.head = ClassAttentionHead(
                dims[-1], num_classes, heads[-1], ratios[-1], act, pool, drop_rate, fused_attn
            )
        else:
            self.head = AvgPoolHead(dims[-1], num_classes, pool, drop_rate)
        self.apply(self._init_weights)
        reset_attn_layers(self)  # the attn_layer modules' own init (the GC zero init) after ours

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """No position embeddings or tokens; timm already exempts 1-D parameters (norms, biases)."""
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        blocks: Any = (
            r"^stages\.(\d+)"
            if coarse
            else [(r"^stages\.(\d+)\.downsample", (0,)), (r"^stages\.(\d+)\.blocks\.(\d+)", None)]
        )
        return dict(stem=r"^stem", blocks=blocks)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for stage in self.stages:
            if isinstance(stage, HiriStage):
                stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc if isinstance(self.head, AvgPoolHead) else self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """New classifier (``num_classes=0``: none); ``global_pool=''`` returns per-location outputs."""
        if not isinstance(self.head, AvgPoolHead):
            raise RuntimeError(
                "the head was pruned (prune_intermediate_layers); there is no classifier to reset"
            )
        self.num_classes = num_classes
        self.head.reset(num_classes, global_pool)

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        check_image_input(x, self.in_chans, self.min_img_size)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.stem(x)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | tuple[int, ...] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Outputs of stages 1-5 (indices 0-4; strides 4, 8, 16, 32, 64 by default).

        Args:
            x: (B, in_chans, H, W), H and W >= ``min_img_size`` (64 with the default strides).
            indices: None for all five, an int n for the last n, or a list of indices.
            norm: unused (the head's LayerNorm belongs to the classifier); kept for the timm signature.
            stop_early: stop after the deepest requested stage.
            output_fmt: only "NCHW".
            intermediates_only: return only the list of feature maps.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(NUM_STAGES, indices)
        x = self._stem(x)
        stages = self.stages[: max_index + 1] if stop_early else self.stages
        intermediates = []
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
        self,
        indices: int | list[int] | tuple[int, ...] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> list[int]:
        """Drop the stages after the deepest of ``indices`` (and the head); returns the kept indices."""
        take_indices, max_index = feature_take_indices(NUM_STAGES, indices)
        self.stages = self.stages[: max_index + 1]
        if prune_head:
            self.head = nn.Identity()
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> (B, C5, H / 64, W / 64) (ceil at odd sizes)."""
        # with grad checkpointing on, each stage checkpoints its blocks (HiriStage.forward)
        return self.stages(self._stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, C5, h, w) -> (B, num_classes) logits, (B, C5) if ``pre_logits``; per location if not pooled."""
        if isinstance(self.head, nn.Identity):  # pruned for feature extraction
            return x
        return self.head(x, pre_logits=pre_logits)

    def forward_dense_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Per-location logits ``fc(LN(token))`` without pooling: (B, in_chans, H, W) -> (B, K, h, w).

        The EMA-distillation teacher's class maps (paper Sec. 4.5): the head's LayerNorm and classifier
        applied at every stage-5 position, skipping the pooling (and the class-attention block).
        """
        return self.forward_head_dense(self.forward_features(x))

    def forward_head_dense(self, x: torch.Tensor) -> torch.Tensor:
        """The head's LayerNorm and classifier at every position of ``forward_features``' (B, C, h, w) map.

        The hook ``hiri_vit.distill.per_location_logits`` uses: (B, C5, h, w) -> (B, K, h, w).
        """
        if not isinstance(self.head, AvgPoolHead):
            raise RuntimeError("the head was pruned (prune_intermediate_layers); there are no logits")
        return self.head.forward_dense(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> (B, num_classes)."""
        return self.forward_head(self.forward_features(x))


def _create_hiri_vit(variant: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    return build_model_with_args(
        HiriViT,
        variant,
        pretrained,
        feature_cfg=dict(feature_cls="getter", out_indices=(1, 2, 3, 4)),
        **kwargs,
    )


_PAPER = "HIRI-ViT: Scaling Vision Transformer with High Resolution Inputs"
_IDS = "arXiv:2403.11999"
_ORIGIN = "https://arxiv.org/abs/2403.11999"  # no official code exists


def _cfg(params: int, gflops: float, top1: float, **kwargs: Any) -> Any:
    return paper_cfg(
        paper_params=params,
        paper_gflops=gflops,
        paper_top1=top1,
        paper_name=_PAPER,
        paper_ids=_IDS,
        origin_url=_ORIGIN,
        paper_img_size=448,
        params_rtol=0.025,
        gflops_rtol=0.06,
        input_size=(3, 448, 448),
        pool_size=(7, 7),
        min_input_size=(3, 64, 64),
        first_conv="stem.conv.0",
        classifier="head.fc",
        **kwargs,
    )


# Table II (448x448 rows): parameters, GFLOPs (multiply-accumulates) and top-1 (specs/hiri-vit.md)
default_cfgs = generate_default_cfgs(
    {
        "hiri_vit_s": _cfg(34_800_000, 5.0, 84.3),
        "hiri_vit_b": _cfg(54_400_000, 9.9, 85.2),
        "hiri_vit_l": _cfg(94_400_000, 19.9, 85.7),
    }
)


@register_model
def hiri_vit_s(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """HIRI-ViT-S (Table I): C = 32, 64, 128, 320, 512; d = 2, 2, 2, 9, 4."""
    args = dict(
        embed_dims=(32, 64, 128, 320, 512),
        mlp_ratios=(4, 4, 6, 5, 5),
        depths=(2, 2, 2, 9, 4),
        num_heads=(5, 8),
    )
    return _create_hiri_vit("hiri_vit_s", pretrained, **dict(args, **kwargs))


@register_model
def hiri_vit_b(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """HIRI-ViT-B (Table I): C = 64, 96, 192, 320, 640; d = 2, 2, 3, 17, 4."""
    args = dict(
        embed_dims=(64, 96, 192, 320, 640),
        mlp_ratios=(4, 4, 5, 4, 5),
        depths=(2, 2, 3, 17, 4),
        num_heads=(5, 10),
    )
    return _create_hiri_vit("hiri_vit_b", pretrained, **dict(args, **kwargs))


@register_model
def hiri_vit_l(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """HIRI-ViT-L (Table I): C = 80, 160, 224, 448, 640; d = 4, 4, 5, 25, 5."""
    args = dict(
        embed_dims=(80, 160, 224, 448, 640),
        mlp_ratios=(4, 4, 5, 3, 5),
        depths=(4, 4, 5, 25, 5),
        num_heads=(7, 10),
    )
    return _create_hiri_vit("hiri_vit_l", pretrained, **dict(args, **kwargs))
