"""Discovery of installed ctxnets packages through the ``ctxnets.packages`` entry-point group.

Each paper package declares ``[project.entry-points."ctxnets.packages"] <name> = "<module>:CTXNETS_PACKAGE"``.
Loading the entry point imports the package, which registers its timm models and attention names; the
:class:`CtxnetsPackage` it exposes tells the ``ctxnets`` command what it provides. Packages find each other
this way without importing each other.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, entry_points, version
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "ENTRY_POINT_GROUP",
    "Converter",
    "CtxnetsPackage",
    "UnknownModelError",
    "discover_packages",
    "distribution_version",
    "find_model",
]

ENTRY_POINT_GROUP = "ctxnets.packages"
_logger = logging.getLogger(__name__)


def distribution_version(distribution: str) -> str:
    """The installed version of ``distribution``; "0.0.0" when running from an uninstalled source tree."""
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "0.0.0"


class Converter(Protocol):
    """What ``ctxnets convert`` needs of a package's converter (``weights.CheckpointConverter`` is one).

    Declared here rather than imported so this module depends on nothing else of ours.
    """

    allow_nonfinite: bool  # convert weights holding NaN or Inf instead of refusing them

    def __init__(self, use_ema: bool = False) -> None: ...

    def convert(self, model_name: str, ckpt_path: Any, out_dir: Any, **model_kwargs: Any) -> Path: ...


class UnknownModelError(ValueError):
    """A model name that no installed ctxnets package registers."""


@dataclass(frozen=True)
class CtxnetsPackage:
    """What an installed ctxnets package provides.

    Attributes:
        distribution: pip name (``cotnet``).
        import_name: module name (``cot``).
        paper: short paper title.
        models: timm model names it registers.
        attn_layers: attention names it registers with ``register_attn_layer``.
        converter: converter for official checkpoints of its models, or None.
        citation: the paper's BibTeX (model cards of converted checkpoints quote it).
    """

    distribution: str
    import_name: str
    paper: str
    models: tuple[str, ...] = ()
    attn_layers: tuple[str, ...] = ()
    converter: Converter | None = field(default=None, compare=False)
    citation: str = ""


_CACHE: dict[str, CtxnetsPackage] | None = None


def discover_packages(refresh: bool = False) -> dict[str, CtxnetsPackage]:
    """Import every installed ctxnets package and return them by distribution name.

    A package whose import fails is logged and left out rather than breaking the others.
    """
    global _CACHE
    if _CACHE is not None and not refresh:
        return _CACHE
    found: dict[str, CtxnetsPackage] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            pkg = ep.load()
        except Exception as e:  # a broken plug-in must not hide the others
            _logger.warning("ctxnets package %r failed to import: %s", ep.name, e)
            continue
        if not isinstance(pkg, CtxnetsPackage):
            _logger.warning("entry point %r does not name a CtxnetsPackage", ep.name)
            continue
        found[pkg.distribution] = pkg
    _CACHE = dict(sorted(found.items()))
    return _CACHE


def find_model(model_name: str) -> CtxnetsPackage:
    """The installed package that registers ``model_name``.

    Raises:
        UnknownModelError: no installed package has it; the message lists the installed models.
    """
    pkgs = discover_packages()
    for pkg in pkgs.values():
        if model_name in pkg.models:
            return pkg
    known = [m for p in pkgs.values() for m in p.models]
    hint = ", ".join(known) if known else "none (no ctxnets model package is installed)"
    raise UnknownModelError(f"unknown model {model_name!r}; installed ctxnets models: {hint}")
