"""Reading trainer checkpoints without running code: inert stand-ins for what trainers pickle beside weights.

Official trainers save more than tensors: CoTNet's and Container's put ``args`` (an ``argparse.Namespace``)
in every checkpoint, detectron2-style ones a yacs ``CfgNode``, others numpy scalars. torch's weights-only
unpickler refuses all of them. :func:`load_checkpoint` keeps that unpickler and lets it through only what
cannot run code:

- ``argparse.Namespace`` and numpy's scalar/array/dtype reconstructors (numpy's own constructors, which run
  no user code) are allowed as themselves;
- any other class that the pickle *instantiates* (``NEWOBJ``: ``cls.__new__`` and then a state dict, the way
  pickle stores plain objects and dict subclasses) becomes an inert stand-in: a ``collections.OrderedDict``
  holding the object's items, with its attributes as attributes and a ``ctxnets_stand_in`` attribute
  naming the class it replaces (an exact OrderedDict, the only mapping the weights-only unpickler fills);
- a pickle that *calls* one of those globals at load time (``REDUCE``: a ``__reduce__`` that returns
  ``(os.system, ...)``, say) is refused with :class:`~ctxnets_shared.weights.errors.UnsafeCheckpointError`
  before anything is called.
"""

from __future__ import annotations

import argparse
import os
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from ctxnets_shared.weights.errors import UnsafeCheckpointError, WeightsFileError

__all__ = ["load_checkpoint"]

# legacy (pre-1.6) torch.save files start with a pickled magic number after the protocol header
_LEGACY_PICKLE_PREFIXES = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


class _RefusedCall(pickle.UnpicklingError):
    pass


def _stand_in_for(path: str) -> type:
    """A class the weights-only unpickler may instantiate under ``path``, but never call."""

    class _Meta(type):
        def __call__(cls, *args: Any, **kwargs: Any) -> Any:
            # REDUCE: the pickle calls this global with arguments at load time, as code execution does
            raise _RefusedCall(f"the checkpoint calls {path}(...) while loading")

    def __new__(cls: type, *args: Any, **kwargs: Any) -> OrderedDict[Any, Any]:
        # NEWOBJ: a plain object or dict subclass; the unpickler then fills this ordered dict's items and
        # __dict__ (both allowed on an exact OrderedDict)
        inst: OrderedDict[Any, Any] = OrderedDict()
        inst.ctxnets_stand_in = path  # type: ignore[attr-defined]
        return inst

    module, _, name = path.rpartition(".")
    return _Meta(name, (), {"__new__": __new__, "__module__": module, "__qualname__": name})


def _numpy_globals() -> list[Any]:
    try:
        import numpy as np
    except ImportError:  # without numpy its globals become stand-ins and a numpy scalar call is refused
        return []
    core = getattr(np, "_core", None) or np.core
    found: list[Any] = [np.dtype, np.ndarray, core.multiarray.scalar, core.multiarray._reconstruct]
    found += [(core.multiarray.scalar, "numpy.core.multiarray.scalar")]
    found += [(core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct")]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        found += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    return found


def _check_format(path: Path) -> None:
    with path.open("rb") as f:
        head = f.read(4)
    if zipfile.is_zipfile(path) or head.startswith(_LEGACY_PICKLE_PREFIXES):
        return
    if head.startswith(b"PK"):
        raise WeightsFileError(
            f"{path} is not a readable PyTorch checkpoint: a damaged zip archive (truncated or corrupted)"
        )
    raise WeightsFileError(
        f"{path} is not a PyTorch checkpoint (neither a torch.save zip archive nor a legacy pickle; "
        f"expected .pth, .pth.tar, .pt or .safetensors)"
    )


def load_checkpoint(path: str | os.PathLike[str]) -> Any:
    """``torch.load(path, weights_only=True)`` with inert stand-ins for trainer objects (see module doc).

    Raises:
        WeightsFileError: missing, truncated, corrupted or not a checkpoint at all.
        UnsafeCheckpointError: loading it would call a function (run code); nothing was called.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsFileError(f"checkpoint not found: {path}")
    _check_format(path)
    is_zip = zipfile.is_zipfile(path)
    allowed: list[Any] = [argparse.Namespace, *_numpy_globals()]
    known = {f"{g.__module__}.{g.__qualname__}" for g in allowed if not isinstance(g, tuple)}
    known |= {g[1] for g in allowed if isinstance(g, tuple)}
    try:
        needed = torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) if is_zip else []
    except Exception as e:  # a zip that is not a torch.save archive, or a damaged one
        raise WeightsFileError(
            f"{path} is not a readable PyTorch checkpoint (truncated or corrupted?): {e}"
        ) from e
    allowed += [(_stand_in_for(g), g) for g in needed if g not in known]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            f"{path} was refused: loading it would run code ({_first_reason(e)}); only tensors, containers, "
            f"numbers and plain objects (as inert stand-ins) are read"
        ) from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, KeyError) as e:
        raise WeightsFileError(
            f"{path} is not a readable PyTorch checkpoint (truncated or corrupted?): {e}"
        ) from e


def _first_reason(e: BaseException) -> str:
    text = str(e)
    for line in text.splitlines():
        if "calls" in line or "Unsupported global" in line or "blocked" in line or "unrecognized" in line:
            return line.strip().removeprefix("WeightsUnpickler error: ")
    return text.splitlines()[0] if text else type(e).__name__
