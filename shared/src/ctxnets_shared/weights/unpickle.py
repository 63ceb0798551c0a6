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

The same holds for legacy (pre-zip, torch < 1.6) files: their pickle is scanned for globals as the zip
format's is. A crafted pickle that calls an allowed constructor with bad arguments (``numpy.dtype("bogus")``,
a tensor rebuilt from wrong types) is a :class:`~ctxnets_shared.weights.errors.WeightsFileError`, and an
ndarray whose stated size its data does not hold (``2**40`` elements from a few bytes) is refused before
numpy allocates it.
"""

from __future__ import annotations

import argparse
import math
import os
import pickle
import pickletools
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


def _checked_array_type() -> tuple[type, Any]:
    """An ndarray subclass whose ``__setstate__`` checks the stated size against the data first, and a
    ``_reconstruct`` that builds it (numpy's own allocates whatever shape the pickle states)."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    reconstruct = core.multiarray._reconstruct

    class _CheckedArray(np.ndarray):
        def __setstate__(self, state: Any) -> None:
            if not isinstance(state, tuple) or len(state) not in (4, 5):
                raise pickle.UnpicklingError(f"malformed ndarray state ({type(state).__name__})")
            shape, dtype, _, data = state[-4:]
            if not isinstance(dtype, np.dtype) or not isinstance(shape, tuple):
                raise pickle.UnpicklingError("malformed ndarray state: no shape tuple and dtype")
            if not all(isinstance(n, int) and n >= 0 for n in shape):
                raise pickle.UnpicklingError(f"malformed ndarray shape {shape}")
            count = math.prod(shape)
            held = len(data) if dtype.hasobject else len(data) // max(1, dtype.itemsize)
            if dtype.hasobject != isinstance(data, list) or count != held:
                raise pickle.UnpicklingError(
                    f"malformed ndarray: shape {shape} ({count} elements) but its data holds {held}; "
                    f"refused before allocating"
                )
            super().__setstate__(state)

    def _reconstruct(subtype: type, shape: Any, dtype: Any) -> Any:
        # numpy pickles every array as _reconstruct(ndarray, (0,), b"b") and then fills it from its state
        if subtype is not np.ndarray or shape != (0,):
            raise pickle.UnpicklingError(f"malformed ndarray: _reconstruct of shape {shape!r}")
        return reconstruct(_CheckedArray, shape, dtype)

    return _CheckedArray, _reconstruct


def _numpy_globals() -> list[Any]:
    try:
        import numpy as np
    except ImportError:  # without numpy its globals become stand-ins and a numpy scalar call is refused
        return []
    core = getattr(np, "_core", None) or np.core
    checked, reconstruct = _checked_array_type()
    found: list[Any] = [np.dtype, np.ndarray, core.multiarray.scalar, (checked, "ctxnets.CheckedArray")]
    found += [(core.multiarray.scalar, "numpy.core.multiarray.scalar")]
    found += [(reconstruct, f"{core.multiarray.__name__}._reconstruct")]
    found += [(reconstruct, "numpy.core.multiarray._reconstruct")]
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


def _legacy_globals(path: Path) -> list[str]:
    """The globals named in a legacy file's pickles (magic number, protocol, system info, the object)."""
    found: list[str] = []
    with path.open("rb") as f:
        for _ in range(4):  # a plain pickle.dump file holds just one
            if not f.peek(1):
                break
            strings: list[str] = []
            for op, arg, _ in pickletools.genops(f):
                if op.name == "GLOBAL":
                    found.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
    return found


def _unsafe_globals(path: Path) -> list[str]:
    if zipfile.is_zipfile(path):
        return torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    from torch._weights_only_unpickler import _get_allowed_globals

    safe = set(_get_allowed_globals())
    return [g for g in dict.fromkeys(_legacy_globals(path)) if g not in safe]


def _plain_arrays(obj: Any, checked: Any) -> Any:
    """Turn the checked ndarray subclass back into plain ndarrays inside loaded containers."""
    if checked is None:
        return obj
    if isinstance(obj, checked):
        return obj.view(checked.__bases__[0])
    if isinstance(obj, dict):
        for k, v in obj.items():
            obj[k] = _plain_arrays(v, checked)
        for k, v in getattr(obj, "__dict__", {}).items():
            setattr(obj, k, _plain_arrays(v, checked))
    elif isinstance(obj, list):
        obj[:] = [_plain_arrays(v, checked) for v in obj]
    elif isinstance(obj, tuple):
        return type(obj)(_plain_arrays(v, checked) for v in obj) if type(obj) is tuple else obj
    elif isinstance(obj, argparse.Namespace):
        for k, v in vars(obj).items():
            setattr(obj, k, _plain_arrays(v, checked))
    return obj


def load_checkpoint(path: str | os.PathLike[str]) -> Any:
    """``torch.load(path, weights_only=True)`` with inert stand-ins for trainer objects (see module doc).

    Raises:
        WeightsFileError: missing, truncated, corrupted, malformed, or not a checkpoint at all.
        UnsafeCheckpointError: loading it would call a function (run code); nothing was called.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsFileError(f"checkpoint not found: {path}")
    _check_format(path)
    allowed: list[Any] = [argparse.Namespace, *_numpy_globals()]
    known = {f"{g.__module__}.{g.__qualname__}" for g in allowed if not isinstance(g, tuple)}
    known |= {g[1] for g in allowed if isinstance(g, tuple)}
    checked = next((g[0] for g in allowed if isinstance(g, tuple) and g[1] == "ctxnets.CheckedArray"), None)
    try:
        needed = _unsafe_globals(path)
    except Exception as e:  # a zip that is not a torch.save archive, or a damaged one
        raise WeightsFileError(
            f"{path} is not a readable PyTorch checkpoint (truncated or corrupted?): {_first_line(e)}"
        ) from e
    allowed += [(_stand_in_for(g), g) for g in needed if g not in known]
    try:
        with torch.serialization.safe_globals(allowed):
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = _first_reason(e)
        if reason.startswith("malformed"):
            raise WeightsFileError(f"{path} holds a {reason}") from e
        raise UnsafeCheckpointError(
            f"{path} was refused: loading it would run code ({reason}); only tensors, containers, "
            f"numbers and plain objects (as inert stand-ins) are read"
        ) from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, KeyError) as e:
        raise WeightsFileError(
            f"{path} is not a readable PyTorch checkpoint (truncated or corrupted?): {_first_line(e)}"
        ) from e
    except (TypeError, ValueError, AttributeError, IndexError, OverflowError, MemoryError) as e:
        # an allowed constructor called with arguments it rejects: numpy.dtype("bogus"), Namespace(1), ...
        raise WeightsFileError(
            f"{path} holds a malformed object ({type(e).__name__}: {_first_line(e)})"
        ) from e
    _refuse_pickled_module(loaded, path)
    return _plain_arrays(loaded, checked)


def _refuse_pickled_module(obj: Any, path: Path) -> None:
    # torch.save(model) pickles the module object: its stand-in carries nn.Module's own attributes
    if isinstance(obj, dict) and hasattr(obj, "ctxnets_stand_in") and hasattr(obj, "_parameters"):
        raise WeightsFileError(
            f"{path} holds a pickled nn.Module ({obj.ctxnets_stand_in}), not weights: save its state_dict "
            f"(torch.save(model.state_dict(), ...)) and convert that"
        )


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _first_reason(e: BaseException) -> str:
    text = str(e)
    for line in text.splitlines():
        if any(w in line for w in ("calls", "Unsupported global", "blocked", "unrecognized", "malformed")):
            return line.strip().removeprefix("WeightsUnpickler error: ")
    return text.splitlines()[0] if text else type(e).__name__
