"""Training plumbing shared by the ctxnets training commands (``hiri-vit train``, ``care-ssl pretrain``).

Needs the ``train`` extra (``pip install "ctxnets-shared[train]"``: scikit-learn for the embedded digits,
tqdm for progress bars, matplotlib for metric plots, Pillow for image folders).

* data: :func:`build_datasets` ("digits" or an ImageFolder path -> augmented train/val datasets),
  :func:`make_loader` (a DataLoader that keeps the global RNG untouched), :class:`DigitsDataset`,
  :class:`ImageFolderDataset`, :class:`AugmentedDataset`, :class:`DataError`;
  torch-only transforms in :mod:`ctxnets_shared.training.transforms`.
* distributed: :func:`init_distributed` (torchrun env -> gloo/nccl process group, or one plain process),
  :func:`wrap_model` (SyncBatchNorm + DDP), :func:`unwrap_model`, :class:`ResumableDistributedSampler`,
  :func:`cleanup_distributed`, :func:`all_reduce_mean`, :func:`barrier`.
* checkpoints: :class:`Checkpointer` (atomic safetensors + JSON, exact resume incl. every rank's RNG and
  the position inside the epoch), :func:`save_checkpoint` / :func:`load_checkpoint` for plain nests,
  :func:`saved_settings` and :func:`check_resume_settings` (a resume that would change the result is
  refused in one line).
* run safety: :class:`RunLock` (one run per output folder), :class:`StopOnSignal` (SIGINT/SIGTERM save a
  checkpoint and end with :class:`TrainingInterrupted`, exit status 130), :func:`check_input_fits` (an
  image size the model cannot take is one line), the one-line errors in
  :mod:`ctxnets_shared.training.errors` and :func:`run_command` (an error: exit status 2; a stop: 130).
* command lines: :func:`add_run_args` (``--device``, ``--workers``, ``--amp/--no-amp``,
  ``--warmup-epochs``, ``--no-progress``, the same in every command), :class:`DefaultsHelpFormatter`.
* RNG: :func:`seed_everything`, :func:`capture_rng_state`, :func:`restore_rng_state`.
* progress: :class:`Progress` (tqdm on the main process), :class:`MetricLogger` (JSON lines, trimmed on
  resume), :func:`plot_metrics` (a grid of panels, one per metric that has data).
"""

from ctxnets_shared.training.checkpoint import (
    LATEST_NAME,
    Checkpointer,
    CheckpointWriteError,
    ResumeInfo,
    find_latest_checkpoint,
    load_checkpoint,
    load_state,
    save_checkpoint,
    save_state,
    saved_settings,
)
from ctxnets_shared.training.cli_args import (
    DefaultsHelpFormatter,
    add_run_args,
    device_flag,
    resolve_device,
)
from ctxnets_shared.training.data import (
    AugmentedDataset,
    DataError,
    DataSplits,
    DigitsDataset,
    ImageFolderDataset,
    build_datasets,
    make_loader,
    sample_generator,
)
from ctxnets_shared.training.distributed import (
    DistInfo,
    ResumableDistributedSampler,
    all_gather_object,
    all_reduce_mean,
    barrier,
    cleanup_distributed,
    init_distributed,
    unwrap_model,
    wrap_model,
)
from ctxnets_shared.training.dry_run import check_input_fits
from ctxnets_shared.training.errors import (
    InputSizeError,
    ResumeSettingsError,
    RunLockedError,
    TrainingInterrupted,
    run_command,
)
from ctxnets_shared.training.interrupt import StopOnSignal
from ctxnets_shared.training.lock import LOCK_NAME, RunLock
from ctxnets_shared.training.progress import MetricLogger, Progress, plot_metrics, read_metrics
from ctxnets_shared.training.resume import check_resume_settings
from ctxnets_shared.training.rng import capture_rng_state, restore_rng_state, seed_everything
from ctxnets_shared.training.transforms import build_transform

__all__ = [
    "LATEST_NAME",
    "LOCK_NAME",
    "AugmentedDataset",
    "CheckpointWriteError",
    "Checkpointer",
    "DataError",
    "DataSplits",
    "DefaultsHelpFormatter",
    "DigitsDataset",
    "DistInfo",
    "ImageFolderDataset",
    "InputSizeError",
    "MetricLogger",
    "Progress",
    "ResumableDistributedSampler",
    "ResumeInfo",
    "ResumeSettingsError",
    "RunLock",
    "RunLockedError",
    "StopOnSignal",
    "TrainingInterrupted",
    "add_run_args",
    "all_gather_object",
    "all_reduce_mean",
    "barrier",
    "build_datasets",
    "build_transform",
    "capture_rng_state",
    "check_input_fits",
    "check_resume_settings",
    "cleanup_distributed",
    "device_flag",
    "find_latest_checkpoint",
    "init_distributed",
    "load_checkpoint",
    "load_state",
    "make_loader",
    "plot_metrics",
    "read_metrics",
    "resolve_device",
    "restore_rng_state",
    "run_command",
    "sample_generator",
    "save_checkpoint",
    "save_state",
    "saved_settings",
    "seed_everything",
    "unwrap_model",
    "wrap_model",
]
