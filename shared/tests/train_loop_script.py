"""A small but complete training loop on the ctxnets_shared.training plumbing, for the tests.

Run as a script (also under torchrun) or call :func:`train` in process. Dropout (torch RNG), timm's Mixup
(numpy RNG), random-resized crops (per-sample generators), AdamW, a timm cosine schedule, BatchNorm
(SyncBatchNorm under DDP) and an EMA copy all feed the state that resume has to restore.

    python train_loop_script.py OUT --steps 10 [--resume] [--die-after 4] [--save-every 2]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import Mixup
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch.utils.data import Subset

from ctxnets_shared.training import (
    Checkpointer,
    MetricLogger,
    Progress,
    ResumableDistributedSampler,
    ResumeInfo,
    build_datasets,
    cleanup_distributed,
    init_distributed,
    make_loader,
    seed_everything,
    unwrap_model,
    wrap_model,
)
from ctxnets_shared.weights import atomic_write

IMG, BATCH, SUBSET = 16, 8, 48  # 6 batches per epoch in one process, 3 per rank with two


def tiny_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.3),
        nn.Linear(16, 10),
    )


def train(
    out: Path, steps: int, *, resume: bool = False, die_after: int | None = None, save_every: int = 1
) -> dict[str, torch.Tensor]:
    torch.set_num_threads(1)  # bitwise-reproducible reductions between the compared runs
    info = init_distributed("cpu")
    seed_everything(0, info.rank)
    splits = build_datasets("digits", img_size=IMG, in_chans=3, seed=0)
    train_set = Subset(splits.train, range(SUBSET))
    sampler = ResumableDistributedSampler(train_set, info, BATCH, seed=0, drop_last=True)
    loader = make_loader(train_set, BATCH, sampler)
    model = tiny_net()
    ema = ModelEmaV3(model, decay=0.9)
    ddp = wrap_model(model, info)
    opt = torch.optim.AdamW(ddp.parameters(), lr=1e-2, weight_decay=0.05)
    sched = CosineLRScheduler(opt, t_initial=steps, warmup_t=2, warmup_lr_init=1e-4, t_in_epochs=False)
    mixup = Mixup(mixup_alpha=0.4, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=10)
    ckpt = Checkpointer(out / "ckpt", info)
    objects = {"model": unwrap_model(ddp), "ema": ema, "optimizer": opt, "scheduler": sched}
    start = ckpt.resume(out / "ckpt", objects) if resume else ResumeInfo()
    log = MetricLogger(
        out / "metrics.jsonl", enabled=info.is_main, resume_step=start.step if resume else None
    )
    step, epoch, done_in_epoch = start.step, start.epoch, start.batch_in_epoch
    sampler.set_position(epoch, done_in_epoch)
    splits.train.set_epoch(epoch)
    bar = Progress(total=steps, desc="train", enabled=info.is_main, initial=step)
    while step < steps:
        for x, y in loader:
            x, y = mixup(x, y)
            loss = torch.sum(-y * F.log_softmax(ddp(x), dim=-1), dim=-1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            ema.update(unwrap_model(ddp), step=step)
            step += 1
            done_in_epoch += 1
            sched.step_update(step)
            log.log(step, loss=loss.item(), lr=opt.param_groups[0]["lr"])
            bar.update()
            bar.set_postfix(loss=loss.item())
            if step % save_every == 0 or step == steps:
                ckpt.save(step, objects, epoch=epoch, batch_in_epoch=done_in_epoch)
            if die_after is not None and step == die_after:
                os.kill(os.getpid(), signal.SIGKILL)
            if step >= steps:
                break
        else:
            epoch, done_in_epoch = epoch + 1, 0
            sampler.set_position(epoch, 0)
            splits.train.set_epoch(epoch)
    bar.close()
    state = {f"model.{k}": v.detach().clone() for k, v in unwrap_model(ddp).state_dict().items()}
    state.update({f"ema.{k}": v.detach().clone() for k, v in ema.state_dict().items()})
    cleanup_distributed()
    return state


def check_collective_batchnorm(out: Path) -> None:
    """Under torchrun: each rank's half of a batch through CollectiveBatchNorm equals plain BatchNorm on
    the whole batch (outputs, input gradients, summed parameter gradients, running statistics)."""
    import json

    import torch.distributed as dist

    from ctxnets_shared.training.sync_batchnorm import convert_sync_batchnorm

    info = init_distributed("cpu")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 4, 5, 3, generator=g) * 3 + 1
    w_out = torch.randn(6, 4, 5, 3, generator=g)
    ref = nn.BatchNorm2d(4)
    with torch.no_grad():
        ref.weight.copy_(torch.rand(4, generator=g) + 0.5)
        ref.bias.copy_(torch.randn(4, generator=g))
    bn = convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(4)), info.device)[0]
    bn.load_state_dict(ref.state_dict())
    xr = x.clone().requires_grad_(True)
    (ref(xr) * w_out).sum().backward()
    part = slice(3 * info.rank, 3 * info.rank + 3)
    xl = x[part].clone().requires_grad_(True)
    y = bn(xl)
    (y * w_out[part]).sum().backward()
    grads = torch.cat([bn.weight.grad, bn.bias.grad])
    dist.all_reduce(grads)
    ok = {
        "type": type(bn).__name__,
        "out": torch.allclose(y, _ref_out(ref, x)[part], atol=1e-5),
        "input_grad": torch.allclose(xl.grad, xr.grad[part], atol=1e-5),
        "param_grad": torch.allclose(grads, torch.cat([ref.weight.grad, ref.bias.grad]), atol=1e-4),
        "running": torch.allclose(bn.running_var, ref.running_var, atol=1e-5)
        and torch.allclose(bn.running_mean, ref.running_mean, atol=1e-6),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"syncbn-rank{info.rank}.json").write_text(json.dumps(ok))


def _ref_out(ref: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # normalise with the batch statistics again, without touching the running buffers a second time
    with torch.no_grad():
        return F.batch_norm(x, None, None, ref.weight, ref.bias, training=True, eps=ref.eps)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out", type=Path)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--die-after", type=int)
    p.add_argument("--save-every", type=int, default=1)
    p.add_argument("--check-syncbn", action="store_true")  # CollectiveBatchNorm vs BatchNorm
    a = p.parse_args(argv)
    if a.check_syncbn:
        check_collective_batchnorm(a.out)
    rank = int(os.environ.get("RANK", "0"))
    state = train(a.out, a.steps, resume=a.resume, die_after=a.die_after, save_every=a.save_every)
    from safetensors.torch import save

    with atomic_write(a.out / f"final-rank{rank}.safetensors") as f:
        f.write(save({k: v.contiguous() for k, v in state.items()}))


if __name__ == "__main__":
    sys.exit(main())
