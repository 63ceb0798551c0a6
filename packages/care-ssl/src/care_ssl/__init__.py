"""CARE: transformer-guided self-supervised learning.

Package skeleton: the models and blocks of this paper land with their own issue. Importing it registers
nothing with timm yet; `ctxnets list` shows it as installed with no models.
"""

from importlib.metadata import PackageNotFoundError, version

from ctxnets_shared.packages import CtxnetsPackage

try:
    __version__ = version("care-ssl")
except PackageNotFoundError:
    __version__ = "0.0.0"

CTXNETS_PACKAGE = CtxnetsPackage(
    distribution="care-ssl", import_name="care_ssl", paper="CARE: transformer-guided self-supervised learning"
)

__all__ = ["CTXNETS_PACKAGE", "__version__"]
