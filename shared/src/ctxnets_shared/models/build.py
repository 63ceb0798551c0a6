"""Model building that remembers its constructor kwargs, so a saved model can be rebuilt as it was.

timm's ``build_model_with_cfg`` forgets the kwargs a model was created with. A model built with
``in_chans=1``, ``global_pool="max"`` or an ``attn_layer`` then cannot come back from a folder written by
``save_pretrained`` (keys differ, or worse, the pooling silently changes). :func:`build_model_with_args`
builds through timm and keeps those kwargs on the model; ``save_pretrained`` writes them as timm's
``model_args``, which ``timm.create_model("local-dir:...")`` passes back to the constructor.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch.nn as nn
from timm.models import build_model_with_cfg

if TYPE_CHECKING:
    from ctxnets_shared.weights.convert import CheckpointConverter

__all__ = ["MODEL_ARGS_ATTR", "build_model_with_args", "get_model_args"]

#: attribute holding the recorded kwargs on a built model
MODEL_ARGS_ATTR = "ctxnets_model_args"

# timm plumbing passed through the entry point, not constructor arguments of the architecture
_NOT_MODEL_ARGS = frozenset(
    {
        "pretrained_cfg",
        "pretrained_cfg_overlay",
        "cache_dir",
        "features_only",
        "out_indices",
        "feature_cfg",
        "feature_cls",
        "output_fmt",
        "pretrained_strict",
        "kwargs_filter",
        "pretrained_filter_fn",
    }
)


def build_model_with_args(
    model_cls: Callable[..., nn.Module],
    variant: str,
    pretrained: bool,
    converter: CheckpointConverter | None = None,
    **kwargs: Any,
) -> nn.Module:
    """``timm.models.build_model_with_cfg`` that also records the model's constructor kwargs.

    Args:
        model_cls: the model class.
        variant: registered model name.
        pretrained: load the cfg's weights: an official file (``pretrained_cfg_overlay=dict(file=...)``)
            or ``url`` through ``converter``, a ``local-dir:`` folder through timm.
        converter: the package's converter for official checkpoints; it becomes timm's
            ``pretrained_filter_fn`` and the file is read without running code
            (:mod:`ctxnets_shared.weights.pretrained`).
        **kwargs: as for ``build_model_with_cfg`` (``feature_cfg``, ...) plus the constructor kwargs.

    Returns:
        The model (or its features-only wrapper), with :data:`MODEL_ARGS_ATTR` set on the model itself.
    """
    model_args = {k: v for k, v in kwargs.items() if k not in _NOT_MODEL_ARGS}
    if converter is not None:
        kwargs.setdefault("pretrained_filter_fn", converter.filter_fn)
        if pretrained:
            _read_official_weights(variant, converter, kwargs)
    model = build_model_with_cfg(model_cls, variant, pretrained, **kwargs)
    target = getattr(model, "model", model) if kwargs.get("features_only") else model
    for m in (model, target):
        object.__setattr__(m, MODEL_ARGS_ATTR, dict(model_args))
        cfg = getattr(m, "pretrained_cfg", None)
        if isinstance(cfg, dict):
            cfg.pop(
                "state_dict", None
            )  # the weights are in the model; the cfg keeps only where they came from
    return model


def _read_official_weights(variant: str, converter: CheckpointConverter, kwargs: dict[str, Any]) -> None:
    # imported here: ctxnets_shared.weights imports this module
    from ctxnets_shared.weights.pretrained import official_checkpoint_overlay

    overlay = official_checkpoint_overlay(
        variant,
        converter,
        pretrained_cfg=kwargs.get("pretrained_cfg"),
        pretrained_cfg_overlay=kwargs.get("pretrained_cfg_overlay"),
        cache_dir=kwargs.get("cache_dir"),
    )
    if overlay is not None:
        kwargs["pretrained_cfg_overlay"] = overlay


def get_model_args(model: nn.Module) -> Mapping[str, Any]:
    """The constructor kwargs :func:`build_model_with_args` recorded (empty for other models)."""
    return dict(getattr(model, MODEL_ARGS_ATTR, None) or {})
