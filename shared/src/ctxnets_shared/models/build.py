"""Model building that remembers its constructor kwargs, so a saved model can be rebuilt as it was.

timm's ``build_model_with_cfg`` forgets the kwargs a model was created with. A model built with
``in_chans=1``, ``global_pool="max"`` or an ``attn_layer`` then cannot come back from a folder written by
``save_pretrained`` (keys differ, or worse, the pooling silently changes). :func:`build_model_with_args`
builds through timm and keeps those kwargs on the model; ``save_pretrained`` writes them as timm's
``model_args``, which ``timm.create_model("local-dir:...")`` passes back to the constructor.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch.nn as nn
from timm.models import build_model_with_cfg

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
    **kwargs: Any,
) -> nn.Module:
    """``timm.models.build_model_with_cfg`` that also records the model's constructor kwargs.

    Args:
        model_cls: the model class.
        variant: registered model name.
        pretrained: load the cfg's weights (ctxnets cfgs name none, so only local-dir folders load).
        **kwargs: as for ``build_model_with_cfg`` (``feature_cfg``, ...) plus the constructor kwargs.

    Returns:
        The model (or its features-only wrapper), with :data:`MODEL_ARGS_ATTR` set on the model itself.
    """
    model_args = {k: v for k, v in kwargs.items() if k not in _NOT_MODEL_ARGS}
    model = build_model_with_cfg(model_cls, variant, pretrained, **kwargs)
    target = getattr(model, "model", model) if kwargs.get("features_only") else model
    for m in (model, target):
        object.__setattr__(m, MODEL_ARGS_ATTR, dict(model_args))
    return model


def get_model_args(model: nn.Module) -> Mapping[str, Any]:
    """The constructor kwargs :func:`build_model_with_args` recorded (empty for other models)."""
    return dict(getattr(model, MODEL_ARGS_ATTR, None) or {})
