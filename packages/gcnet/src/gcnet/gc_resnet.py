"""GC-ResNets, NL-ResNet-50 and SNL-ResNet-50 (Cao et al., "Global Context Networks", TPAMI, Sec. 4.3 and
5.1-5.2; official code: https://github.com/xvjiarui/GCNet) on timm's ResNet.

The network is timm's :class:`~timm.models.resnet.ResNet` (torchvision key names, ``output_stride`` 8/16
with dilated stages, DropBlock, stochastic depth) with :class:`ContextBottleneck` blocks, which hold one
optional context module at ``context_block`` (mmdetection's attribute name) in one of the paper's
positions (Table 5(b)): ``"after_conv2"`` (after the 3x3), ``"after_conv3"`` (after the last 1x1 + BN,
before the residual add; the GC default) or ``"after_add"`` (after the block's output ReLU; where the NL
block goes). A plain ResNet state dict therefore loads with only the ``context_block`` keys missing, as the
paper fine-tunes from ImageNet ResNets.

- ``gc_resnet50`` / ``gc_resnet101`` / ``gc_resnext101_32x4d``: GC r16 in every block of c3-c5;
  ``gc_resnet50_r4``: ratio 1/4.
- ``nl_resnet50`` / ``snl_resnet50``: one embedded-Gaussian NL / one SNL block before the last residual
  block of c4 (after the add of ``layer3[4]``), Table 8(a).

Which module (``attn_layer``: "gc", "nl", "snl", any name of ctxnets_shared's registry, or a callable),
its options (``attn_kwargs``, or the shortcuts ``ratio``, ``pooling``, ``fusion``, ``transform``), the
position, the stages and the blocks are constructor options, so the paper's ablations are one kwarg away.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
import torch.nn as nn
from timm.layers import register_notrace_function
from timm.models import checkpoint_seq, generate_default_cfgs, register_model
from timm.models.resnet import Bottleneck, ResNet

from ctxnets_shared.layers import AttnLayerSpec, create_attn_layer, reset_attn_layers
from ctxnets_shared.models import build_model_with_args, check_image_input, feature_take_indices, paper_cfg

__all__ = ["ATTN_SHORTCUTS", "POSITIONS", "ContextBottleneck", "GCResNet"]

POSITIONS = ("after_conv2", "after_conv3", "after_add")
#: context-module options GCResNet also takes as top-level kwargs (GC: ratio, pooling, fusion, transform;
#: NL: mode, reduction); they are merged into ``attn_kwargs``
ATTN_SHORTCUTS = ("ratio", "pooling", "fusion", "transform", "mode", "reduction")
_MIN_SIZE = 32  # the network stride
# shape checks cannot be traced: an opaque call in FX graphs, for timm's tracer (notrace registry, twice is
# harmless) and for plain torch.fx.symbolic_trace (fx.wrap patches this module's global)
register_notrace_function(check_image_input)
torch.fx.wrap("check_image_input")


class ContextBottleneck(Bottleneck):
    """timm's ResNet bottleneck with an optional context module (``context_block``) at ``context_position``.

    Built as a plain bottleneck (so :class:`~timm.models.resnet.ResNet` constructs it unchanged);
    :meth:`set_context` installs the module. Forward: ``conv1-bn1-act1 ->
    conv2-bn2-[drop_block]-act2-aa -> [ctx: after_conv2] -> conv3-bn3-[ctx: after_conv3] -> drop_path ->
    + shortcut -> act3 -> [ctx: after_add]``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.context_block: nn.Module | None = None
        self.context_position = "after_conv3"

    def context_channels(self, position: str) -> int:
        """Channel count of the map at ``position`` (the 3x3's width or the block's output)."""
        return self.conv2.out_channels if position == "after_conv2" else self.conv3.out_channels

    def set_context(self, module: nn.Module | None, position: str = "after_conv3") -> None:
        """Install ``module`` (or None) at ``position``, one of :data:`POSITIONS`."""
        if position not in POSITIONS:
            raise ValueError(f"position must be one of {POSITIONS}, got {position!r}")
        self.context_block = module
        self.context_position = position
        if module is not None and position != "after_add":
            # register it where forward first uses it, before the shortcut's ``downsample``: module order
            # then equals execution order, which FX-rebuilt copies (GraphModule) follow
            modules = self._modules
            order = [k for k in modules if k != "context_block"]
            at = order.index("downsample") if "downsample" in order else len(order)
            order.insert(at, "context_block")
            self._modules = type(modules)((k, modules[k]) for k in order)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in, H, W) -> (B, 4 * planes, H / stride, W / stride)."""
        shortcut = x
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.aa(self.act2(self.drop_block(self.bn2(self.conv2(x)))))  # type: ignore[misc]
        if self.context_block is not None and self.context_position == "after_conv2":
            x = self.context_block(x)
        x = self.bn3(self.conv3(x))
        if self.se is not None:
            x = self.se(x)
        if self.context_block is not None and self.context_position == "after_conv3":
            x = self.context_block(x)
        if self.drop_path is not None:
            x = self.drop_path(x)
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        x = self.act3(x + shortcut)
        if self.context_block is not None and self.context_position == "after_add":
            x = self.context_block(x)
        return x


def _block_indices(depth: int, blocks: Sequence[int] | None) -> list[int]:
    if blocks is None:
        return list(range(depth))
    out = []
    for b in blocks:
        if not -depth <= b < depth:
            raise ValueError(f"attn_blocks index {b} is out of range for a {depth}-block stage")
        out.append(b % depth)
    return sorted(set(out))


class GCResNet(ResNet):
    """timm ResNet whose bottlenecks carry the paper's context modules.

    Args:
        layers: blocks per stage.
        attn_layer: the context module: "gc", "nl", "snl", another registered attention name, a callable
            ``channels -> nn.Module``, or None / "none" for a plain ResNet (``timm.create_model`` drops
            None-valued kwargs, so pass "none" there).
        attn_kwargs: options for it (e.g. ``dict(ratio=1/4, pooling="avg", fusion=("channel_mul",))``);
            the names in :data:`ATTN_SHORTCUTS` may also be given directly (``ratio=1/4``).
        attn_position: one of :data:`POSITIONS`.
        attn_stages: 0-based stage indices that get it (0 = ``layer1`` = c2; the paper's c3-c5 = (1, 2, 3)).
        attn_blocks: block indices within each of those stages (negative counts from the end); None: all.
        **kwargs: timm ResNet options (``cardinality``, ``base_width``, ``output_stride``,
            ``drop_block_rate``, ``drop_path_rate``, ``in_chans``, ``num_classes``, ``global_pool``, ...).

    Raises:
        ValueError: stage or block indices out of range, an unknown position.
    """

    def __init__(
        self,
        layers: Sequence[int] = (3, 4, 6, 3),
        attn_layer: AttnLayerSpec = "gc",
        attn_kwargs: dict[str, Any] | None = None,
        attn_position: str = "after_conv3",
        attn_stages: Sequence[int] = (1, 2, 3),
        attn_blocks: Sequence[int] | None = None,
        **kwargs: Any,
    ) -> None:
        if attn_position not in POSITIONS:
            raise ValueError(f"attn_position must be one of {POSITIONS}, got {attn_position!r}")
        if any(i not in range(4) for i in attn_stages):
            raise ValueError(f"attn_stages are 0-based stage indices in 0..3, got {tuple(attn_stages)}")
        if kwargs.get("output_stride", 32) not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {kwargs['output_stride']}")
        shortcuts = {k: kwargs.pop(k) for k in ATTN_SHORTCUTS if k in kwargs}
        attn_kwargs = {**(attn_kwargs or {}), **shortcuts}
        kwargs.pop("block", None)
        super().__init__(block=ContextBottleneck, layers=tuple(layers), **kwargs)  # type: ignore[arg-type]
        for stage_idx in sorted(set(attn_stages)):
            stage = self.get_submodule(f"layer{stage_idx + 1}")
            assert isinstance(stage, nn.Sequential)
            for block_idx in _block_indices(len(stage), attn_blocks):
                block = stage[block_idx]
                assert isinstance(block, ContextBottleneck)
                channels = block.context_channels(attn_position)
                module = create_attn_layer(attn_layer, channels, **(attn_kwargs or {}))
                block.set_context(module, attn_position)

    @torch.jit.ignore
    def init_weights(self, zero_init_last: bool = True) -> None:
        """timm's ResNet init, then each context module's own init again (the GC zero init survives)."""
        super().init_weights(zero_init_last=zero_init_last)
        reset_attn_layers(self)

    def context_blocks(self) -> dict[str, nn.Module]:
        """The installed context modules by qualified name (``layer3.4.context_block``)."""
        return {
            f"{name}.context_block": m.context_block
            for name, m in self.named_modules()
            if isinstance(m, ContextBottleneck) and m.context_block is not None
        }

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | tuple[int, ...] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Features of the stem (index 0, stride 2) and of ``layer1`` .. ``layer4`` (indices 1-4, 4-32).

        Args:
            x: (B, in_chans, H, W) images, H and W >= 32.
            indices: None for all five, an int n for the last n, or a list of indices.
            norm: unused (no final norm in a ResNet); kept for the timm signature.
            stop_early: stop after the deepest requested level.
            output_fmt: only "NCHW".
            intermediates_only: return only the list of feature maps.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(5, indices)
        check_image_input(x, self.in_chans, _MIN_SIZE)
        intermediates = []
        x = self.act1(self.bn1(self.conv1(x)))
        if 0 in take_indices:
            intermediates.append(x)
        x = self.maxpool(x)
        stages: list[Any] = [self.layer1, self.layer2, self.layer3, self.layer4]
        if stop_early:
            stages = stages[:max_index]
        for i, stage in enumerate(stages, start=1):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint_seq(stage, x)
            else:
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
        take_indices, _ = feature_take_indices(5, indices)
        return super().prune_intermediate_layers(take_indices, prune_norm, prune_head)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> (B, num_features, H / output_stride, W / output_stride)."""
        check_image_input(x, self.in_chans, _MIN_SIZE)
        return super().forward_features(x)


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> GCResNet:
    model = build_model_with_args(
        GCResNet,
        variant,
        pretrained,
        feature_cfg=dict(feature_cls="getter", out_indices=(1, 2, 3, 4)),
        **kwargs,
    )
    return cast(GCResNet, model)  # features_only gives timm's feature wrapper around it


_PAPER = "Global Context Networks"
_IDS = "arXiv:2012.13375, doi:10.1109/TPAMI.2020.3047209"
_ORIGIN = "https://github.com/xvjiarui/GCNet"


def _cfg(
    params: int,
    gflops: float,
    top1: float | None,
    rtol: float = 0.0,
    gflops_rtol: float = 0.07,
    **kwargs: Any,
) -> Any:
    return paper_cfg(
        paper_params=params,
        paper_gflops=gflops,
        paper_top1=top1,
        paper_name=_PAPER,
        paper_ids=_IDS,
        origin_url=_ORIGIN,
        params_rtol=rtol,
        gflops_rtol=gflops_rtol,
        first_conv="conv1",
        classifier="fc",
        interpolation="bilinear",
        **kwargs,
    )


# params: specs/gcnet.md (exact for the GC networks, the paper's 2-decimal millions for NL / SNL);
# GFLOPs and top-1: Table 8(a) (ImageNet, 224). The paper gives no ImageNet numbers for the r4 / 101 models;
# their GFLOPs are ResNet-101's / ResNeXt-101's plus the GC blocks' few MFLOPs. The paper's counter (SENet's)
# puts ResNet-50 at 3.86 G where ours (and timm's) counts 4.09 G, hence a 7% tolerance; its +0.25 G for the
# NL block is +0.45 G with ours (the four 1x1 convs at 14x14 alone are 0.41 G MACs), hence 12% there.
default_cfgs = generate_default_cfgs(
    {
        "gc_resnet50": _cfg(28_078_773, 3.87, 77.49),
        "gc_resnet50_r4": _cfg(35_557_941, 3.87, None),
        "gc_resnet101": _cfg(49_337_222, 7.83, None, gflops_rtol=0.05),
        "gc_resnext101_32x4d": _cfg(48_965_766, 8.03, None, gflops_rtol=0.05),
        "nl_resnet50": _cfg(27_660_000, 4.11, 77.21, rtol=0.001, gflops_rtol=0.12),
        "snl_resnet50": _cfg(26_610_000, 3.86, 77.10, rtol=0.001),
    }
)


@register_model
def gc_resnet50(pretrained: bool = False, **kwargs: Any) -> GCResNet:
    """GC-ResNet-50: GC r16 after the last 1x1 of every bottleneck of c3-c5 (Table 8(a) "+all GC")."""
    return _create("gc_resnet50", pretrained, **dict(dict(layers=(3, 4, 6, 3)), **kwargs))


@register_model
def gc_resnet50_r4(pretrained: bool = False, **kwargs: Any) -> GCResNet:
    """GC-ResNet-50 with bottleneck ratio 1/4 (Table 5(e), 7)."""
    args = dict(layers=(3, 4, 6, 3), attn_kwargs=dict(ratio=1 / 4))
    return _create("gc_resnet50_r4", pretrained, **dict(args, **kwargs))


@register_model
def gc_resnet101(pretrained: bool = False, **kwargs: Any) -> GCResNet:
    """GC-ResNet-101 (r16, c3-c5), the paper's stronger detection backbone (Table 7)."""
    return _create("gc_resnet101", pretrained, **dict(dict(layers=(3, 4, 23, 3)), **kwargs))


@register_model
def gc_resnext101_32x4d(pretrained: bool = False, **kwargs: Any) -> GCResNet:
    """GC-ResNeXt-101 32x4d (r16, c3-c5) (Table 7)."""
    args = dict(layers=(3, 4, 23, 3), cardinality=32, base_width=4)
    return _create("gc_resnext101_32x4d", pretrained, **dict(args, **kwargs))


_ONE_IN_C4 = dict(attn_position="after_add", attn_stages=(2,), attn_blocks=(-2,))


@register_model
def nl_resnet50(pretrained: bool = False, **kwargs: Any) -> GCResNet:
    """ResNet-50 + one embedded-Gaussian NL block before the last residual block of c4 (Table 8(a))."""
    args = dict(layers=(3, 4, 6, 3), attn_layer="nl", **_ONE_IN_C4)
    return _create("nl_resnet50", pretrained, **dict(args, **kwargs))


@register_model
def snl_resnet50(pretrained: bool = False, **kwargs: Any) -> GCResNet:
    """ResNet-50 + one simplified NL block before the last residual block of c4 (Table 8(a))."""
    args = dict(layers=(3, 4, 6, 3), attn_layer="snl", **_ONE_IN_C4)
    return _create("snl_resnet50", pretrained, **dict(args, **kwargs))
