"""ctxnets-shared: layer primitives, model plumbing, weights I/O, profiling and the ``ctxnets`` command.

Shared by the ctxnets paper packages (cotnet, gcnet, care-ssl, hiri-vit, container); holds only what more
than one of them needs.
"""

from ctxnets_shared.packages import CtxnetsPackage, discover_packages, distribution_version, find_model

__version__ = distribution_version("ctxnets-shared")

__all__ = ["CtxnetsPackage", "__version__", "discover_packages", "find_model"]
