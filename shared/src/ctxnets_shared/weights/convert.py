"""Base class for converters from official ``.pth`` / ``.pth.tar`` checkpoints to our safetensors folders.

Pickled checkpoints are read with ``torch.load(weights_only=True)``: tensors, containers and numbers load,
anything that would run code is refused with :class:`UnsafeCheckpointError`. A package subclasses
:class:`CheckpointConverter` and overrides :meth:`map_key` (and rarely :meth:`map_tensor`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn

from ctxnets_shared.weights.errors import CheckpointMismatchError, WeightsFileError
from ctxnets_shared.weights.io import check_state_dict, load_safetensors, nonfinite_keys, save_pretrained
from ctxnets_shared.weights.unpickle import load_checkpoint

__all__ = ["CheckpointConverter", "read_checkpoint"]


def read_checkpoint(path: str | os.PathLike[str]) -> Any:
    """Read a ``.pth``/``.pth.tar``/``.safetensors`` file without executing code.

    Trainer objects pickled beside the weights (``args`` Namespaces, yacs configs, numpy scalars) load as
    inert stand-ins (:mod:`ctxnets_shared.weights.unpickle`).

    Raises:
        WeightsFileError: missing, truncated, unreadable, or not a checkpoint at all.
        UnsafeCheckpointError: a pickle whose loading would call code (``os.system``, ...); nothing ran.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_safetensors(path)
    return load_checkpoint(path)


class CheckpointConverter:
    """Official checkpoint -> state dict with our keys -> verified safetensors folder.

    Class attributes:
        wrapper_keys: keys under which training checkpoints nest the weights, tried in order.
        ema_keys: the same for EMA weights, used when ``use_ema=True``.
        strip_prefixes: prefixes removed from the start of every key, in any order and repeatedly
            (DataParallel / DDP's ``module.``, torch.compile's ``_orig_mod.``).
        verified: one sentence on what the package's tests establish about this conversion (quoted by
            the model card of a published checkpoint).
    """

    wrapper_keys: tuple[str, ...] = ("state_dict", "model", "net", "module")
    ema_keys: tuple[str, ...] = ("state_dict_ema", "model_ema", "ema")
    strip_prefixes: tuple[str, ...] = ("module.", "_orig_mod.")
    verified: str = ""

    def __init__(self, use_ema: bool = False, allow_nonfinite: bool = False) -> None:
        self.use_ema = use_ema
        self.allow_nonfinite = allow_nonfinite

    def unwrap(self, ckpt: Any) -> dict[str, torch.Tensor]:
        """Pick the weights out of a training checkpoint and strip wrapper prefixes."""
        if not isinstance(ckpt, Mapping):
            raise WeightsFileError(f"checkpoint is a {type(ckpt).__name__}, expected a dict of tensors")
        # with use_ema only the EMA keys count: falling back to the regular weights would be silent
        keys = self.ema_keys if self.use_ema else self.wrapper_keys
        for k in keys:
            if isinstance(ckpt.get(k), Mapping):
                ckpt = ckpt[k]
                break
        else:
            if self.use_ema:
                found = ", ".join(repr(k) for k in list(ckpt)[:20]) or "none"
                raise WeightsFileError(
                    f"EMA weights requested but the checkpoint has none of {list(self.ema_keys)} "
                    f"(its top-level keys: {found})"
                )
        out: dict[str, torch.Tensor] = {}
        for k, v in ckpt.items():
            if not isinstance(v, torch.Tensor):
                continue  # e.g. epoch counters stored beside the weights
            out[self._strip(k)] = v
        if not out:
            raise WeightsFileError("checkpoint holds no tensors")
        return out

    def _strip(self, key: str) -> str:
        stripped = True
        while stripped:
            stripped = False
            for p in self.strip_prefixes:
                if key.startswith(p):
                    key, stripped = key[len(p) :], True
        return key

    def map_key(self, key: str) -> str | None:
        """Official key -> our key; None drops it. Identity by default (our keys equal the official ones)."""
        return key

    def map_tensor(self, key: str, tensor: torch.Tensor) -> torch.Tensor:
        """Hook for layout changes (our key, official tensor) -> our tensor."""
        return tensor

    def convert_state_dict(self, ckpt: Any, model: nn.Module) -> dict[str, torch.Tensor]:
        """Unwrap, map keys and tensors, and verify the result against ``model``.

        Raises:
            CheckpointMismatchError: listing every missing, unexpected and mis-shaped key.
            WeightsFileError: tensors with NaN or Inf values (unless ``allow_nonfinite``).
        """
        out: dict[str, torch.Tensor] = {}
        for k, v in self.unwrap(ckpt).items():
            new = self.map_key(k)
            if new is not None:
                out[new] = self.map_tensor(new, v)
        check_state_dict(model, out, context="converted checkpoint")
        bad = nonfinite_keys(out)
        if bad and not self.allow_nonfinite:
            shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            raise WeightsFileError(
                f"{len(bad)} tensor(s) hold NaN or Inf values ({shown}); pass --allow-nonfinite "
                f"(allow_nonfinite=True) to convert them anyway"
            )
        return out

    def convert(
        self,
        model_name: str,
        ckpt_path: str | os.PathLike[str],
        out_dir: str | os.PathLike[str],
        **model_kwargs: Any,
    ) -> Path:
        """Convert ``ckpt_path`` for timm model ``model_name`` into a safetensors folder ``out_dir``."""
        ckpt = read_checkpoint(ckpt_path)
        model = timm.create_model(model_name, pretrained=False, **model_kwargs)
        state = self.convert_state_dict(ckpt, model)
        model.load_state_dict(state, strict=False)  # check_state_dict already enforced every key
        return save_pretrained(model, out_dir, architecture=model_name, model_args=model_kwargs or None)

    def filter_fn(self, state_dict: Mapping[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
        """timm's ``pretrained_filter_fn``: official weights (or a whole training checkpoint) -> ours.

        Every key and shape is checked against ``model`` except the classifier's and the first conv's
        shapes, which timm adapts to ``num_classes`` / ``in_chans`` right after this filter; BatchNorm
        ``num_batches_tracked`` counters the checkpoint lacks are taken from the model, so timm's strict
        load accepts older files.

        Raises:
            CheckpointMismatchError: listing every missing, unexpected and mis-shaped key.
        """
        out: dict[str, torch.Tensor] = {}
        for k, v in self.unwrap(state_dict).items():
            new = self.map_key(k)
            if new is not None:
                out[new] = self.map_tensor(new, v)
        cfg = dict(getattr(model, "pretrained_cfg", None) or {})
        adapted = [
            f"{name}."
            for key in ("classifier", "first_conv")
            for name in ([cfg[key]] if isinstance(cfg.get(key), str) else list(cfg.get(key) or ()))
        ]
        own = model.state_dict()
        for k, v in own.items():
            if k.endswith("num_batches_tracked") and k not in out:
                out[k] = v.clone()
        free = tuple(adapted)  # timm adds, drops or reshapes these itself
        missing = [k for k in own if k not in out and not k.startswith(free)]
        unexpected = [k for k in out if k not in own and not k.startswith(free)]
        mismatched = [
            (k, tuple(v.shape), tuple(own[k].shape))
            for k, v in out.items()
            if k in own and tuple(v.shape) != tuple(own[k].shape) and not k.startswith(free)
        ]
        if missing or unexpected or mismatched:
            raise CheckpointMismatchError(missing, unexpected, mismatched, context="pretrained checkpoint")
        return out
