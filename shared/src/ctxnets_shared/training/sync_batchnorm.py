"""Synchronised BatchNorm for every backend: torch's SyncBatchNorm on CUDA, a collective-based one on CPU.

torch's ``nn.SyncBatchNorm`` runs only on GPU modules (DDP refuses it on CPU), so a gloo run on CPU would
otherwise normalise each process's share of the batch on its own. :class:`CollectiveBatchNorm` computes
the batch statistics over all processes with two differentiable all-reduces (mean, then the centred
second moment), so CPU training under torchrun sees the same statistics as one process with the whole
batch; gradients flow through the statistics as in SyncBatchNorm.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["CollectiveBatchNorm", "convert_sync_batchnorm"]


class CollectiveBatchNorm(nn.BatchNorm2d):
    """BatchNorm over (N, C, *) inputs whose training statistics span every process of the default group.

    Outside training, or without an initialised process group of more than one process, it is plain
    BatchNorm. The running variance is updated with the unbiased global variance, as BatchNorm does.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least a 2-D (N, C, ...) input, got {input.dim()}-D")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if not (self.training and distributed):
            return super().forward(input)
        dims = [0, *range(2, input.dim())]
        shape = [1, -1] + [1] * (input.dim() - 2)
        count = torch.tensor([input.numel() / input.shape[1]], dtype=input.dtype, device=input.device)
        total = dist_fn.all_reduce(torch.cat([input.sum(dims), count]))
        n = total[-1]
        mean = total[:-1] / n
        centred = input - mean.view(shape)
        var = dist_fn.all_reduce((centred * centred).sum(dims)) / n  # biased, as used to normalise
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)  # type: ignore[union-attr,operator]
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.detach(), factor)
                self.running_var.lerp_(var.detach() * n / (n - 1).clamp(min=1), factor)
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


def convert_sync_batchnorm(module: nn.Module, device: torch.device | None = None) -> nn.Module:
    """Replace every BatchNorm of ``module`` by a synchronised one: ``nn.SyncBatchNorm`` on CUDA,
    :class:`CollectiveBatchNorm` elsewhere. Weights, buffers and requires_grad are kept.
    """
    if device is not None and device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert_cpu(module)


def _convert_cpu(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, _BatchNorm) and not isinstance(module, (CollectiveBatchNorm, nn.SyncBatchNorm)):
        out = CollectiveBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        if module.affine:
            with torch.no_grad():
                out.weight = module.weight
                out.bias = module.bias
        out.running_mean = module.running_mean
        out.running_var = module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _convert_cpu(child))
    return out
