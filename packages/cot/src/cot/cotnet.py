"""CoTNet, CoTNeXt and SE-CoTNetD backbones (Li et al., "Contextual Transformer Networks for Visual
Recognition", TPAMI 2022, Sec. 3.3 and 4.1; official code: https://github.com/JDAI-CV/CoTNet).

CoTNet-50/101 are ResNets whose every bottleneck 3x3 conv is a :class:`~cot.cot_layer.CotLayer`
(CoTNeXt: :class:`~cot.cot_layer.CoXtLayer`, 2 groups of width 48). SE-CoTNetD is the ResNet-D variant
(deep stem, no max-pool, average-pool shortcuts) with SE 3x3 convs in res2-res3, alternating SE conv / CoT
in res4 and CoT in res5 (Table 7). Module names equal the official ones so released checkpoints load with
``load_state_dict(strict=True)``.

As timm's ResNet, the backbones take ``output_stride`` 8 or 16 (the last stages keep their resolution and
dilate their CoT windows and SE convs instead, for DeepLab-style segmentation) and ``drop_block_rate``
(DropBlock in the last two stages); every model is torch.fx-traceable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, cast

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import (
    BlurPool2d,
    DropBlock2d,
    DropPath,
    create_classifier,
    drop_block_2d,
)
from timm.models import checkpoint_seq, generate_default_cfgs, register_model

from cot.convert import CotConverter
from cot.cot_layer import CotLayer, CoXtLayer
from cot.se_conv import SeConv2d
from ctxnets_shared.layers import AttnLayerSpec, create_attn_layer, reset_attn_layers
from ctxnets_shared.models import build_model_with_args, check_image_input, feature_take_indices, paper_cfg

__all__ = ["CoTNet", "CotBottleneck"]

_CONV_TYPES = ("cot", "se", "alt")
_OUTPUT_STRIDES = (8, 16, 32)

# torch.fx: the input check and DropBlock's mask sampling (Python control flow on shapes) are single nodes
# of a traced graph; ctxnets_shared registers the check for timm's FX feature extraction, fx.wrap makes
# both leaves of a plain torch.fx.symbolic_trace too
torch.fx.wrap("check_image_input")
torch.fx.wrap("drop_block_2d")


class _DropBlock(DropBlock2d):
    """timm's DropBlock2d (timm's ResNet options) whose mask sampling, which branches on the map size, is
    one node of a torch.fx graph."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not self.drop_prob:
            return x
        return drop_block_2d(
            x,
            self.drop_prob,
            self.block_size,
            self.gamma_scale,
            self.with_noise,
            self.inplace,
            self.couple_channels,
            self.scale_by_keep,
        )


