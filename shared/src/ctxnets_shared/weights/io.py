"""safetensors weights in timm's local-dir layout (``model.safetensors`` + ``config.json``).

A folder written by :func:`save_pretrained` is read by :func:`load_pretrained` and by timm itself:
``timm.create_model("local-dir:DIR", pretrained=True)``. Every file is written to a temporary name in the
target folder and renamed into place, so an interrupted save never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import safetensors
import safetensors.torch
import timm
import torch
import torch.nn as nn
from timm.models import PretrainedCfg

from ctxnets_shared.models.build import get_model_args
from ctxnets_shared.weights.errors import CheckpointMismatchError, WeightsFileError

__all__ = [
    "CONFIG_NAME",
    "MAX_NUM_CLASSES",
    "WEIGHTS_NAME",
    "atomic_write",
    "check_state_dict",
    "load_pretrained",
    "load_safetensors",
    "nonfinite_keys",
    "remove_stale_temp_files",
    "save_pretrained",
]

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
_TIMM_CFG_FIELDS = {f.name for f in dataclasses.fields(PretrainedCfg)}
_SOURCE_FIELDS = {"url", "file", "state_dict", "hf_hub_id", "hf_hub_filename", "source"}
#: config.json model_args that would make timm read or fetch another file, refused when loading a folder
_LOADING_ARGS = {"checkpoint_path", "pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"}
#: the largest class count a config.json may ask for (ImageNet-21k has 21,841; 1e5 leaves room)
MAX_NUM_CLASSES = 100_000
# atomic_write's temporary names: ".<target name>.<8 random characters>.tmp" (tempfile.mkstemp)
_TEMP_RE = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; rename it onto ``path`` only if the block succeeds.

    The file gets the permissions a plain ``open`` would give (0644 under umask 0022), not mkstemp's 0600.
    A process killed mid-write leaves a ``.<name>.<random>.tmp`` file that :func:`remove_stale_temp_files`
    clears.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def remove_stale_temp_files(folder: str | os.PathLike[str], *, depth: int = 1) -> list[Path]:
    """Delete the temporary files that killed :func:`atomic_write` calls left in ``folder``.

    Looks in ``folder`` and its subfolders down to ``depth`` levels. Call it only while no other process
    writes there (e.g. holding the run's lock). Returns the removed paths.
    """
    root = Path(folder)
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for entry in root.iterdir():
        if entry.is_dir() and not entry.is_symlink() and depth > 0:
            removed += remove_stale_temp_files(entry, depth=depth - 1)
        elif _TEMP_RE.match(entry.name) and entry.is_file():
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def nonfinite_keys(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """The keys of floating-point tensors holding NaN or Inf values."""
    return [
        k
        for k, v in state_dict.items()
        if (v.is_floating_point() or v.is_complex()) and not bool(torch.isfinite(v).all())
    ]


def _timm_cfg(pretrained_cfg: Any, num_classes: int | None, in_chans: int) -> dict[str, Any]:
    # timm rebuilds PretrainedCfg(**cfg) from config.json, so only its own fields may be written
    if dataclasses.is_dataclass(pretrained_cfg) and not isinstance(pretrained_cfg, type):
        pretrained_cfg = dataclasses.asdict(pretrained_cfg)
    cfg = dict(pretrained_cfg or {})
    # timm drops the classifier weights on load when the cfg's class count differs from the model's,
    # and re-derives the first conv from RGB weights when in_chans != 3: both must describe this model
    if num_classes is not None:
        cfg["num_classes"] = num_classes
    if in_chans != 3:
        cfg.pop("first_conv", None)
        if cfg.get("input_size"):
            cfg["input_size"] = (in_chans, *tuple(cfg["input_size"])[1:])
    return {
        k: (list(v) if isinstance(v, tuple) else v)
        for k, v in cfg.items()
        if k in _TIMM_CFG_FIELDS and k not in _SOURCE_FIELDS and v is not None
    }


def _json_model_args(model_args: Mapping[str, Any]) -> dict[str, Any]:
    """The kwargs as JSON values, or a clear error naming the one that cannot be written."""
    out: dict[str, Any] = {}
    for k, v in model_args.items():
        try:
            out[k] = json.loads(json.dumps(v))
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"constructor argument {k}={v!r} cannot be saved in config.json (only names, numbers, "
                f"lists and dicts can): build the model with a registered name instead of a callable, or "
                f"pass model_args= to save_pretrained"
            ) from e
    return out


def save_pretrained(
    model: nn.Module,
    out_dir: str | os.PathLike[str],
    *,
    architecture: str | None = None,
    model_args: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``out_dir`` (created if needed).

    Args:
        model: a timm-contract model (its ``pretrained_cfg`` names the architecture).
        out_dir: destination folder.
        architecture: registered model name, when the model's ``pretrained_cfg`` lacks one.
        model_args: constructor kwargs needed to rebuild it (e.g. ``{"attn_layer": "se"}``); by default
            the ones ``ctxnets_shared.models.build_model_with_args`` recorded when the model was built.

    Returns:
        The folder written.

    Raises:
        ValueError: a constructor argument that JSON cannot hold (a callable ``attn_layer``, say).
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise WeightsFileError(f"output path {out} exists and is not a folder")
    pretrained_cfg = getattr(model, "pretrained_cfg", None) or {}
    arch = architecture or dict(pretrained_cfg).get("architecture")
    if not arch:
        raise ValueError("model has no pretrained_cfg['architecture']; pass architecture=<registered name>")
    args = _json_model_args(get_model_args(model) if model_args is None else model_args)
    num_classes = getattr(model, "num_classes", None)
    if num_classes is not None and "num_classes" in args:
        args["num_classes"] = num_classes  # reset_classifier may have changed it since the build
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    config: dict[str, Any] = {
        "architecture": arch,
        "num_classes": num_classes,
        "num_features": getattr(model, "num_features", None),
        "pretrained_cfg": _timm_cfg(pretrained_cfg, num_classes, int(args.get("in_chans", 3))),
    }
    if args:
        config["model_args"] = args
    with atomic_write(out / WEIGHTS_NAME) as f:
        f.write(safetensors.torch.save(state, metadata={"format": "pt", "architecture": arch}))
    with atomic_write(out / CONFIG_NAME, "w") as f:
        json.dump(config, f, indent=2)
    return out


def load_safetensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a safetensors file to CPU tensors.

    Raises:
        WeightsFileError: the file is missing, truncated or not safetensors.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsFileError(f"weights file not found: {path}")
    try:
        return safetensors.torch.load_file(str(path), device="cpu")
    except (safetensors.SafetensorError, OSError, ValueError) as e:
        raise WeightsFileError(
            f"{path} is not a readable safetensors file (truncated or corrupted?): {e}"
        ) from e


def check_state_dict(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], context: str = "checkpoint"
) -> None:
    """Raise :class:`CheckpointMismatchError` listing every missing, unexpected and mis-shaped key.

    BatchNorm ``num_batches_tracked`` counters may be missing (older checkpoints lack them); they do not
    affect the forward pass and keep the model's value.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [
        (k, tuple(v.shape), tuple(own[k].shape))
        for k, v in state_dict.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(missing, unexpected, mismatched, context=context)


def _read_config(cfg_path: Path) -> dict[str, Any]:
    """config.json as a dict whose architecture and model_args are safe to build, or WeightsFileError."""
    try:
        config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise WeightsFileError(f"{cfg_path} is not valid JSON: {e}") from e
    except UnicodeDecodeError as e:
        raise WeightsFileError(f"{cfg_path} is not a text file: {e}") from e
    if not isinstance(config, dict):
        raise WeightsFileError(f"{cfg_path} holds a JSON {type(config).__name__}, expected an object")
    arch = config.get("architecture")
    if not isinstance(arch, str) or not arch:
        raise WeightsFileError(f"{cfg_path} has no 'architecture' (the registered model name)")
    if ":" in arch:
        raise WeightsFileError(
            f"{cfg_path} names architecture {arch!r}: a source prefix (hf-hub:, local-dir:, ...) is "
            f"refused, give the registered model name"
        )
    args = config.get("model_args") or {}
    if not isinstance(args, dict):
        raise WeightsFileError(f"{cfg_path}: 'model_args' must be an object, got {type(args).__name__}")
    refused = sorted(set(args) & _LOADING_ARGS)
    if refused:
        raise WeightsFileError(
            f"{cfg_path}: model_args {refused} would make timm read other files or download; refused "
            f"(a weights folder carries its weights in {WEIGHTS_NAME})"
        )
    counts = (("num_classes", config.get("num_classes")), ("model_args.num_classes", args.get("num_classes")))
    for where, n in counts:
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= MAX_NUM_CLASSES):
            raise WeightsFileError(f"{cfg_path}: {where}={n!r} is not a class count in 0..{MAX_NUM_CLASSES}")
    return config


