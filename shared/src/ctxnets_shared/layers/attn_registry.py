"""Attention-layer registry: one name space for timm's attention modules and the ctxnets packages' own.

A backbone's ``attn_layer`` argument may be a name (``"se"``, ``"eca"``, ``"cbam"``, or a name an installed
ctxnets package registers, such as gcnet's ``"gc"``), a callable ``channels -> nn.Module``, or None.
timm's own modules are also reachable as ``"timm.<name>"``. The names in :data:`PROVIDED_BY` belong to a
ctxnets package (timm's modules of the same spelling are not the papers' blocks): without that package
installed they are an error naming it, never a silent fallback to timm's module.
Packages register their names at import time with :func:`register_attn_layer`; a name that is not yet known
triggers discovery of installed packages through the ``ctxnets.packages`` entry-point group, so
``create_attn_layer("gc", 256)`` works in a process that never imported gcnet.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any, Union

import torch
import torch.nn as nn
from timm.layers import get_attn

__all__ = [
    "PROVIDED_BY",
    "AttnLayerSpec",
    "UnknownAttnLayerError",
    "create_attn_layer",
    "list_attn_layers",
    "register_attn_layer",
    "reset_attn_layers",
    "resolve_attn_layer",
]

AttnFactory = Callable[..., nn.Module]
AttnLayerSpec = Union[str, AttnFactory, None]  # noqa: UP007 - a runtime alias, 3.10 has no `|` on Callable

# the names timm.layers.get_attn maps to a module built from the channel count alone
# (timm/layers/create_attn.py); "bottleneck"/"halo" need a feature size and "ge" fails with defaults.
TIMM_ATTN_NAMES: tuple[str, ...] = (
    "se", "ese", "eca", "ecam", "ceca", "gc", "gca", "cbam", "lcbam", "coord", "scoord", "ela", "strip",
    "sk", "splat", "lambda", "nl", "bat",
)  # fmt: skip

#: names a ctxnets package provides -> that package's distribution name
PROVIDED_BY: dict[str, str] = {"gc": "gcnet", "nl": "gcnet", "snl": "gcnet"}
_TIMM_PREFIX = "timm."

_REGISTRY: dict[str, tuple[AttnFactory, str]] = {}
# modules create_attn_layer built from a registered name or a callable: they own their initialisation
_OWN_INIT: weakref.WeakSet[nn.Module] = weakref.WeakSet()


class UnknownAttnLayerError(ValueError):
    """Raised for an attention name that neither timm nor an installed ctxnets package provides."""


def register_attn_layer(
    name: str, factory: AttnFactory, *, source: str = "user", overwrite: bool = False
) -> None:
    """Register ``factory(channels, **kwargs) -> nn.Module`` under ``name``.

    A registered name shadows timm's name of the same spelling (gcnet registers the paper's ``"gc"`` block,
    which differs from timm's GlobalContext defaults).

    Args:
        name: lower-case attention name.
        factory: callable taking the channel count first.
        source: who registered it (a distribution name), shown by ``ctxnets info``.
        overwrite: allow replacing an existing registration from a different source.
    """
    key = name.lower()
    if key in _REGISTRY and not overwrite and _REGISTRY[key][1] != source:
        raise ValueError(f"attention layer {name!r} is already registered by {_REGISTRY[key][1]!r}")
    _REGISTRY[key] = (factory, source)


def list_attn_layers() -> dict[str, str]:
    """Every resolvable name and where it comes from (``"timm"`` or a distribution name)."""
    _discover()
    names = {n: "timm" for n in TIMM_ATTN_NAMES if n not in PROVIDED_BY}
    names.update({f"{_TIMM_PREFIX}{n}": "timm" for n in TIMM_ATTN_NAMES})
    names.update({n: src for n, (_, src) in _REGISTRY.items()})
    return dict(sorted(names.items()))


def _discover() -> None:
    # local import: packages.py imports this module's registry through the packages it loads
    from ctxnets_shared.packages import discover_packages

    discover_packages()


def resolve_attn_layer(attn_layer: AttnLayerSpec) -> AttnFactory | None:
    """Turn a name, a callable or None into a factory ``channels -> nn.Module`` (or None).

    Raises:
        UnknownAttnLayerError: ``attn_layer`` is a string no installed package or timm knows, or a name of
            a ctxnets package (:data:`PROVIDED_BY`) that is not installed.
        TypeError: ``attn_layer`` is neither a string, a callable nor None.
    """
    if attn_layer is None:
        return None
    if isinstance(attn_layer, str):
        key = attn_layer.lower()
        if key in ("", "none"):
            return None
        if key not in _REGISTRY:
            _discover()
        if key in _REGISTRY:
            return _REGISTRY[key][0]
        if key in PROVIDED_BY:
            raise UnknownAttnLayerError(
                f"attention layer {attn_layer!r} comes from the {PROVIDED_BY[key]} package, which is not "
                f"installed: pip install {PROVIDED_BY[key]} (timm's own module of that name is "
                f"{_TIMM_PREFIX}{key!s})"
            )
        timm_name = key.removeprefix(_TIMM_PREFIX)
        if timm_name in TIMM_ATTN_NAMES:
            timm_cls = get_attn(timm_name)
            assert timm_cls is not None
            return timm_cls
        valid = ", ".join(list_attn_layers())
        raise UnknownAttnLayerError(f"unknown attention layer {attn_layer!r}; valid names: {valid}")
    if callable(attn_layer):
        return attn_layer
    raise TypeError(
        f"attn_layer must be a name, a callable channels -> nn.Module, or None; got {attn_layer!r}"
    )


def create_attn_layer(
    attn_layer: AttnLayerSpec,
    channels: int,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    **kwargs: Any,
) -> nn.Module | None:
    """Build the attention module for a ``channels``-channel NCHW map (None when ``attn_layer`` is None).

    Args:
        attn_layer: a name, a callable ``channels -> nn.Module``, or None.
        channels: channel count C of the (B, C, H, W) map the module maps to itself.
        device: move the module there (timm's factory kwargs of the host block).
        dtype: cast its floating-point parameters and buffers to this dtype.
        **kwargs: passed to the factory.
    """
    if channels <= 0:
        raise ValueError(f"channels must be a positive integer, got {channels}")
    factory = resolve_attn_layer(attn_layer)
    if factory is None:
        return None
    module = factory(channels, **kwargs)
    if device is not None or dtype is not None:
        # built, then moved: any callable ``channels -> nn.Module`` is accepted, not only factories that
        # take timm's device/dtype kwargs
        module = module.to(device=device, dtype=dtype)
    if not isinstance(attn_layer, str) or attn_layer.lower() in _REGISTRY:  # not one of timm's modules
        _OWN_INIT.add(module)
    return module


def reset_attn_layers(model: nn.Module) -> int:
    """Re-run ``reset_parameters()`` of each attention module in ``model`` built from a registered name or a
    callable by :func:`create_attn_layer`.

    A host backbone's weight init (``self.apply(_init_weights)``, a loop over its convs) also reaches the
    modules its ``attn_layer`` hook inserted and overwrites their own initialisation, such as the GC
    block's zero last conv that makes it start as the identity (GCNet, Sec. 4.3). Hosts call this after
    their init. timm's modules (``"se"``, ``"eca"``, ...) keep the host's init, as in timm's own models.

    Returns:
        How many modules were reset.
    """
    count = 0
    for m in model.modules():
        reset = getattr(m, "reset_parameters", None)
        if m in _OWN_INIT and callable(reset):
            reset()
            count += 1
    return count
