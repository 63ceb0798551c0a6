"""safetensors weights I/O and converters for official checkpoints."""

from ctxnets_shared.weights.convert import CheckpointConverter, read_checkpoint
from ctxnets_shared.weights.errors import (
    CheckpointMismatchError,
    UnsafeCheckpointError,
    WeightsFileError,
    WeightsNotDownloadableError,
)
from ctxnets_shared.weights.io import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    atomic_write,
    check_state_dict,
    load_pretrained,
    load_safetensors,
    nonfinite_keys,
    remove_stale_temp_files,
    save_pretrained,
)

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "CheckpointConverter",
    "CheckpointMismatchError",
    "UnsafeCheckpointError",
    "WeightsFileError",
    "WeightsNotDownloadableError",
    "atomic_write",
    "check_state_dict",
    "load_pretrained",
    "load_safetensors",
    "nonfinite_keys",
    "read_checkpoint",
    "remove_stale_temp_files",
    "save_pretrained",
]
