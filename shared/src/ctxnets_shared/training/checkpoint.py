"""Atomic training checkpoints with an exact-resume state: safetensors for tensors, JSON for the rest.

A checkpoint is a pair ``ckpt-<step>.safetensors`` + ``ckpt-<step>.json`` in a folder, and a pointer file
``latest.json`` naming the newest complete pair. Each file is written to a temporary name and renamed
(:func:`ctxnets_shared.weights.atomic_write`), and the pointer is written last, so a process killed at any
moment leaves either the previous checkpoint or the new one, never a half-written file that resume would
read. Nothing is unpickled on load.

The state is any nest of dicts, lists, tuples, tensors, numbers, strings and None (a model's, an
optimizer's or a scheduler's ``state_dict()``, RNG states, counters): tensors go to the safetensors file
under their path in the nest, everything else to the JSON file, and :func:`load_state` rebuilds the nest
exactly (tuples stay tuples, integer dict keys stay integers).

:class:`Checkpointer` saves and resumes a whole training state (objects with ``state_dict()``, counters,
every rank's RNG states) from inside a DDP or single-process loop, together with the run's settings that
:func:`~ctxnets_shared.training.check_resume_settings` compares on ``--resume``.

A checkpoint that cannot be written (disk full, file too large) raises :class:`CheckpointWriteError` and
leaves the previous checkpoint as it was; a pointer or state file with wrong types or missing fields is a
:class:`~ctxnets_shared.weights.WeightsFileError` naming the file, never a ``KeyError``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import safetensors.torch
import torch
import torch.nn as nn

from ctxnets_shared.training.distributed import DistInfo, all_gather_object, barrier
from ctxnets_shared.training.rng import capture_rng_state, restore_rng_state
from ctxnets_shared.weights import WeightsFileError, atomic_write, check_state_dict, load_safetensors

__all__ = [
    "LATEST_NAME",
    "CheckpointWriteError",
    "Checkpointer",
    "ResumeInfo",
    "find_latest_checkpoint",
    "load_checkpoint",
    "load_state",
    "save_checkpoint",
    "save_state",
    "saved_settings",
]

LATEST_NAME = "latest.json"
_FORMAT = "ctxnets-train-state-1"
_CKPT_RE = re.compile(r"^ckpt-(\d+)\.json$")
_TENSORS_RE = re.compile(r"^ckpt-(\d+)\.safetensors$")


class CheckpointWriteError(ValueError):
    """A checkpoint could not be written (an ``OSError``: disk full, file too large, no permission).

    Nothing of it is left behind, and the previous checkpoint is still the latest.
    """


# ---- nest <-> (JSON, tensors) ----------------------------------------------------------------------------


def _flatten(obj: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        # clone: safetensors refuses tensors that share storage (tied weights, views)
        tensors[path] = obj.detach().to("cpu", copy=True).contiguous()
        return {"__tensor__": path}
    if isinstance(obj, np.ndarray):
        tensors[path] = torch.from_numpy(np.ascontiguousarray(obj).copy())
        return {"__ndarray__": path, "dtype": str(obj.dtype)}
    if isinstance(obj, Mapping):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _flatten(v, f"{path}/{k}", tensors) for k, v in obj.items()}
        return {"__items__": [[_key(k), _flatten(v, f"{path}/{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_flatten(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_flatten(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        if isinstance(obj, float) and not np.isfinite(obj):
            return {"__float__": repr(obj)}
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} at {path!r} in a checkpoint (not a plain value)")


def _key(k: Any) -> Any:
    if isinstance(k, (str, int, float, bool)) or k is None:
        return k
    raise TypeError(f"checkpoint dict keys must be str/int/float/bool, got {type(k).__name__}")


def _unflatten(obj: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__ndarray__" in obj:
        return tensors[obj["__ndarray__"]].numpy().astype(obj["dtype"], copy=False)
    if "__tuple__" in obj:
        return tuple(_unflatten(v, tensors) for v in obj["__tuple__"])
    if "__items__" in obj:
        return {k: _unflatten(v, tensors) for k, v in obj["__items__"]}
    if "__float__" in obj:
        return float(obj["__float__"])
    return {k: _unflatten(v, tensors) for k, v in obj.items()}


def save_state(
    state: Mapping[str, Any], tensors_path: str | os.PathLike[str], json_path: str | os.PathLike[str]
) -> None:
    """Write a nest to a safetensors file and a JSON file, each atomically (tensors first)."""
    tensors: dict[str, torch.Tensor] = {}
    meta = _flatten(dict(state), "", tensors)
    tensors_path, json_path = Path(tensors_path), Path(json_path)
    with atomic_write(tensors_path) as f:
        f.write(safetensors.torch.save(tensors, metadata={"format": "pt", "content": _FORMAT}))
    doc = {"format": _FORMAT, "tensors": tensors_path.name, "num_tensors": len(tensors), "state": meta}
    with atomic_write(json_path, "w") as f:
        json.dump(doc, f)


def load_state(json_path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a nest written by :func:`save_state` (tensors on CPU).

    Raises:
        WeightsFileError: a file is missing, truncated or does not match its partner.
    """
    json_path = Path(json_path)
    try:
        doc = json.loads(json_path.read_text())
    except FileNotFoundError as e:
        raise WeightsFileError(f"checkpoint state file not found: {json_path}") from e
    except json.JSONDecodeError as e:
        raise WeightsFileError(f"checkpoint state file {json_path} is not valid JSON: {e}") from e
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
        raise WeightsFileError(f"{json_path} is not a ctxnets training checkpoint")
    name, count = doc.get("tensors"), doc.get("num_tensors")
    if not isinstance(name, str) or Path(name).name != name or not name.endswith(".safetensors"):
        raise WeightsFileError(
            f"{json_path}: 'tensors' must name a .safetensors file beside it, got {name!r}"
        )
    if not isinstance(count, int) or isinstance(count, bool) or "state" not in doc:
        raise WeightsFileError(f"{json_path}: 'num_tensors' (an integer) or 'state' is missing or malformed")
    tensors = load_safetensors(json_path.parent / name)
    if len(tensors) != count:
        raise WeightsFileError(f"{name} holds {len(tensors)} tensors but {json_path.name} expects {count}")
    try:
        return _unflatten(doc["state"], tensors)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise WeightsFileError(f"{json_path}: malformed state ({type(e).__name__}: {e})") from e


