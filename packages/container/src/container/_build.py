"""Model construction through ctxnets-shared's ``build_model_with_args`` (timm's builder that also records
the constructor kwargs for ``save_pretrained``), falling back to timm's ``build_model_with_cfg``."""

from __future__ import annotations

from typing import Any

try:
    from ctxnets_shared.models import build_model_with_args as _build  # type: ignore[attr-defined]

    _TIMM_BUILD = False
except ImportError:  # ctxnets-shared before the model-contract kit
    from timm.models import build_model_with_cfg as _build  # type: ignore[assignment]

    _TIMM_BUILD = True

__all__ = ["build_model"]


def build_model(cls: type, variant: str, pretrained: bool, **kwargs: Any) -> Any:
    """``build_model_with_args(cls, variant, pretrained, **kwargs)``."""
    if _TIMM_BUILD and "converter" in kwargs:
        kwargs["pretrained_filter_fn"] = kwargs.pop("converter").filter_fn
    return _build(cls, variant, pretrained, **kwargs)
