"""Model plumbing on timm's public API: paper-aware cfgs, feature indices, input checks, building."""

from ctxnets_shared.models.build import MODEL_ARGS_ATTR, build_model_with_args, get_model_args
from ctxnets_shared.models.cfg import PAPER_FIELDS, PaperCfg, paper_cfg, paper_numbers
from ctxnets_shared.models.features import feature_take_indices
from ctxnets_shared.models.input_checks import check_image_input

__all__ = [
    "MODEL_ARGS_ATTR",
    "PAPER_FIELDS",
    "PaperCfg",
    "build_model_with_args",
    "check_image_input",
    "feature_take_indices",
    "get_model_args",
    "paper_cfg",
    "paper_numbers",
]
