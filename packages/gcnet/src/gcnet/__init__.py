"""Global Context Networks (GCNet).

Package skeleton: the models and blocks of this paper land with their own issue. Importing it registers
nothing with timm yet; `ctxnets list` shows it as installed with no models.
"""

from ctxnets_shared.packages import CtxnetsPackage, distribution_version

__version__ = distribution_version("gcnet")

CTXNETS_PACKAGE = CtxnetsPackage(
    distribution="gcnet", import_name="gcnet", paper="Global Context Networks (GCNet)"
)

__all__ = ["CTXNETS_PACKAGE", "__version__"]
