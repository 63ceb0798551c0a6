"""torchrun / DDP set-up that also runs as a single plain process.

Under ``torchrun`` the environment carries ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``;
:func:`init_distributed` reads them and starts a process group (gloo on CPU, nccl on CUDA). Without them
it returns a single-process :class:`DistInfo` and every helper here becomes a no-op, so one training
script serves one CPU and many GPUs.

Typical use::

    dist_info = init_distributed()
    model = wrap_model(model.to(dist_info.device), dist_info)   # SyncBatchNorm + DDP when distributed
    sampler = ResumableDistributedSampler(dataset, dist_info, seed=seed)
    ...
    cleanup_distributed()
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, DistributedSampler

from ctxnets_shared.training.sync_batchnorm import convert_sync_batchnorm

__all__ = [
    "DistInfo",
    "ResumableDistributedSampler",
    "all_gather_object",
    "all_reduce_mean",
    "barrier",
    "cleanup_distributed",
    "init_distributed",
    "unwrap_model",
    "wrap_model",
]

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands.

    Attributes:
        rank: global rank (0 when not distributed).
        world_size: number of processes (1 when not distributed).
        local_rank: rank on this machine (selects the CUDA device).
        device: this process's device.
        backend: "gloo", "nccl", or None when not distributed.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        """True on the process that writes checkpoints, logs and progress bars."""
        return self.rank == 0


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError as e:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from e


def init_distributed(device: str | torch.device | None = None, timeout_s: float = 1800.0) -> DistInfo:
    """Read torchrun's environment and start the process group; single process without it.

    Args:
        device: "cpu", "cuda" or None (CUDA when available). Under torchrun a CUDA process uses
            ``cuda:LOCAL_RANK``.
        timeout_s: collective timeout.

    Returns:
        The :class:`DistInfo` of this process. Backend: nccl on CUDA, gloo on CPU.
    """
    want = torch.device(device) if device is not None else None
    use_cuda = (want.type == "cuda") if want is not None else torch.cuda.is_available()
    if use_cuda and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available; use --device cpu")
    world_size = _env_int("WORLD_SIZE")
    rank = _env_int("RANK")
    if world_size is None or rank is None or (world_size <= 1 and not dist.is_initialized()):
        dev = torch.device("cuda", torch.cuda.current_device()) if use_cuda else torch.device("cpu")
        if want is not None and want.type == "cuda" and want.index is not None:
            dev = want
        return DistInfo(device=dev)
    local_rank = _env_int("LOCAL_RANK") or 0
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev, backend = torch.device("cuda", local_rank), "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend,
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
            device_id=dev if use_cuda else None,
        )
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev, backend=backend)


def cleanup_distributed() -> None:
    """Destroy the process group if one is running (safe to call always)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for every process (no-op in a single process)."""
    if info.distributed:
        if info.backend == "nccl":
            dist.barrier(device_ids=[info.local_rank])
        else:
            dist.barrier()


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of ``value`` over all processes (a copy; the input is unchanged)."""
    out = value.detach().clone()
    if info.distributed:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out /= info.world_size
    return out


def all_gather_object(obj: T, info: DistInfo) -> list[T]:
    """``[obj of rank 0, obj of rank 1, ...]`` (picklable objects; ``[obj]`` in a single process)."""
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def wrap_model(
    model: nn.Module,
    info: DistInfo,
    *,
    sync_bn: bool = True,
    find_unused_parameters: bool = False,
    **ddp_kwargs: Any,
) -> nn.Module:
    """Move to ``info.device``; when distributed, synchronise BatchNorm and wrap in DDP.

    BatchNorm becomes ``nn.SyncBatchNorm`` on CUDA and
    :class:`~ctxnets_shared.training.sync_batchnorm.CollectiveBatchNorm` on CPU (torch's SyncBatchNorm is
    GPU-only), so the statistics span all processes in both cases.

    Single process: returns the model itself (on its device), unchanged otherwise.
    """
    model = model.to(info.device)
    if not info.distributed:
        return model
    if sync_bn:
        model = convert_sync_batchnorm(model, info.device)
    device_ids = [info.local_rank] if info.device.type == "cuda" else None
    return DistributedDataParallel(
        model, device_ids=device_ids, find_unused_parameters=find_unused_parameters, **ddp_kwargs
    )


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside DDP (and inside ``torch.compile``'s wrapper), or the model itself."""
    while True:
        if isinstance(model, DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            inner = model._orig_mod  # torch.compile's OptimizedModule
            assert isinstance(inner, nn.Module)
            model = inner
        else:
            return model


class ResumableDistributedSampler(DistributedSampler):
    """A DistributedSampler that can start part-way into an epoch (exact resume), also in one process.

    The order of epoch ``e`` depends only on (``seed``, ``e``) and the world size, as in torch's sampler;
    :meth:`set_position` skips the first ``batches_done`` batches of this rank's share without drawing any
    random numbers.

    Args:
        dataset: the dataset.
        info: from :func:`init_distributed` (rank and world size).
        batch_size: per-process batch size (to translate batches into samples).
        shuffle: shuffle each epoch.
        seed: order seed (same on every rank).
        drop_last: drop the tail that does not split evenly across ranks.
    """

    def __init__(
        self,
        dataset: Dataset[Any],
        info: DistInfo,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        super().__init__(
            dataset,
            num_replicas=info.world_size,
            rank=info.rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
        )
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.batch_size = batch_size
        self.start = 0

    def set_position(self, epoch: int, batches_done: int = 0) -> None:
        """Start epoch ``epoch`` after its first ``batches_done`` batches."""
        self.set_epoch(epoch)
        self.start = min(batches_done * self.batch_size, self.num_samples)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.start = 0

    def __iter__(self) -> Iterator[Any]:
        indices = list(super().__iter__())
        return iter(indices[self.start :])

    def __len__(self) -> int:
        return self.num_samples - self.start
