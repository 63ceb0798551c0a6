"""ctxnets-shared: layer primitives, model plumbing, weights I/O, profiling and the ``ctxnets`` command.

Shared by the ctxnets paper packages (cotnet, gcnet, care-ssl, hiri-vit, container); holds only what more
than one of them needs.
"""

from importlib.metadata import PackageNotFoundError, version

from ctxnets_shared.packages import CtxnetsPackage, discover_packages, find_model

try:
    __version__ = version("ctxnets-shared")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0"

__all__ = ["CtxnetsPackage", "__version__", "discover_packages", "find_model"]
