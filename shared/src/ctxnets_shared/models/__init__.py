"""Model plumbing on timm's public API: paper-aware cfgs, feature indices, input checks."""

from ctxnets_shared.models.cfg import PAPER_FIELDS, PaperCfg, paper_cfg, paper_numbers
from ctxnets_shared.models.features import feature_take_indices
from ctxnets_shared.models.input_checks import check_image_input

__all__ = [
    "PAPER_FIELDS",
    "PaperCfg",
    "check_image_input",
    "feature_take_indices",
    "paper_cfg",
    "paper_numbers",
]
