"""Model construction through ctxnets-shared's ``build_model_with_args`` (timm's builder that also records
the constructor kwargs for ``save_pretrained``), falling back to timm's ``build_model_with_cfg``."""

from __future__ import annotations

from typing import Any

try:
    from ctxnets_shared.models import build_model_with_args as _build  # type: ignore[attr-defined]
except ImportError:  # ctxnets-shared before the model-contract kit
    from timm.models import build_model_with_cfg as _build  # type: ignore[assignment]

__all__ = ["build_model"]


def build_model(cls: type, variant: str, pretrained: bool, **kwargs: Any) -> Any:
    """``build_model_with_args(cls, variant, pretrained, **kwargs)``."""
    return _build(cls, variant, pretrained, **kwargs)
