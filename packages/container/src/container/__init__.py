"""Container: context aggregation networks.

Package skeleton: the models and blocks of this paper land with their own issue. Importing it registers
nothing with timm yet; `ctxnets list` shows it as installed with no models.
"""

from importlib.metadata import PackageNotFoundError, version

from ctxnets_shared.packages import CtxnetsPackage

try:
    __version__ = version("container")
except PackageNotFoundError:
    __version__ = "0.0.0"

CTXNETS_PACKAGE = CtxnetsPackage(
    distribution="container", import_name="container", paper="Container: context aggregation networks"
)

__all__ = ["CTXNETS_PACKAGE", "__version__"]