def _create_checked(arch: str, kwargs: dict[str, Any], weights: Path, context: str) -> nn.Module:
    """Build ``arch`` for a weights file: first on the meta device (nothing allocated) to check the file's
    shapes, then for real. Models that cannot be built on meta skip the first step."""
    try:
        with torch.device("meta"):
            shell = timm.create_model(arch, pretrained=False, **kwargs)
    except TypeError as e:
        raise WeightsFileError(f"{context}: model_args do not fit {arch}: {str(e).splitlines()[0]}") from e
    except Exception:  # e.g. a constructor that calls .item(): checked after the real build instead
        shell = None
    if shell is not None:
        try:
            with safetensors.safe_open(str(weights), framework="pt") as f:
                shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}  # noqa: SIM118
        except (safetensors.SafetensorError, OSError, ValueError) as e:
            raise WeightsFileError(
                f"{weights} is not a readable safetensors file (truncated or corrupted?): {e}"
            ) from e
        meta = {k: torch.empty(shape, device="meta") for k, shape in shapes.items()}
        check_state_dict(shell, meta, context=str(weights))
    try:
        return timm.create_model(arch, pretrained=False, **kwargs)
    except TypeError as e:
        raise WeightsFileError(f"{context}: model_args do not fit {arch}: {str(e).splitlines()[0]}") from e


