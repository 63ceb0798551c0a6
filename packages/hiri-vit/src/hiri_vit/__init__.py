"""HIRI-ViT: high-resolution hybrid ViT.

Package skeleton: the models and blocks of this paper land with their own issue. Importing it registers
nothing with timm yet; `ctxnets list` shows it as installed with no models.
"""

from ctxnets_shared.packages import CtxnetsPackage, distribution_version

__version__ = distribution_version("hiri-vit")

CTXNETS_PACKAGE = CtxnetsPackage(
    distribution="hiri-vit", import_name="hiri_vit", paper="HIRI-ViT: high-resolution hybrid ViT"
)

__all__ = ["CTXNETS_PACKAGE", "__version__"]
