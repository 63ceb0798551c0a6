"""Put CoT layers into another convolutional network (Li et al., CoTNet, TPAMI, Sec. 3.3).

The paper's point is that a CoT block "can readily replace each 3x3 convolution" of a ResNet-style
network. :func:`replace_conv3x3` does that in place: every dense (ungrouped) square 3x3 convolution with
as many output as input channels becomes a :class:`~cot.cot_layer.CotLayer` (a stride-2 one becomes the
official ``AvgPool2d(3, 2, 1)`` followed by the CoT layer; a dilated one a CoT layer with dilated
windows). Grouped and depthwise 3x3 convolutions (ResNeXt, MobileNet-style blocks) are left alone: a CoT
layer mixes all channels, so it would change what those blocks compute and cost. The norm and activation
that followed the convolution stay; the new layers are freshly initialised, so the network needs
(re-)training.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.nn as nn

from cot.cot_layer import CotLayer

__all__ = ["replace_conv3x3"]


def _replaceable(conv: nn.Conv2d, share_planes: int, key_groups: int) -> bool:
    return (
        conv.kernel_size == (3, 3)
        and conv.groups == 1
        and conv.in_channels == conv.out_channels
        and conv.dilation[0] == conv.dilation[1]
        and conv.stride[0] == conv.stride[1]
        and conv.padding == conv.dilation
        and conv.in_channels % share_planes == 0
        and conv.in_channels % key_groups == 0
    )


def replace_conv3x3(
    model: nn.Module,
    *,
    layer_cls: Callable[..., nn.Module] = CotLayer,
    filter_fn: Callable[[str, nn.Conv2d], bool] | None = None,
    **layer_kwargs: Any,
) -> list[str]:
    """Replace, in place, every eligible 3x3 convolution of ``model`` by a CoT layer.

    Eligible: kernel 3x3, no groups (grouped and depthwise convs stay), ``in_channels == out_channels``,
    channels divisible by 8 (attention maps share 8 channels) and by the key conv's 4 groups; stride 1 or
    2; "same" padding (equal to the dilation; a dilated conv becomes a CoT layer with ``dilation``).

    Args:
        model: e.g. ``timm.create_model("resnet50")``.
        layer_cls: the replacement, called as ``layer_cls(channels, 3, **layer_kwargs)`` (CotLayer,
            CoXtLayer, or your own), plus ``dilation=d`` for a conv dilated by d > 1.
        filter_fn: ``(qualified_name, conv) -> bool`` to restrict which eligible convs are replaced
            (e.g. only ``layer3`` / ``layer4``).
        **layer_kwargs: options for ``layer_cls`` (e.g. an ablation from :data:`cot.cot_layer.ABLATIONS`).

    Returns:
        The qualified names of the replaced convolutions (never empty).

    Raises:
        ValueError: no convolution is eligible (or ``filter_fn`` kept none): nothing would change, which
            is almost always a wrong model or filter rather than the intent.
    """
    share_planes = int(layer_kwargs.get("share_planes", 8)) * int(layer_kwargs.get("groups", 1))
    key_groups = int(layer_kwargs.get("key_groups", 4))
    targets, eligible_count = [], 0
    for name, module in model.named_modules():
        eligible = isinstance(module, nn.Conv2d) and _replaceable(module, share_planes, key_groups)
        eligible_count += eligible
        if eligible and (filter_fn is None or filter_fn(name, module)):
            targets.append(name)
    if not targets:
        if eligible_count:
            raise ValueError(f"filter_fn kept none of the {eligible_count} eligible 3x3 convolutions")
        raise ValueError(
            f"{type(model).__name__} has no eligible 3x3 convolution: one needs kernel 3x3, groups=1, "
            f"in_channels == out_channels divisible by {share_planes} and {key_groups}, equal strides, "
            "and padding equal to its dilation"
        )
    for name in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        conv = getattr(parent, attr)
        dilation = conv.dilation[0]
        extra = {"dilation": dilation} if dilation > 1 else {}
        layer = layer_cls(conv.in_channels, 3, **layer_kwargs, **extra)
        stride = conv.stride[0]
        new: nn.Module = layer if stride == 1 else nn.Sequential(nn.AvgPool2d(3, stride, padding=1), layer)
        setattr(parent, attr, new.to(device=conv.weight.device, dtype=conv.weight.dtype))
    return targets