class CotBottleneck(nn.Module):
    """ResNet bottleneck whose 3x3 conv is a CoT layer (or SE-CoTNetD's SE conv).

    ``conv1 -> bn1 -> ReLU -> [avd] -> conv2 -> [drop_block] -> [aa] -> conv3 -> bn3 -> [attn] -> drop_path
    -> + shortcut -> ReLU``. A stride-2 block down-samples around conv2, because a CoT layer has stride 1:
    an average pool before it (``avd``) or, for SE-CoTNetD-152, a blur pool after it (``aa``). The optional
    ``attn`` module (the composition hook) sits after the last 1x1 conv + BN, before the residual add.

    Args:
        in_chs: input channels.
        planes: bottleneck base width; the block outputs ``4 * planes`` channels.
        stride: 1 or 2.
        downsample: the shortcut projection, or None for identity.
        conv_type: "cot" (CoT / CoXt layer) or "se" (SE 3x3 conv).
        cardinality: 1 for CoT, 2 for CoXt.
        base_width: per-group width at ``planes=64`` (64 CoT, 48 CoXt).
        blur_down: blur-pool after conv2 instead of average-pool before it (SE-CoTNetD-152).
        dilation: dilation of conv2's K x K windows (dilated stages).
        attn_layer: attention after bn3 (a name, a callable ``channels -> nn.Module``, or None).
        drop_path: stochastic depth rate of the residual branch.
        drop_block: DropBlock layer factory applied after conv2, or None.
        cot_kwargs: extra :class:`CotLayer` options (ablations).
    """

    expansion = 4

    def __init__(
        self,
        in_chs: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        conv_type: str = "cot",
        cardinality: int = 1,
        base_width: int = 64,
        blur_down: bool = False,
        dilation: int = 1,
        attn_layer: AttnLayerSpec = None,
        drop_path: float = 0.0,
        drop_block: Callable[[], nn.Module] | None = None,
        cot_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        width = int(planes * base_width / 64) * cardinality
        out_chs = planes * self.expansion
        self.conv1 = nn.Conv2d(in_chs, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.act1 = nn.ReLU(inplace=True)
        down_before = stride > 1 and not blur_down and conv_type == "cot"
        self.avd: nn.Module = nn.AvgPool2d(3, stride, padding=1) if down_before else nn.Identity()
        if conv_type == "cot":
            layer_cls = CotLayer if cardinality == 1 else CoXtLayer
            options = dict(dict(kernel_size=3), **(cot_kwargs or {}))
            self.conv2: nn.Module = layer_cls(width, **dict(options, dilation=dilation))
        elif conv_type == "se":
            self.conv2 = SeConv2d(width, width, stride=1 if blur_down else stride, dilation=dilation)
        else:
            raise ValueError(f"conv_type must be 'cot' or 'se', got {conv_type!r}")
        self.drop_block: nn.Module = drop_block() if drop_block is not None else nn.Identity()
        down_after = stride > 1 and blur_down
        self.aa: nn.Module = BlurPool2d(width, filt_size=3, stride=stride) if down_after else nn.Identity()
        self.conv3 = nn.Conv2d(width, out_chs, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.attn: nn.Module = create_attn_layer(attn_layer, out_chs) or nn.Identity()
        self.drop_path: nn.Module = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.downsample: nn.Module = downsample if downsample is not None else nn.Identity()
        self.act3 = nn.ReLU(inplace=True)

    def zero_init_last(self) -> None:
        """Start the residual branch at zero (the official ``zero_init_last_bn``)."""
        nn.init.zeros_(self.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chs, H, W) -> (B, 4 * planes, H / stride, W / stride)."""
        shortcut = self.downsample(x)
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.aa(self.drop_block(self.conv2(self.avd(x))))
        x = self.attn(self.bn3(self.conv3(x)))
        return self.act3(self.drop_path(x) + shortcut)


def _downsample(in_chs: int, out_chs: int, stride: int, avg_down: bool) -> nn.Module:
    if avg_down:  # ResNet-D: pool, then an unstrided 1x1 (keys downsample.1 / .2)
        pool: nn.Module = (
            nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False) if stride > 1 else nn.Identity()
        )
        return nn.Sequential(pool, nn.Conv2d(in_chs, out_chs, 1, bias=False), nn.BatchNorm2d(out_chs))
    return nn.Sequential(nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False), nn.BatchNorm2d(out_chs))


class CoTNet(nn.Module):
    """ResNet-style backbone built from :class:`CotBottleneck` stages ``layer1`` .. ``layer4``.

    Args:
        layers: blocks per stage.
        conv_types: per stage, "cot", "se" or "alt" (CoT on even block indices, SE conv on odd ones).
        cardinality: 1 (CoTNet) or 2 (CoTNeXt).
        base_width: 64 (CoTNet) or 48 (CoTNeXt).
        deep_stem: three 3x3 convs (``stem_width``, ``stem_width``, ``2 * stem_width``) and no max-pool;
            every stage then starts with stride 2 (SE-CoTNetD). Otherwise a 7x7 conv and a max-pool.
        stem_width: channels of the deep stem's first convs.
        avg_down: average-pool shortcuts (ResNet-D) instead of strided 1x1 convs.
        blur_down: blur-pool after conv2 in stride-2 blocks (SE-CoTNetD-152).
        in_chans: input channels.
        num_classes: classifier outputs (0: no classifier).
        global_pool: timm pool type ("avg", "max", "avgmax", "catavgmax", "" for none).
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth, increasing linearly to this rate over the blocks.
        drop_block_rate: DropBlock drop probability in the last two stages (block sizes 5 and 3, as timm's
            ResNet); 0 disables it.
        output_stride: 32, or 16 / 8 for dilated last stages (as timm's ResNet): from the stage that would
            reach a larger stride on, blocks keep stride 1 and dilate their 3x3 windows instead (2, then 4).
        attn_layer: attention module inserted after bn3 of every block of ``attn_stages``.
        attn_stages: 0-based stage indices (0 = ``layer1``) that get ``attn_layer``.
        cot_kwargs: options for every CoT layer (see :data:`cot.cot_layer.ABLATIONS`).
        recompute_stages: 0-based stages whose CoT layers checkpoint everything after their convolutions
            on x (``CotLayer(memory_efficient=True)``). The default leaves out the last stage, whose small
            maps hold few of the activations. ``cot_kwargs["memory_efficient"]`` overrides it everywhere.
        zero_init_last: zero-initialise each block's bn3 weight.
    """

    def __init__(
        self,
        layers: Sequence[int] = (3, 4, 6, 3),
        conv_types: Sequence[str] = ("cot", "cot", "cot", "cot"),
        cardinality: int = 1,
        base_width: int = 64,
        deep_stem: bool = False,
        stem_width: int = 64,
        avg_down: bool = False,
        blur_down: bool = False,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        drop_block_rate: float = 0.0,
        output_stride: int = 32,
        attn_layer: AttnLayerSpec = None,
        attn_stages: Sequence[int] = (0, 1, 2, 3),
        cot_kwargs: dict[str, Any] | None = None,
        recompute_stages: Sequence[int] = (0, 1, 2),
        zero_init_last: bool = True,
    ) -> None:
        super().__init__()
        if len(layers) != 4 or len(conv_types) != 4 or any(t not in _CONV_TYPES for t in conv_types):
            raise ValueError(f"need 4 stages with conv_types from {_CONV_TYPES}, got {layers}, {conv_types}")
        for option, indices in (("attn_stages", attn_stages), ("recompute_stages", recompute_stages)):
            if any(i not in range(4) for i in indices):
                raise ValueError(f"{option} are 0-based stage indices in 0..3, got {tuple(indices)}")
        if output_stride not in _OUTPUT_STRIDES:
            raise ValueError(f"output_stride must be one of {_OUTPUT_STRIDES}, got {output_stride!r}")
        if not 0.0 <= drop_block_rate < 1.0:
            raise ValueError(f"drop_block_rate must be in [0, 1), got {drop_block_rate!r}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False

        in_chs = 2 * stem_width if deep_stem else 64
        if deep_stem:
            self.conv1: nn.Module = nn.Sequential(
                nn.Conv2d(in_chans, stem_width, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(stem_width),
                nn.ReLU(inplace=True),
                nn.Conv2d(stem_width, stem_width, 3, padding=1, bias=False),
                nn.BatchNorm2d(stem_width),
                nn.ReLU(inplace=True),
                nn.Conv2d(stem_width, in_chs, 3, padding=1, bias=False),
            )
        else:
            self.conv1 = nn.Conv2d(in_chans, in_chs, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(in_chs)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool: nn.Module = nn.Identity() if deep_stem else nn.MaxPool2d(3, stride=2, padding=1)
        self.feature_info = [dict(num_chs=in_chs, reduction=2, module="act1")]

        stages: list[nn.Sequential] = []
        total_blocks = sum(layers)
        block_idx = 0
        net_stride = 2 if deep_stem else 4  # after the max-pool
        dilation = prev_dilation = 1
        drop_blocks = [None, None] + [
            partial(_DropBlock, drop_prob=drop_block_rate, block_size=size, gamma_scale=gamma)
            if drop_block_rate > 0
            else None
            for size, gamma in ((5, 0.25), (3, 1.0))
        ]
        for stage_idx, (planes, depth) in enumerate(zip((64, 128, 256, 512), layers)):
            stride = 2 if (stage_idx > 0 or deep_stem) else 1
            if net_stride >= output_stride:  # dilate instead of striding (output_stride 8 / 16)
                dilation *= stride
                stride = 1
            else:
                net_stride *= stride
            out_chs = planes * CotBottleneck.expansion
            blocks = []
            for i in range(depth):
                conv_type = conv_types[stage_idx]
                if conv_type == "alt":
                    conv_type = "cot" if i % 2 == 0 else "se"
                blocks.append(
                    CotBottleneck(
                        in_chs,
                        planes,
                        stride=stride if i == 0 else 1,
                        downsample=_downsample(in_chs, out_chs, stride, avg_down) if i == 0 else None,
                        conv_type=conv_type,
                        cardinality=cardinality,
                        base_width=base_width,
                        blur_down=blur_down,
                        # the first block keeps the previous dilation, where the stride would have been
                        dilation=prev_dilation if i == 0 else dilation,
                        attn_layer=attn_layer if stage_idx in attn_stages else None,
                        drop_path=drop_path_rate * block_idx / max(total_blocks - 1, 1),
                        drop_block=drop_blocks[stage_idx],
                        cot_kwargs={"memory_efficient": stage_idx in recompute_stages, **(cot_kwargs or {})},
                    )
                )
                in_chs = out_chs
                block_idx += 1
            prev_dilation = dilation
            stages.append(nn.Sequential(*blocks))
            self.feature_info.append(
                dict(num_chs=out_chs, reduction=net_stride, module=f"layer{stage_idx + 1}")
            )

        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.num_features = self.head_hidden_size = in_chs
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool)
        self._init_weights(zero_init_last)

    def _init_weights(self, zero_init_last: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_last:
            for m in self.modules():
                if isinstance(m, CotBottleneck):
                    m.zero_init_last()
        reset_attn_layers(self)  # the attn_layer modules' own init (the GC zero init) after ours

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(stem=r"^conv1|bn1|maxpool", blocks=r"^layer(\d+)" if coarse else r"^layer(\d+)\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head; ``num_classes=0`` removes the classifier, ``global_pool=''`` the pooling."""
        self.num_classes = num_classes
        pool_type = global_pool if global_pool is not None else self.global_pool.pool_type
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=pool_type)

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        check_image_input(x, self.in_chans, 32)
        return self.act1(self.bn1(self.conv1(x)))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | tuple[int, ...] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Features of the stem (index 0, stride 2) and of ``layer1`` .. ``layer4`` (indices 1-4, strides 4-32
        capped at ``output_stride``).

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
        intermediates = []
        x = self._stem(x)
        if 0 in take_indices:
            intermediates.append(x)
        x = self.maxpool(x)
        stages = [self.layer1, self.layer2, self.layer3, self.layer4]
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
        take_indices, max_index = feature_take_indices(5, indices)
        for i in range(max_index + 1, 5):
            setattr(self, f"layer{i}", nn.Identity())
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> (B, num_features, H / output_stride, W / output_stride)."""
        x = self.maxpool(self._stem(x))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq([self.layer1, self.layer2, self.layer3, self.layer4], x, flatten=True)
        else:
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, num_features, h, w) -> (B, num_classes) logits, or the pooled features if ``pre_logits``."""
        x = self.global_pool(x)
        if self.drop_rate > 0.0:
            x = F.dropout(x, p=float(self.drop_rate), training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> (B, num_classes)."""
        return self.forward_head(self.forward_features(x))


def _create_cotnet(variant: str, pretrained: bool = False, **kwargs: Any) -> CoTNet:
    model = build_model_with_args(
        CoTNet,
        variant,
        pretrained,
        converter=CotConverter(),
        feature_cfg=dict(feature_cls="getter", out_indices=(1, 2, 3, 4)),
        **kwargs,
    )
    return cast(CoTNet, model)


_PAPER = "Contextual Transformer Networks for Visual Recognition"
_IDS = "arXiv:2107.12292, doi:10.1109/TPAMI.2022.3164083"
_ORIGIN = "https://github.com/JDAI-CV/CoTNet"


def _cfg(params: int, gflops: float, top1: float, **kwargs: Any) -> Any:
    kwargs.setdefault("first_conv", "conv1")
    return paper_cfg(
        paper_params=params,
        paper_gflops=gflops,
        paper_top1=top1,
        paper_name=_PAPER,
        paper_ids=_IDS,
        origin_url=_ORIGIN,
        classifier="fc",
        **kwargs,
    )


# The official checkpoints: Google Drive pages (with Baidu mirrors, access code "cotn") in the "Results on
# ImageNet" table of the official README; none is a direct download, so the tags name the page.
_DRIVE = "https://drive.google.com/file/d/{}/view?usp=sharing"
_WEIGHTS = {
    "cotnet50": "1SR5ezIu7LN943zHaUh4mC0ehxBVMqtfv",
    "cotnext50_2x48d": "1j6b5D3xcZ5L_bHiQV0WfqyOieqZLVOCv",
    "se_cotnetd_50": "1D2b5fr3lxpBpiFcCYBKngmmSgfVHt_56",
    "cotnet101": "11jExbPEg4Eq5PApisZyE5k-1CbRYnsQb",
    "cotnext101_2x48d": "1des5wgkBDUscQAs8IYOmKCKKUA46QLfJ",
    "se_cotnetd_101": "1PWIltQYpYZiDrpfZORRQzGzQeXVd2b2f",
    "se_cotnetd_152": "1MkMx0a8an3ikt6LZwClIOyabBnMfR91v",
    "se_cotnetd_152_320": "1E43T2jS37gR07p_FVWnjJNkMWeYMXgX9",
}
_NOTES = (
    "official checkpoint (timm trainer .pth.tar, weights under 'state_dict'): Google Drive, or Baidu with "
    "access code 'cotn', from the table at https://github.com/JDAI-CV/CoTNet#results-on-imagenet",
)


def _official(name: str, *args: Any, **kwargs: Any) -> Any:
    return _cfg(*args, weights_page=_DRIVE.format(_WEIGHTS[name]), notes=_NOTES, **kwargs)


_SE152 = dict(first_conv="conv1.0", pool_size=(8, 8), input_size=(3, 256, 256), crop_pct=0.888)

# params: the official models' exact counts; GFLOPs (MACs) and top-1 (350-epoch recipe): Tables 3, 4 and 7
default_cfgs = generate_default_cfgs(
    {
        "cotnet50.official_in1k": _official("cotnet50", 22_222_416, 3.3, 81.3),
        "cotnet101.official_in1k": _official("cotnet101", 38_272_048, 6.1, 82.8),
        "cotnext50_2x48d.official_in1k": _official("cotnext50_2x48d", 30_046_276, 4.3, 82.1),
        "cotnext101_2x48d.official_in1k": _official("cotnext101_2x48d", 53_346_068, 8.2, 83.2),
        "se_cotnetd_50.official_in1k": _official(
            "se_cotnetd_50", 23_107_784, 4.1, 81.6, first_conv="conv1.0"
        ),
        "se_cotnetd_101.official_in1k": _official(
            "se_cotnetd_101", 40_912_392, 8.5, 83.2, first_conv="conv1.0"
        ),
        "se_cotnetd_152.official_in1k": _official(
            "se_cotnetd_152", 55_783_688, 17.0, 84.0, paper_img_size=256, **_SE152
        ),
        # the same network, released separately for 320 px evaluation (official README: 84.6, 26.5 GFLOPs)
        "se_cotnetd_152.official_in1k_320": _official(
            "se_cotnetd_152_320",
            55_783_688,
            26.5,
            84.6,
            paper_img_size=320,
            **dict(_SE152, input_size=(3, 320, 320), pool_size=(10, 10)),
        ),
    }
)

_SE_D = dict(conv_types=("se", "se", "alt", "cot"), deep_stem=True, avg_down=True)


@register_model
def cotnet50(pretrained: bool = False, **kwargs: Any) -> CoTNet:
    """CoTNet-50: ResNet-50 with every 3x3 conv a CoT layer."""
    return _create_cotnet("cotnet50", pretrained, **dict(dict(layers=(3, 4, 6, 3)), **kwargs))


@register_model
def cotnet101(pretrained: bool = False, **kwargs: Any) -> CoTNet:
    """CoTNet-101."""
    return _create_cotnet("cotnet101", pretrained, **dict(dict(layers=(3, 4, 23, 3)), **kwargs))


@register_model
def cotnext50_2x48d(pretrained: bool = False, **kwargs: Any) -> CoTNet:
    """CoTNeXt-50 (2x48d): ResNeXt-50 widths with CoXt layers."""
    args = dict(layers=(3, 4, 6, 3), cardinality=2, base_width=48)
    return _create_cotnet("cotnext50_2x48d", pretrained, **dict(args, **kwargs))


@register_model
def cotnext101_2x48d(pretrained: bool = False, **kwargs: Any) -> CoTNet:
    """CoTNeXt-101 (2x48d)."""
    args = dict(layers=(3, 4, 23, 3), cardinality=2, base_width=48)
    return _create_cotnet("cotnext101_2x48d", pretrained, **dict(args, **kwargs))


@register_model
def se_cotnetd_50(pretrained: bool = False, **kwargs: Any) -> CoTNet:
    """SE-CoTNetD-50: ResNet-D, SE convs in res2-res3, SE/CoT alternating in res4, CoT in res5."""
    args = dict(layers=(3, 4, 6, 3), stem_width=32, **_SE_D)
    return _create_cotnet("se_cotnetd_50", pretrained, **dict(args, **kwargs))


@register_model
def se_cotnetd_101(pretrained: bool = False, **kwargs: Any) -> CoTNet:
    """SE-CoTNetD-101."""
    args = dict(layers=(3, 4, 23, 3), stem_width=64, **_SE_D)
    return _create_cotnet("se_cotnetd_101", pretrained, **dict(args, **kwargs))


@register_model
def se_cotnetd_152(pretrained: bool = False, **kwargs: Any) -> CoTNet:
    """SE-CoTNetD-152 (default input 256): blur-pool down-sampling after conv2."""
    args = dict(layers=(3, 8, 36, 3), stem_width=64, blur_down=True, **_SE_D)
    return _create_cotnet("se_cotnetd_152", pretrained, **dict(args, **kwargs))
