"""``hiri-vit train``: train any timm classifier with optional EMA distillation (paper Section 4.5).

Data: an ImageFolder, or ``--data digits`` (scikit-learn's bundled digits, no download). timm's
Mixup/CutMix in batch mode, AdamW with a warm-up + cosine schedule, tqdm progress bars, JSON-lines
metrics, atomic safetensors checkpoints and an exact ``--resume``. Runs as one process or under
``torchrun`` (DDP with synchronised BatchNorm; gloo on CPU, nccl on CUDA). Needs the ``train`` extra:
``pip install "hiri-vit[train]"``.

    hiri-vit train --model resnet10t --data digits --img-size 32 --epochs 2 --out runs/digits
    torchrun --nproc_per_node 2 -m hiri_vit.train train --model resnet10t --data digits --out runs/ddp
    hiri-vit train ... --out runs/digits --resume          # continue where it stopped

``--model`` and ``--data`` have no default; ``--batch-size`` is per process. The run folder holds
``config.json`` (every flag, with the values the run resolved: image size, device, mixed precision on or
off, warm-up and total steps), ``checkpoints/`` (``ckpt-<step>.safetensors`` + ``.json``,
``latest.json``), ``metrics.jsonl``, ``metrics.png`` (loss, lr and val accuracy against the step),
``model/`` (timm local-dir layout, also ``teacher/`` with EMA distillation), ``summary.json`` and, while a
run trains into it, ``run.lock`` (a second run on the same ``--out`` is refused).

``--resume`` refuses in one line any setting in :data:`RESUME_KEYS` that differs from the saved run's
(they change the result); the others (``--out``, ``--save-every``, ``--workers``, ``--device``,
``--no-progress``) may change. Ctrl-C or SIGTERM finishes the current step, saves a checkpoint and exits
with status 130. Whatever the kills and resumes, ``metrics.jsonl`` and ``summary.json`` equal the
uninterrupted run's: neither holds wall-clock times.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn
from timm.loss import SoftTargetCrossEntropy
from timm.models import get_pretrained_cfg
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler

from ctxnets_shared.packages import discover_packages
from ctxnets_shared.training import (
    Checkpointer,
    DefaultsHelpFormatter,
    DistInfo,
    MetricLogger,
    Progress,
    ResumableDistributedSampler,
    ResumeInfo,
    RunLock,
    StopOnSignal,
    TrainingInterrupted,
    add_run_args,
    all_gather_object,
    all_reduce_mean,
    build_datasets,
    check_input_fits,
    check_resume_settings,
    cleanup_distributed,
    find_latest_checkpoint,
    init_distributed,
    make_loader,
    plot_metrics,
    resolve_device,
    run_command,
    saved_settings,
    seed_everything,
    unwrap_model,
    wrap_model,
)
from ctxnets_shared.weights import (
    atomic_write,
    remove_stale_temp_files,
    save_pretrained,
)
from hiri_vit.distill import EMADistiller, MaskedMixup, MixedBatch

__all__ = ["RESUME_KEYS", "build_parser", "main", "train"]

#: the settings that change the result (weights or metrics): a --resume must match the saved run in each.
#: --max-steps and --epochs fix the length of the cosine schedule, --eval the metrics file's records.
RESUME_KEYS = (
    "model", "data", "img_size", "in_chans", "epochs", "max_steps", "batch_size", "lr", "weight_decay",
    "warmup_epochs", "drop_path", "seed", "ema_distill", "alpha", "ema_decay", "mixup", "cutmix",
    "smoothing", "amp", "eval",
)  # fmt: skip


class UsageError(ValueError):
    """A user mistake: reported as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``hiri-vit`` (``hiri-vit train --help`` shows every default)."""
    fmt = DefaultsHelpFormatter
    parser = argparse.ArgumentParser(prog="hiri-vit", description="HIRI-ViT tools.", formatter_class=fmt)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "train", help="train a timm classifier, optionally with EMA distillation", formatter_class=fmt
    )
    a = p.add_argument
    a("--model", required=True, help="any timm model name (installed ctxnets packages too), e.g. hiri_vit_s")
    a("--data", required=True, help="an ImageFolder path, or 'digits' (embedded, no download)")
    a("--img-size", type=int, default=32, help="square input side")
    a("--in-chans", type=int, default=3, help="input channels")
    a("--epochs", type=int, default=10, help="epochs of the cosine schedule")
    a("--max-steps", type=int, default=None, help="stop after this many optimizer steps (default: unset)")
    a("--batch-size", type=int, default=32, help="per process")
    a("--lr", type=float, default=1e-3, help="AdamW peak learning rate (not scaled by the batch)")
    a("--weight-decay", type=float, default=0.05, help="AdamW weight decay")
    a("--drop-path", type=float, default=0.0, help="stochastic depth rate")
    a("--seed", type=int, default=0, help="weights, data order and augmentation")
    a("--ema-distill", action=argparse.BooleanOptionalAction, default=True, help="EMA distillation")
    a("--alpha", type=float, default=0.5, help="weight of the mixed label (paper's alpha)")
    a("--ema-decay", type=float, default=0.9998, help="EMA teacher decay")
    a("--mixup", type=float, default=0.8, help="Mixup alpha (0 disables)")
    a("--cutmix", type=float, default=1.0, help="CutMix alpha (0 disables)")
    a("--smoothing", type=float, default=0.1, help="label smoothing")
    a("--out", type=Path, default=Path("runs/hiri-vit-train"), help="run folder")
    a(
        "--resume",
        nargs="?",
        const="",
        default=None,
        metavar="PATH",
        help="continue from the latest checkpoint (of OUT/checkpoints, or of PATH)",
    )
    a("--save-every", type=int, default=100, help="checkpoint every N steps (and at the end)")
    a("--eval", action=argparse.BooleanOptionalAction, default=True, help="val accuracy per epoch")
    add_run_args(
        p,
        amp=False,
        amp_help="bfloat16 autocast on CUDA (no effect on the CPU)",
        warmup_epochs=None,
        warmup_help="linear warm-up from lr/1000 (default: 5%% of the steps)",
        progress=True,
    )
    # tests: stop after N steps as if killed, keeping the schedule of the full run
    a("--stop-after", type=int, default=None, help=argparse.SUPPRESS)
    return parser


def _check_args(a: argparse.Namespace) -> None:
    positive = {"--img-size": a.img_size, "--in-chans": a.in_chans, "--epochs": a.epochs}
    positive |= {"--batch-size": a.batch_size, "--save-every": a.save_every}
    for flag, value in positive.items():
        if value < 1:
            raise UsageError(f"{flag} must be at least 1, got {value}")
    if a.max_steps is not None and a.max_steps < 1:
        raise UsageError(f"--max-steps must be at least 1, got {a.max_steps}")
    if a.lr <= 0:
        raise UsageError(f"--lr must be positive, got {a.lr}")
    if not 0 <= a.alpha <= 1:
        raise UsageError(f"--alpha must be in [0, 1], got {a.alpha}")
    if not 0 <= a.ema_decay <= 1:
        raise UsageError(f"--ema-decay must be in [0, 1], got {a.ema_decay}")
    if not 0 <= a.smoothing < 1:
        raise UsageError(f"--smoothing must be in [0, 1), got {a.smoothing}")
    if a.mixup < 0 or a.cutmix < 0:
        raise UsageError("--mixup and --cutmix must be >= 0")
    if (a.mixup > 0 or a.cutmix > 0) and a.batch_size % 2:
        raise UsageError(f"Mixup/CutMix pairs samples: --batch-size must be even, got {a.batch_size}")
    if a.workers < 0:
        raise UsageError(f"--workers must be >= 0, got {a.workers}")
    if a.warmup_epochs is not None and a.warmup_epochs < 0:
        raise UsageError(f"--warmup-epochs must be >= 0, got {a.warmup_epochs}")


def _check_model(name: str) -> None:
    discover_packages()  # registers the models of every installed ctxnets package
    if not timm.is_model(name):
        close = timm.list_models(f"*{name}*")[:8]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise UsageError(f"unknown model {name!r} (not registered with timm){hint}")


def _create_model(a: argparse.Namespace, num_classes: int) -> tuple[nn.Module, dict[str, Any]]:
    """The model and the constructor kwargs a saved copy needs (``model_args``)."""
    model_args: dict[str, Any] = {"in_chans": a.in_chans}
    extra: dict[str, Any] = {"drop_path_rate": a.drop_path} if a.drop_path > 0 else {}
    try:  # ViT-style models fix their token grid to img_size at construction; CNNs reject the kwarg
        model = timm.create_model(
            a.model, num_classes=num_classes, img_size=a.img_size, **model_args, **extra
        )
        model_args["img_size"] = a.img_size
    except TypeError:
        model = timm.create_model(a.model, num_classes=num_classes, **model_args, **extra)
    return model, model_args


@torch.no_grad()
def _evaluate(model: nn.Module, loader: Any, info: DistInfo) -> float:
    was_training = model.training
    model.eval()
    correct = torch.zeros(2, dtype=torch.float64, device=info.device)
    for x, y in loader:
        x, y = x.to(info.device), y.to(info.device)
        correct[0] += (model(x).argmax(-1) == y).sum()
        correct[1] += y.numel()
    model.train(was_training)
    total = all_reduce_mean(correct, info) * info.world_size
    return float(total[0] / total[1].clamp(min=1))


def train(a: argparse.Namespace) -> dict[str, Any]:
    """Run the training described by parsed ``hiri-vit train`` arguments; returns the summary."""
    _check_args(a)
    info = init_distributed(resolve_device(a.device))
    try:
        return _train(a, info)
    finally:
        cleanup_distributed()


def _train(a: argparse.Namespace, info: DistInfo) -> dict[str, Any]:
    with RunLock(a.out, enabled=info.is_main), StopOnSignal() as stop:
        return _train_locked(a, info, stop)


def _train_locked(a: argparse.Namespace, info: DistInfo, stop: StopOnSignal) -> dict[str, Any]:
    seed_everything(a.seed, info.rank)
    out: Path = a.out
    ckpt_dir = out / "checkpoints"
    if info.is_main:
        remove_stale_temp_files(out, depth=1)  # left by a killed run; we hold the lock
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items() if k in RESUME_KEYS}
    resume_from = None
    if a.resume is not None:
        resume_from = Path(a.resume) if a.resume else ckpt_dir
        if find_latest_checkpoint(resume_from) is None:
            raise UsageError(f"--resume: no checkpoint in {resume_from} (no latest.json)")
        check_resume_settings(saved_settings(resume_from), settings, RESUME_KEYS)

    _check_model(a.model)
    cfg = get_pretrained_cfg(a.model)
    mean = tuple(cfg.mean) if cfg is not None else (0.485, 0.456, 0.406)
    std = tuple(cfg.std) if cfg is not None else (0.229, 0.224, 0.225)
    splits = build_datasets(a.data, img_size=a.img_size, in_chans=a.in_chans, seed=a.seed, mean=mean, std=std)
    model, model_args = _create_model(a, splits.num_classes)
    check_input_fits(model, lambda: (torch.stack([splits.train[0][0]] * 2),), f"--img-size {a.img_size}")
    trained_size = int(splits.train[0][0].shape[-1])  # what the model sees, for config.json

    sampler = ResumableDistributedSampler(splits.train, info, a.batch_size, seed=a.seed, drop_last=True)
    loader = make_loader(splits.train, a.batch_size, sampler, num_workers=a.workers)
    # counted before any set_position: a resumed epoch's loader holds only its remaining batches
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise UsageError(
            f"{len(splits.train)} training images are fewer than --batch-size {a.batch_size} x "
            f"{info.world_size} processes"
        )
    val_sampler = ResumableDistributedSampler(splits.val, info, a.batch_size, shuffle=False)
    val_loader = make_loader(splits.val, a.batch_size, val_sampler, num_workers=a.workers, drop_last=False)
    total_steps = a.epochs * steps_per_epoch
    if a.max_steps is not None:
        total_steps = min(total_steps, a.max_steps)
    if a.warmup_epochs is not None:
        warmup = min(round(a.warmup_epochs * steps_per_epoch), total_steps)
    else:
        warmup = max(1, total_steps // 20)

    distiller = None
    if a.ema_distill:
        distiller = EMADistiller(model, alpha=a.alpha, decay=a.ema_decay).to(info.device)
    ddp = wrap_model(model, info)
    net = unwrap_model(ddp)
    opt = create_optimizer_v2(net, "adamw", lr=a.lr, weight_decay=a.weight_decay)
    sched = CosineLRScheduler(
        opt, t_initial=total_steps, warmup_t=warmup, warmup_lr_init=a.lr * 1e-3,
        lr_min=a.lr * 1e-2, t_in_epochs=False,
    )  # fmt: skip
    mixup = None
    if a.mixup > 0 or a.cutmix > 0:
        mixup = MaskedMixup(
            mixup_alpha=a.mixup, cutmix_alpha=a.cutmix, label_smoothing=a.smoothing,
            num_classes=splits.num_classes,
        )  # fmt: skip
    criterion = SoftTargetCrossEntropy()

    objects: dict[str, Any] = {"model": net, "optimizer": opt, "scheduler": sched, "distiller": distiller}
    ckpt = Checkpointer(ckpt_dir, info)
    start = ResumeInfo()
    if resume_from is not None:
        start = ckpt.resume(resume_from, objects)
        if info.is_main:
            print(f"resuming from step {start.step}", file=sys.stderr, flush=True)
    use_amp = a.amp and info.device.type == "cuda"
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if resume_from is None or not (out / "config.json").is_file():
            # a resume keeps the run's config.json (the settings that count are the checkpoint's)
            resolved = {
                "img_size": trained_size,
                "device": str(info.device),
                "amp": use_amp,
                "amp_dtype": "bfloat16" if use_amp else None,
                "warmup_epochs": warmup / steps_per_epoch,
                "warmup_steps": warmup,
                "total_steps": total_steps,
                "steps_per_epoch": steps_per_epoch,
                "world_size": info.world_size,
                "global_batch_size": a.batch_size * info.world_size,
                "num_classes": splits.num_classes,
                "mean": list(mean),
                "std": list(std),
            }
            hidden = ("resume", "stop_after", "command")
            flags = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items() if k not in hidden}
            with atomic_write(out / "config.json", "w") as f:
                json.dump({**flags, **resolved}, f, indent=2)
    log = MetricLogger(
        out / "metrics.jsonl", enabled=info.is_main, resume_step=start.step if resume_from else None
    )
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if use_amp else nullcontext()

    step, epoch, done = start.step, start.epoch, start.batch_in_epoch
    bar = Progress(
        total=total_steps, desc=f"train {a.model}", enabled=info.is_main and not a.no_progress, initial=step
    )
    val_acc: float | None = start.extra.get("val_acc")
    ddp.train()
    while step < total_steps and step != a.stop_after:
        sampler.set_position(epoch, done)
        splits.train.set_epoch(epoch)
        for x, y in loader:
            x, y = x.to(info.device, non_blocking=True), y.to(info.device, non_blocking=True)
            if mixup is not None:
                batch = mixup.mix(x, y)
            else:
                soft = nn.functional.one_hot(y, splits.num_classes).float()
                soft = soft * (1 - a.smoothing) + a.smoothing / splits.num_classes
                batch = MixedBatch(x, soft, 1.0, x.new_ones(1, 1, *x.shape[-2:]), "none")
            with autocast, _explain_one_sample_batch(a):
                target = distiller.target(x, batch) if distiller is not None else batch.target
                loss = criterion(ddp(batch.x).float(), target.float())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            lr = opt.param_groups[0]["lr"]
            opt.step()
            step, done = step + 1, done + 1
            if distiller is not None:
                distiller.update(net, step=step)
            sched.step_update(step)
            loss_v = loss.item()
            bar.update()
            bar.set_postfix(loss=loss_v, lr=lr, epoch=epoch)
            log.log(step, epoch=epoch, loss=loss_v, lr=lr)
            end_of_epoch = done == steps_per_epoch
            if a.eval and (end_of_epoch or step == total_steps):
                val_acc = _evaluate(ddp, val_loader, info)
                teacher_acc = _evaluate(distiller.teacher, val_loader, info) if distiller else None
                log.log(step, epoch=epoch, val_acc=val_acc, teacher_val_acc=teacher_acc)
                bar.write(f"epoch {epoch} step {step}: val acc {val_acc:.4f}" + (
                    f", teacher {teacher_acc:.4f}" if teacher_acc is not None else ""))  # fmt: skip
            saving = step % a.save_every == 0 or step == total_steps
            interrupted = stop.requested(info)
            if saving or interrupted:
                extra = {"val_acc": val_acc}
                ckpt.save(step, objects, epoch=epoch, batch_in_epoch=done, extra=extra, settings=settings)
            if interrupted:
                raise TrainingInterrupted(step, announce=info.is_main)
            if step == total_steps or step == a.stop_after:
                break
        else:
            epoch, done = epoch + 1, 0
    bar.close()

    summary: dict[str, Any] = {
        "model": a.model,
        "steps": step,
        "epochs_started": epoch + 1,
        "val_acc": val_acc,
    }
    # every rank's weights fingerprint: DDP keeps them identical, and the summary shows that it did
    summary["weights_sha256"] = all_gather_object(_fingerprint(net), info)
    if info.is_main:
        plot_metrics(
            out / "metrics.jsonl",
            out / "metrics.png",
            ["loss", "lr", "val_acc", "teacher_val_acc"],
            title=f"hiri-vit train, {a.model}",
        )
        save_pretrained(net, out / "model", architecture=a.model, model_args=model_args)
        if distiller is not None:
            save_pretrained(distiller.teacher, out / "teacher", architecture=a.model, model_args=model_args)
        with atomic_write(out / "summary.json", "w") as f:
            json.dump(summary, f, indent=2)
    return summary


@contextmanager
def _explain_one_sample_batch(a: argparse.Namespace) -> Iterator[None]:
    """BatchNorm's training error on a one-sample batch, as a one-line UsageError that says what to do."""
    try:
        yield
    except ValueError as e:
        if "Expected more than 1 value per channel" not in str(e):
            raise
        raise UsageError(
            f"--batch-size {a.batch_size} is too small to train {a.model}: its BatchNorm needs more than one "
            f"value per channel (here a 1x1 feature map of one sample); use --batch-size 2 or more"
        ) from e


def _fingerprint(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point (``hiri-vit``).

    User mistakes (bad flags, data, checkpoints, a resume with other settings, a locked ``--out``, an
    ``OSError`` while writing) print one line and exit with status 2; SIGINT/SIGTERM save a checkpoint and
    exit with status 130 (:func:`ctxnets_shared.training.run_command`).
    """
    args = build_parser().parse_args(argv)

    def command() -> int:
        summary = train(args)
        if summary:
            print(json.dumps({k: v for k, v in summary.items() if k != "weights_sha256"}))
        return 0

    return run_command(f"hiri-vit {args.command}", command)


if __name__ == "__main__":
    sys.exit(main())