def load_pretrained(
    path: str | os.PathLike[str],
    model: nn.Module | None = None,
    *,
    device: str | torch.device = "cpu",
    **model_kwargs: Any,
) -> nn.Module:
    """Load a folder written by :func:`save_pretrained` (or a bare ``.safetensors`` file into ``model``).

    A folder's ``config.json`` is checked before anything is built: it must be an object naming a
    registered architecture (no ``hf-hub:`` or other source prefix), its ``model_args`` may not point timm
    at other files (``checkpoint_path``, ``pretrained_cfg_overlay``, ...), the class count must be at most
    :data:`MAX_NUM_CLASSES`, and the weights' shapes are compared with the architecture before its memory
    is allocated. Weights holding NaN or Inf values load with a warning naming them.

    Args:
        path: the folder, or a ``.safetensors`` file when ``model`` is given.
        model: a model to load into; None builds the architecture named in ``config.json`` through timm.
        device: where the returned model lives.
        **model_kwargs: extra ``timm.create_model`` kwargs when building (trusted, not checked).

    Returns:
        The model in eval mode, weights loaded with every key and shape checked.

    Raises:
        WeightsFileError: a missing or malformed folder, file or config.json.
        CheckpointMismatchError: the weights do not fit the model.
    """
    path = Path(path)
    if not path.exists():
        raise WeightsFileError(f"no such weights folder or file: {path}")
    if path.is_dir():
        cfg_path = path / CONFIG_NAME
        if not cfg_path.is_file():
            raise WeightsFileError(
                f"{path} has no {CONFIG_NAME}; expected a folder written by save_pretrained"
            )
        config = _read_config(cfg_path)
        weights = path / WEIGHTS_NAME
        if model is None:
            # importing installed packages registers their architectures with timm
            from ctxnets_shared.packages import discover_packages

            discover_packages()
            arch = config["architecture"]
            if not timm.is_model(arch):
                raise WeightsFileError(
                    f"{cfg_path} names architecture {arch!r}, which no installed package registers"
                )
            if not weights.is_file():
                raise WeightsFileError(f"weights file not found: {weights}")
            kwargs = dict(config.get("model_args") or {})
            if config.get("num_classes") is not None:
                kwargs["num_classes"] = config["num_classes"]
            kwargs.update(model_kwargs)
            model = _create_checked(arch, kwargs, weights, str(cfg_path))
    else:
        if model is None:
            raise ValueError(f"{path} is a single file: pass the model to load it into")
        weights = path
    state = load_safetensors(weights)
    check_state_dict(model, state, context=str(weights))
    bad = nonfinite_keys(state)
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        warnings.warn(f"{weights}: {len(bad)} tensor(s) hold NaN or Inf values: {shown}", stacklevel=2)
    model.load_state_dict(state, strict=False)  # strictness already enforced, bar num_batches_tracked
    return model.to(device).eval()
