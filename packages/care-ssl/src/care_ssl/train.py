"""``care-ssl pretrain``: CARE (or BYOL) self-supervised pretraining, one CPU to many GPUs.

Recipe of the paper (Sec. 4) and the official code: SGD (momentum 0.9, weight decay 1e-4 on every
parameter), lr 0.05 x batch / 256 with a linear warm-up (10 epochs, at most a tenth of a short run) then
cosine decay, the momentum tau rising from 0.99 to 1 on a cosine over the steps, mixed precision on CUDA.
The data, DDP, checkpoint and logging plumbing is ``ctxnets_shared.training``; a resumed run (even after
``kill -9``) ends with the same weights and the same ``metrics.jsonl`` as an uninterrupted one: the
learning rate and tau are functions of the step, augmentations are seeded per (seed, epoch, sample) and
the checkpoint holds every rank's RNG. A resume must keep every setting in :data:`RESUME_KEYS` (they change
the result; it refuses in one line otherwise); Ctrl-C or SIGTERM saves a checkpoint of the current step and
ends with :class:`~ctxnets_shared.training.TrainingInterrupted`; ``OUT/run.lock`` keeps a second run out.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from care_ssl.augment import byol_views
from care_ssl.care import CARE
from care_ssl.evaluate import extract_features, knn_accuracy
from ctxnets_shared.training import (
    Checkpointer,
    DistInfo,
    MetricLogger,
    Progress,
    ResumableDistributedSampler,
    ResumeInfo,
    RunLock,
    StopOnSignal,
    TrainingInterrupted,
    all_reduce_mean,
    barrier,
    build_datasets,
    check_input_fits,
    check_resume_settings,
    init_distributed,
    make_loader,
    plot_metrics,
    resolve_device,
    saved_settings,
    seed_everything,
    wrap_model,
)
from ctxnets_shared.training.sync_batchnorm import convert_sync_batchnorm
from ctxnets_shared.training.transforms import Transform
from ctxnets_shared.weights import atomic_write, remove_stale_temp_files

__all__ = ["RESUME_KEYS", "PretrainConfig", "learning_rate", "pretrain"]

_DIGITS = "digits"
#: the panels of metrics.png per mode
_PLOTTED = {
    "care": ["loss", "loss_c", "loss_t", "loss_att", "knn_acc", "lr"],
    "byol": ["loss", "knn_acc", "lr"],
}


@dataclass
class PretrainConfig:
    """Everything ``care-ssl pretrain`` takes (flag names are the field names with dashes).

    ``model`` (a timm backbone name) and ``data`` (an ImageFolder path or ``"digits"``) have no default.
    """

    model: str
    data: str
    out: str = "care-run"
    img_size: int = 64
    epochs: int = 10
    max_steps: int | None = None
    batch_size: int = 64
    lr: float | None = None
    weight_decay: float = 1e-4
    no_wd_bn_bias: bool = False
    warmup_epochs: float = 10.0
    seed: int = 0
    mode: str = "care"
    lam: float = 100.0
    depth: int = 5
    pos_embed: str = "absolute"
    design: str = "parallel"
    hidden_dim: int = 4096
    proj_dim: int = 256
    heads: int = 4
    dim_head: int = 128
    in_chans: int = 3
    save_every: int = 0
    knn_every: int = 0
    log_every: int = 1
    resume: str | None = None
    device: str | None = "auto"
    amp: bool = True
    workers: int = 0
    crop_scale: tuple[float, float] | None = None
    no_progress: bool = False

    def settings(self) -> dict[str, Any]:
        """The fields in :data:`RESUME_KEYS`, as JSON values (what a checkpoint records)."""
        values = dataclasses.asdict(self)
        return {k: list(values[k]) if isinstance(values[k], tuple) else values[k] for k in RESUME_KEYS}

    def base_lr(self, world_size: int) -> float:
        """The paper's lr 0.05 x global batch / 256 unless ``lr`` is given."""
        return self.lr if self.lr is not None else 0.05 * self.batch_size * world_size / 256


#: the settings that change the result (weights or metrics.jsonl): a resume must keep each. The others
#: (--out, --resume, --device, --workers, --save-every, --no-progress) may change.
RESUME_KEYS = tuple(
    f.name
    for f in dataclasses.fields(PretrainConfig)
    if f.name not in ("out", "resume", "device", "workers", "save_every", "no_progress")
)