# ---- checkpoint folders ----------------------------------------------------------------------------------


def save_checkpoint(
    out_dir: str | os.PathLike[str], step: int, state: Mapping[str, Any], *, keep: int = 2
) -> Path:
    """Write checkpoint ``step`` into ``out_dir`` and point ``latest.json`` at it; keep the newest ``keep``.

    Args:
        out_dir: checkpoint folder (created if needed).
        step: the optimizer step count the state belongs to (names the files).
        state: the nest to save, e.g. ``{"model": model.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": ..., "step": step, "epoch": epoch, "batch_in_epoch": k, "rng": [per-rank
            capture_rng_state()], ...}``.
        keep: complete checkpoints to keep (older ones are deleted after the pointer moves).

    Returns:
        The JSON file of the new checkpoint. Call from one process only (rank 0).
    """
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    out = Path(out_dir)
    json_path = out / f"ckpt-{step:08d}.json"
    tensors_path = out / f"ckpt-{step:08d}.safetensors"
    previous = None
    try:
        out.mkdir(parents=True, exist_ok=True)
        previous = _pointer_step(out)
        save_state(state, tensors_path, json_path)
        with atomic_write(out / LATEST_NAME, "w") as f:
            json.dump({"checkpoint": json_path.name, "step": step}, f)
    except OSError as e:
        if previous != step:  # a half-made pair of a new step: not resumable, take it away
            for p in (json_path, tensors_path):
                with contextlib.suppress(OSError):
                    p.unlink(missing_ok=True)
        kept = (
            f"the previous checkpoint (step {previous}) is kept"
            if previous is not None
            else "there is no earlier checkpoint"
        )
        raise CheckpointWriteError(
            f"cannot write the checkpoint of step {step} to {out}: {e.strerror or e}; {kept}"
        ) from e
    steps = sorted(int(m.group(1)) for p in out.iterdir() if (m := _CKPT_RE.match(p.name)))
    for old in steps[:-keep]:
        if old != step:
            for suffix in (".json", ".safetensors"):
                (out / f"ckpt-{old:08d}{suffix}").unlink(missing_ok=True)
    return json_path


