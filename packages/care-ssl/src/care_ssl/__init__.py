"""CARE: transformer-guided self-supervised learning.

Package skeleton: the models and blocks of this paper land with their own issue. Importing it registers
nothing with timm yet; `ctxnets list` shows it as installed with no models.
"""

from ctxnets_shared.packages import CtxnetsPackage, distribution_version

__version__ = distribution_version("care-ssl")

CTXNETS_PACKAGE = CtxnetsPackage(
    distribution="care-ssl", import_name="care_ssl", paper="CARE: transformer-guided self-supervised learning"
)

__all__ = ["CTXNETS_PACKAGE", "__version__"]