def learning_rate(step: int, total: int, warmup: int, base: float) -> float:
    """Linear warm-up from ~0 over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _param_groups(model: CARE, weight_decay: float, exclude_bn_bias: bool) -> list[dict[str, Any]]:
    params = model.online_parameters()
    if not exclude_bn_bias:
        return [{"params": params, "weight_decay": weight_decay}]  # the official code decays everything
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _knn(model: CARE, bank: Any, val: Any, info: DistInfo, batch_size: int, epoch: int) -> float | None:
    """kNN top-1 of the online backbone (main process; the others wait)."""
    acc = None
    if info.is_main:
        for ds in (bank, val):
            ds.set_epoch(epoch)
        net = model.backbone.model
        f_tr, y_tr = extract_features(net, make_loader(bank, batch_size, drop_last=False), info.device)
        f_va, y_va = extract_features(net, make_loader(val, batch_size, drop_last=False), info.device)
        acc = knn_accuracy(f_tr, y_tr, f_va, y_va)
    barrier(info)
    return acc


def pretrain(cfg: PretrainConfig) -> CARE:
    """Run pretraining as configured; returns the (unwrapped) CARE model of this process.

    Writes into ``cfg.out``: ``config.json`` (the settings as resolved: the lr after batch scaling, the
    device, whether mixed precision is on, the image size and crop scale trained, the warm-up and total
    steps), ``checkpoints/`` (atomic safetensors + JSON state), ``metrics.jsonl`` (step, losses, lr,
    momentum, kNN accuracy) and, at the end, ``metrics.png`` and ``backbone/`` (the exported online
    backbone).
    """
    info = init_distributed(resolve_device(cfg.device))
    try:
        with RunLock(cfg.out, enabled=info.is_main), StopOnSignal() as stop:
            return _pretrain(cfg, info, stop)
    finally:
        from ctxnets_shared.training import cleanup_distributed

        cleanup_distributed()


def _pretrain(cfg: PretrainConfig, info: DistInfo, stop: StopOnSignal) -> CARE:
    out = Path(cfg.out)
    if info.is_main:
        remove_stale_temp_files(out, depth=1)  # left by a killed run; we hold the lock
    if cfg.resume:
        check_resume_settings(saved_settings(cfg.resume), cfg.settings(), RESUME_KEYS)
    seed_everything(cfg.seed, info.rank)
    digits = str(cfg.data) == _DIGITS
    # a mirrored digit is another glyph, and a crop below a third of an 8x8 digit loses it
    scale = cfg.crop_scale or ((0.3, 1.0) if digits else (0.08, 1.0))
    views = byol_views(cfg.img_size, scale=scale, hflip=0.0 if digits else 0.5)
    splits = build_datasets(
        cfg.data, img_size=cfg.img_size, in_chans=cfg.in_chans, seed=cfg.seed, train_transform=views
    )
    # the kNN memory bank: the training images without augmentation
    plain_tf = splits.val.transform
    assert isinstance(plain_tf, Transform)
    bank = build_datasets(
        cfg.data, img_size=cfg.img_size, in_chans=cfg.in_chans, seed=cfg.seed, train_transform=plain_tf
    ).train
    sampler = ResumableDistributedSampler(splits.train, info, cfg.batch_size, seed=cfg.seed, drop_last=True)
    loader = make_loader(splits.train, cfg.batch_size, sampler, num_workers=cfg.workers, drop_last=True)
    steps_per_epoch = len(sampler) // cfg.batch_size
    if steps_per_epoch < 1:
        raise ValueError(
            f"batch size {cfg.batch_size} x {info.world_size} process(es) exceeds the {len(splits.train)} "
            f"training images: use a smaller --batch-size"
        )
    total = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps) if cfg.epochs > 0 else cfg.max_steps
    if total < 1:
        raise ValueError("nothing to train: --epochs and --max-steps give 0 steps")
    warmup = min(round(cfg.warmup_epochs * steps_per_epoch), total // 10)
    base_lr = cfg.base_lr(info.world_size)

    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    model = CARE(
        cfg.model,
        img_size=cfg.img_size,
        in_chans=cfg.in_chans,
        mode=cfg.mode,
        lam=cfg.lam,
        depth=cfg.depth,
        pos_embed=cfg.pos_embed,
        design=cfg.design,
        hidden_dim=cfg.hidden_dim,
        proj_dim=cfg.proj_dim,
        heads=cfg.heads,
        dim_head=cfg.dim_head,
    )
    seed_everything(cfg.seed, info.rank)

    def two_views() -> tuple[torch.Tensor, torch.Tensor]:
        views = torch.stack([splits.train[0][0]] * 2)  # (2 samples, 2 views, C, H, W)
        return views[:, 0], views[:, 1]

    check_input_fits(model, two_views, f"--img-size {cfg.img_size}")
    trained_size = int(splits.train[0][0].shape[-1])  # what the model sees, for config.json
    if info.distributed:
        model.convert_sync_batchnorm(lambda m: convert_sync_batchnorm(m, info.device))
    ddp = wrap_model(model, info, sync_bn=False)
    optimizer = torch.optim.SGD(
        _param_groups(model, cfg.weight_decay, cfg.no_wd_bn_bias), lr=base_lr, momentum=0.9
    )
    use_amp = cfg.amp and info.device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    state: dict[str, Any] = {"model": model, "optimizer": optimizer, "scaler": scaler if use_amp else None}
    ckpt = Checkpointer(out / "checkpoints", info)
    start = ckpt.resume(cfg.resume, state) if cfg.resume else ResumeInfo()
    if info.is_main and cfg.resume:
        print(f"resuming from step {start.step}", file=sys.stderr, flush=True)
    if info.is_main and (not cfg.resume or not (out / "config.json").is_file()):
        # a resume keeps the run's config.json (the settings that count are the saved ones)
        resolved = {
            "img_size": trained_size,
            "lr": base_lr,
            "device": str(info.device),
            "amp": use_amp,
            "crop_scale": list(scale),
            "warmup_epochs": warmup / steps_per_epoch,
            "warmup_steps": warmup,
            "total_steps": total,
            "steps_per_epoch": steps_per_epoch,
            "world_size": info.world_size,
            "global_batch_size": cfg.batch_size * info.world_size,
        }
        with atomic_write(out / "config.json", "w") as f:
            json.dump({**dataclasses.asdict(cfg), **resolved}, f, indent=2)
    logger = MetricLogger(
        out / "metrics.jsonl", enabled=info.is_main, resume_step=start.step if cfg.resume else None
    )

    step, epoch = start.step, start.epoch
    bar = Progress(
        total=total,
        desc=f"{cfg.mode} {cfg.model}",
        enabled=info.is_main and not cfg.no_progress,
        initial=step,
    )
    batch_in_epoch = start.batch_in_epoch
    while step < total:
        sampler.set_position(epoch, batch_in_epoch)
        splits.train.set_epoch(epoch)
        for x, _ in loader:
            lr = learning_rate(step, total, warmup, base_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x = x.to(info.device, non_blocking=True)
            autocast = torch.autocast("cuda", dtype=torch.float16) if use_amp else contextlib.nullcontext()
            with autocast:
                losses = ddp(x[:, 0], x[:, 1])
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(losses.total).backward()
            scaler.step(optimizer)
            scaler.update()
            tau = model.update_momentum(step, total)
            step += 1
            batch_in_epoch += 1
            if batch_in_epoch == steps_per_epoch:
                epoch, batch_in_epoch = epoch + 1, 0
            record: dict[str, float | None] = {
                k: float(all_reduce_mean(v.detach().float(), info))
                for k, v in (
                    ("loss", losses.total),
                    ("loss_c", losses.c),
                    ("loss_t", losses.t),
                    ("loss_att", losses.att),
                )
            }
            bar.set_postfix(loss=float(record["loss"] or 0.0), lr=lr)
            bar.update(1)
            knn_due = cfg.knn_every > 0 and (step % cfg.knn_every == 0 or step == total)
            if knn_due:
                record["knn_acc"] = _knn(model, bank, splits.val, info, cfg.batch_size, epoch)
                if record["knn_acc"] is not None:
                    bar.write(f"step {step}: kNN top-1 {record['knn_acc']:.2f}%")
            if step % max(1, cfg.log_every) == 0 or knn_due or step == total:
                logger.log(step, **record, lr=lr, momentum=tau, epoch=epoch)
            saving = (cfg.save_every > 0 and step % cfg.save_every == 0) or step == total
            interrupted = stop.requested(info)
            if saving or interrupted:
                ckpt.save(step, state, epoch=epoch, batch_in_epoch=batch_in_epoch, settings=cfg.settings())
            if interrupted:
                bar.close()
                raise TrainingInterrupted(step, announce=info.is_main)
            if step >= total or batch_in_epoch == 0:
                break
    bar.close()
    if info.is_main:
        model.export_backbone(out / "backbone")
        plot_metrics(
            out / "metrics.jsonl",
            out / "metrics.png",
            _PLOTTED[cfg.mode],
            title=f"{cfg.mode} pretraining, {cfg.model}",
        )
    barrier(info)
    return model
