"""Official checkpoints through timm's own ``pretrained=True``, read without running code.

A model whose factory passes its converter to ``build_model_with_args`` loads the official file as
published::

    timm.create_model("cotnet50.official_in1k", pretrained=True,
                      pretrained_cfg_overlay=dict(file="cotnet50.pth.tar"))

timm resolves the tag and the overlay; :func:`official_checkpoint_overlay` then reads the file (or fetches
the cfg's ``url`` with timm's own download cache) with the weights-only unpickler of
:mod:`ctxnets_shared.weights.unpickle`, where timm's reader would refuse the trainer objects pickled beside
the weights (CoTNet's yacs config), and hands the weights to timm as the cfg's ``state_dict``. timm's
``load_pretrained`` then runs the converter as its ``pretrained_filter_fn``, adapts the classifier and first
conv to ``num_classes`` / ``in_chans``, and loads strictly. A tag whose weights sit behind a web page only
(``weights_page``) raises :class:`WeightsNotDownloadableError` saying where to get the file.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from timm.models import resolve_pretrained_cfg

from ctxnets_shared.weights.errors import WeightsNotDownloadableError
from ctxnets_shared.weights.io import nonfinite_keys

if TYPE_CHECKING:
    from ctxnets_shared.weights.convert import CheckpointConverter

__all__ = ["official_checkpoint_overlay"]


def _download(url: str, cache_dir: Any) -> str:
    # timm's own cache and its global progress / hash settings (set_pretrained_download_progress, ...)
    from timm.models import _builder, _hub

    return str(
        _hub.download_cached_file(
            url,
            check_hash=getattr(_builder, "_CHECK_HASH", False),
            progress=getattr(_builder, "_DOWNLOAD_PROGRESS", False),
            cache_dir=cache_dir,
        )
    )


def official_checkpoint_overlay(
    variant: str,
    converter: CheckpointConverter,
    *,
    pretrained_cfg: Any = None,
    pretrained_cfg_overlay: dict[str, Any] | None = None,
    cache_dir: Any = None,
) -> dict[str, Any] | None:
    """The ``pretrained_cfg_overlay`` that hands timm the official weights, read safely; None: timm's path.

    Args:
        variant: registered model name.
        converter: the package's converter (its ``unwrap`` picks the weights out of a training checkpoint).
        pretrained_cfg: the tag or cfg timm passed to the model factory.
        pretrained_cfg_overlay: the user's overlay (``file=...``, ``url=...``).
        cache_dir: timm's download cache override.

    Returns:
        The overlay with ``state_dict`` set, or None when timm's own loader applies (a ``local-dir:``
        folder, a hub id, an in-memory state dict, or a cfg without any weights).

    Raises:
        WeightsNotDownloadableError: the tag's weights exist only behind ``weights_page``.
        WeightsFileError / UnsafeCheckpointError: the file is unreadable, or would run code.
    """
    from ctxnets_shared.weights.convert import read_checkpoint

    cfg = resolve_pretrained_cfg(variant, pretrained_cfg, pretrained_cfg_overlay)
    if cfg.source in ("hf-hub", "local-dir") or cfg.state_dict or cfg.hf_hub_id:
        return None
    if cfg.file:
        path = str(cfg.file)
    elif cfg.url:
        path = _download(str(cfg.url), cache_dir)
    elif page := getattr(cfg, "weights_page", None):
        name = f"{variant}.{cfg.tag}" if cfg.tag else variant
        raise WeightsNotDownloadableError(
            f"{name}: the official checkpoint has no direct download link; download it from "
            f"{page} (listed at {cfg.origin_url}) and pass the file: "
            f"timm.create_model({name!r}, pretrained=True, pretrained_cfg_overlay=dict(file='PATH'))"
        )
    else:
        return None
    weights = converter.unwrap(read_checkpoint(path))
    bad = nonfinite_keys(weights)
    if bad:  # as load_pretrained: a warning, since a user may be inspecting a diverged run on purpose
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        warnings.warn(f"{path}: {len(bad)} tensor(s) hold NaN or Inf values: {shown}", stacklevel=2)
    return {**(pretrained_cfg_overlay or {}), "state_dict": weights}