def _pointer_step(folder: Path) -> int | None:
    try:
        found = find_latest_checkpoint(folder)
    except WeightsFileError:
        return None
    m = _CKPT_RE.match(found.name) if found is not None else None
    return int(m.group(1)) if m else None


def find_latest_checkpoint(path: str | os.PathLike[str]) -> Path | None:
    """The JSON file of the newest complete checkpoint in a folder (None if it holds none).

    ``path`` may also be a checkpoint's JSON file itself, returned as is.

    Raises:
        WeightsFileError: ``latest.json`` is not an object naming a ``ckpt-<step>.json`` file beside it.
    """
    path = Path(path)
    if path.is_file():
        return path
    pointer = path / LATEST_NAME
    if not pointer.is_file():
        return None
    try:
        doc = json.loads(pointer.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WeightsFileError(f"{pointer} is not a valid checkpoint pointer: {e}") from e
    name = doc.get("checkpoint") if isinstance(doc, dict) else None
    if not isinstance(name, str) or not _CKPT_RE.match(name):
        raise WeightsFileError(
            f"{pointer} is not a valid checkpoint pointer: expected "
            f'{{"checkpoint": "ckpt-<step>.json"}}, got {str(doc)[:80]}'
        )
    if not (path / name).is_file():
        raise WeightsFileError(f"{pointer} names {name}, which is missing")
    return path / name


def saved_settings(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The run settings stored with the newest checkpoint under ``path`` (its JSON only, no tensors).

    Raises:
        WeightsFileError: no checkpoint there, or it records no settings.
    """
    found = find_latest_checkpoint(path)
    if found is None:
        raise WeightsFileError(f"no checkpoint to resume from in {path} (no {LATEST_NAME})")
    try:
        doc = json.loads(found.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        raise WeightsFileError(f"checkpoint state file {found} is not readable JSON: {e}") from e
    progress = doc.get("state", {}).get("progress") if isinstance(doc, dict) else None
    settings = progress.get("settings") if isinstance(progress, dict) else None
    if not isinstance(settings, dict):
        raise WeightsFileError(
            f"{found} records no run settings (not written by a ctxnets training command?)"
        )
    return settings


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load the newest checkpoint of a folder (or a given checkpoint JSON file) as written by save_checkpoint.

    Raises:
        WeightsFileError: no checkpoint there, or its files are damaged.
    """
    found = find_latest_checkpoint(path)
    if found is None:
        raise WeightsFileError(f"no checkpoint to resume from in {path} (no {LATEST_NAME})")
    return load_state(found)


# ---- the training-loop helper ----------------------------------------------------------------------


class _Stateful(Protocol):
    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> Any: ...


@dataclass
class ResumeInfo:
    """Where a resumed run continues: the next step, the epoch and the batches of it already done."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class Checkpointer:
    """Save and resume a whole training state, under DDP or in one process.

    Every rank calls :meth:`save` (it gathers each rank's RNG states, then rank 0 writes) and
    :meth:`resume` (each rank reads the files and takes back its own RNG state).

    Args:
        out_dir: checkpoint folder.
        info: this process's :class:`DistInfo`.
        keep: complete checkpoints to keep.

    Example::

        ckpt = Checkpointer(out / "checkpoints", info)
        state = {"model": model, "ema": ema, "optimizer": opt, "scheduler": sched}
        start = ckpt.resume(args.resume, state) if args.resume else ResumeInfo()
        sampler.set_position(start.epoch, start.batch_in_epoch)
        ...
        ckpt.save(step, state, epoch=epoch, batch_in_epoch=k)
    """

    def __init__(
        self, out_dir: str | os.PathLike[str], info: DistInfo | None = None, *, keep: int = 2
    ) -> None:
        self.out_dir = Path(out_dir)
        self.info = info or DistInfo()
        self.keep = keep

    def save(
        self,
        step: int,
        objects: Mapping[str, _Stateful | None],
        *,
        epoch: int,
        batch_in_epoch: int,
        extra: Mapping[str, Any] | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> Path | None:
        """Write the state of ``objects`` (anything with ``state_dict()``: modules, optimizers,
        schedulers, grad scalers, ``timm.utils.ModelEmaV3``) plus counters and every rank's RNG.

        ``batch_in_epoch`` is the number of batches of ``epoch`` already trained; ``extra`` holds any
        further plain values (e.g. best accuracy); ``settings`` the run's settings that a resume must
        match (read back by :func:`saved_settings`). Returns the written JSON path on rank 0, None
        elsewhere.

        Raises:
            CheckpointWriteError: the files could not be written; the previous checkpoint stays.
        """
        rng = all_gather_object(capture_rng_state(), self.info)
        path = None
        if self.info.is_main:
            state: dict[str, Any] = {
                "objects": {name: obj.state_dict() for name, obj in objects.items() if obj is not None},
                "progress": {
                    "step": step,
                    "epoch": epoch,
                    "batch_in_epoch": batch_in_epoch,
                    "world_size": self.info.world_size,
                    "extra": dict(extra or {}),
                    "settings": dict(settings or {}),
                },
                "rng": rng,
            }
            path = save_checkpoint(self.out_dir, step, state, keep=self.keep)
        barrier(self.info)  # nobody races ahead (or exits) before the files are complete
        return path

    def resume(self, path: str | os.PathLike[str], objects: Mapping[str, _Stateful | None]) -> ResumeInfo:
        """Load the newest checkpoint under ``path`` into ``objects``, restore this rank's RNG states.

        Model weights are checked key by key first (a mismatch lists every differing key). A run resumed
        with a different number of processes keeps its weights and optimizer but cannot reproduce the
        uninterrupted run's random draws: the RNG states are then left as they are.

        Raises:
            WeightsFileError: no checkpoint there, damaged files, or a name in ``objects`` missing in it.
        """
        loaded = load_checkpoint(path)
        state, progress, rng = _check_layout(loaded, path)
        for name, obj in objects.items():
            if obj is None:
                continue
            if name not in state:
                raise WeightsFileError(f"checkpoint in {path} has no {name!r} state (it has {sorted(state)})")
            if isinstance(obj, nn.Module):
                check_state_dict(obj, state[name], context=f"{path} [{name}]")
            try:
                obj.load_state_dict(state[name])
            except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
                text = str(e).strip().splitlines()
                reason = text[0] if text else type(e).__name__
                raise WeightsFileError(f"checkpoint in {path}: {name!r} state does not fit ({reason})") from e
        if progress["world_size"] == self.info.world_size:
            try:
                restore_rng_state(rng[self.info.rank])
            except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
                raise WeightsFileError(f"checkpoint in {path}: malformed RNG state ({e})") from e
        return ResumeInfo(
            step=progress["step"],
            epoch=progress["epoch"],
            batch_in_epoch=progress["batch_in_epoch"],
            extra=dict(progress["extra"]),
        )


def _check_layout(
    loaded: Any, path: str | os.PathLike[str]
) -> tuple[dict[str, Any], dict[str, Any], list[Any]]:
    """The (objects, progress, rng) of a loaded checkpoint, or WeightsFileError naming what is wrong."""
    where = f"checkpoint in {path}"
    if not isinstance(loaded, dict):
        raise WeightsFileError(f"{where} is not a training state (a {type(loaded).__name__})")
    state, progress, rng = loaded.get("objects"), loaded.get("progress"), loaded.get("rng")
    if not isinstance(state, dict) or not isinstance(progress, dict) or not isinstance(rng, list):
        raise WeightsFileError(f"{where} lacks 'objects', 'progress' or 'rng' (or has them of wrong types)")
    for key in ("step", "epoch", "batch_in_epoch", "world_size"):
        value = progress.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise WeightsFileError(f"{where}: progress.{key} must be a non-negative integer, got {value!r}")
    if not isinstance(progress.get("extra", {}), dict):
        raise WeightsFileError(f"{where}: progress.extra must be an object")
    progress.setdefault("extra", {})
    if progress["world_size"] != len(rng):
        raise WeightsFileError(f"{where}: {len(rng)} RNG states for world_size {progress['world_size']}")
    return state, progress, rng
