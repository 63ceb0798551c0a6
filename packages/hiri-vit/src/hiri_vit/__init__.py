"""HIRI-ViT (Yao et al., "HIRI-ViT: Scaling Vision Transformer with High Resolution Inputs", TPAMI) for
timm, in pure PyTorch.

Importing the package registers hiri_vit_s, hiri_vit_b and hiri_vit_l with timm (default input 448).
"""

from ctxnets_shared.packages import CtxnetsPackage, distribution_version
from hiri_vit.cffn import CFFN, CFFNBlock
from hiri_vit.heads import AvgPoolHead, ClassAttentionBlock, ClassAttentionHead
from hiri_vit.hiri_vit import HiriStage, HiriViT
from hiri_vit.hr_block import HRBlock
from hiri_vit.hr_stem import HRStem
from hiri_vit.irds import IRDSa, IRDSb
from hiri_vit.transformer_block import MultiHeadAttention, TransformerBlock

__version__ = distribution_version("hiri-vit")

MODELS = ("hiri_vit_s", "hiri_vit_b", "hiri_vit_l")

CTXNETS_PACKAGE = CtxnetsPackage(
    distribution="hiri-vit",
    import_name="hiri_vit",
    paper="HIRI-ViT: Scaling Vision Transformer with High Resolution Inputs (TPAMI)",
    models=MODELS,
)

__all__ = [
    "CFFN",
    "CTXNETS_PACKAGE",
    "MODELS",
    "AvgPoolHead",
    "CFFNBlock",
    "ClassAttentionBlock",
    "ClassAttentionHead",
    "HRBlock",
    "HRStem",
    "HiriStage",
    "HiriViT",
    "IRDSa",
    "IRDSb",
    "MultiHeadAttention",
    "TransformerBlock",
    "__version__",
]
