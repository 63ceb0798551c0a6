"""The ``care-ssl`` command: ``pretrain``, ``probe`` and ``export``.

A user mistake (empty or missing data folder, unknown backbone, a backbone without stage-4 features, a
bad flag value, a missing or malformed checkpoint, a resume with other settings, a locked ``--out``, an
``OSError`` while writing) prints one ``care-ssl <command>: error: ...`` line and exits with 2. Ctrl-C or
SIGTERM during ``pretrain`` saves a checkpoint and exits with 130.
Run several processes with ``torchrun --nproc-per-node N -m care_ssl pretrain ...``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "main"]


def _pretrain_args(p: argparse.ArgumentParser) -> None:
    from care_ssl.care import DESIGNS, MODES
    from care_ssl.train import PretrainConfig
    from care_ssl.tstream import POS_EMBEDS
    from ctxnets_shared.training import add_run_args

    d: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(PretrainConfig)}
    a = p.add_argument
    a("--model", required=True, help="timm backbone name from any installed package, e.g. resnet50")
    a("--data", required=True, help="an ImageFolder path, or 'digits' (embedded, no download)")
    a("--out", default=d["out"], help="run folder: checkpoints, metrics.jsonl, metrics.png, backbone/")
    a("--img-size", type=int, default=d["img_size"], help="square input side; a multiple of 32 is safest")
    a("--epochs", type=int, default=d["epochs"], help="epochs of the cosine schedule")
    a("--max-steps", type=int, default=None, help="stop after this many optimizer steps (default: unset)")
    a("--batch-size", type=int, default=d["batch_size"], help="per process")
    a("--lr", type=float, default=None, help="default: 0.05 x global batch / 256 (the paper)")
    a("--weight-decay", type=float, default=d["weight_decay"], help="SGD weight decay")
    a("--no-wd-bn-bias", action="store_true", help="no weight decay on BN and biases (official: decays all)")
    a("--seed", type=int, default=d["seed"], help="weights, data order and augmentation")
    a("--mode", choices=MODES, default=d["mode"], help="care, or byol (the baseline without T-stream)")
    a("--lam", type=float, default=d["lam"], help="weight lambda of L_att (paper: 100)")
    a("--depth", type=int, default=d["depth"], help="T-stream blocks n (paper: 5)")
    a("--pos-embed", choices=POS_EMBEDS, default=d["pos_embed"], help="T-stream position embedding")
    a("--design", choices=DESIGNS, default=d["design"], help="T-stream off C4 (parallel) or C5 (sequential)")
    a(
        "--hidden-dim",
        type=int,
        default=d["hidden_dim"],
        help="projector/predictor hidden width (paper: 4096)",
    )
    a("--proj-dim", type=int, default=d["proj_dim"], help="projection width (paper: 256)")
    a("--heads", type=int, default=d["heads"], help="T-stream attention heads")
    a("--dim-head", type=int, default=d["dim_head"], help="T-stream width per head")
    a("--in-chans", type=int, default=d["in_chans"], help="input channels")
    a(
        "--crop-scale",
        type=float,
        nargs=2,
        default=None,
        metavar=("LOW", "HIGH"),
        help="random-resized-crop area range (default: 0.3 1.0 on digits, 0.08 1.0 otherwise)",
    )
    a(
        "--save-every",
        type=int,
        default=d["save_every"],
        help="checkpoint every N steps (0: only at the end)",
    )
    a(
        "--knn-every",
        type=int,
        default=d["knn_every"],
        help="kNN accuracy every N steps and at the end (0: never)",
    )
    a("--log-every", type=int, default=d["log_every"], help="a metrics.jsonl record every N steps")
    a(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        metavar="PATH",
        help="continue from the latest checkpoint (of OUT/checkpoints, or of PATH)",
    )
    add_run_args(
        p,
        amp=d["amp"],
        amp_help="float16 mixed precision with a gradient scaler on CUDA (no effect on the CPU)",
        warmup_epochs=d["warmup_epochs"],
        warmup_help="linear warm-up, at most a tenth of the run",
        progress=True,
    )
    a(
        "--num-workers", type=int, dest="workers", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )  # old name


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``care-ssl`` (``--help`` of each command shows every default)."""
    from ctxnets_shared.training import DefaultsHelpFormatter, add_run_args

    fmt = DefaultsHelpFormatter
    parser = argparse.ArgumentParser(
        prog="care-ssl",
        description="CARE self-supervised pretraining for any timm backbone.",
        formatter_class=fmt,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _pretrain_args(sub.add_parser("pretrain", help="CARE (or BYOL) pretraining", formatter_class=fmt))

    probe = sub.add_parser("probe", help="linear probe and kNN on a frozen backbone", formatter_class=fmt)
    src = probe.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights", help="a backbone folder (care-ssl export / pretrain's OUT/backbone)")
    src.add_argument("--model", help="a timm backbone name at random initialisation (the baseline)")
    probe.add_argument("--data", required=True, help="an ImageFolder path, or 'digits' (embedded)")
    probe.add_argument("--img-size", type=int, default=64, help="square input side")
    probe.add_argument("--in-chans", type=int, default=3, help="input channels")
    probe.add_argument("--epochs", type=int, default=30, help="linear-probe epochs")
    probe.add_argument("--batch-size", type=int, default=256, help="feature extraction and probe batch")
    probe.add_argument("--seed", type=int, default=0, help="random init (--model), data split and probe")
    add_run_args(probe)
    probe.add_argument("--out", default=None, help="also write the result as JSON here")

    export = sub.add_parser(
        "export", help="online backbone -> timm local-dir safetensors folder", formatter_class=fmt
    )
    src = export.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="a pretrain run folder (its newest checkpoint)")
    src.add_argument("--official", help="an official CARE checkpoint (.pth), read without code execution")
    export.add_argument("--model", default="resnet50", help="backbone of --official")
    export.add_argument("--out", required=True, help="output folder")
    return parser


def _pretrain(args: argparse.Namespace) -> int:
    from care_ssl.train import PretrainConfig, pretrain

    fields = {f.name for f in dataclasses.fields(PretrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in fields}
    if values.get("crop_scale") is not None:
        values["crop_scale"] = tuple(values["crop_scale"])
    if args.resume == "auto":
        values["resume"] = str(Path(args.out) / "checkpoints")
    for name in ("img_size", "batch_size", "depth", "hidden_dim", "proj_dim", "heads", "dim_head"):
        if values[name] < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {values[name]}")
    if values["batch_size"] < 2:
        raise ValueError(
            "--batch-size must be at least 2: the BatchNorm layers of the backbone and the BYOL heads need "
            "two or more samples per batch in training"
        )
    if values["warmup_epochs"] < 0:
        raise ValueError(f"--warmup-epochs must be >= 0, got {values['warmup_epochs']}")
    if values["workers"] < 0:
        raise ValueError(f"--workers must be >= 0, got {values['workers']}")
    if values["epochs"] < 0 or (values["max_steps"] is not None and values["max_steps"] < 1):
        raise ValueError("--epochs must be >= 0 and --max-steps >= 1")
    pretrain(PretrainConfig(**values))
    return 0


def _probe(args: argparse.Namespace) -> int:
    import torch

    from care_ssl.evaluate import probe_backbone
    from ctxnets_shared.training import init_distributed, resolve_device

    if args.weights:
        from ctxnets_shared.weights import load_pretrained

        backbone = load_pretrained(args.weights)
        source = args.weights
    else:
        from care_ssl.backbone import Backbone, create_backbone

        torch.manual_seed(args.seed)
        backbone = create_backbone(args.model, in_chans=args.in_chans)
        Backbone(backbone, img_size=args.img_size, in_chans=args.in_chans)  # same checks as pretrain
        source = f"{args.model} (random init)"
    result = probe_backbone(
        backbone,
        args.data,
        img_size=args.img_size,
        in_chans=args.in_chans,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        device=init_distributed(resolve_device(args.device)).device,
        workers=args.workers,
    )
    line = json.dumps({"backbone": source, **{k: round(v, 2) for k, v in result.items()}})
    print(line)
    if args.out:
        from ctxnets_shared.weights import atomic_write

        with atomic_write(args.out, "w") as f:
            f.write(line + "\n")
    return 0


def _export(args: argparse.Namespace) -> int:
    if args.official:
        from care_ssl.export import CareConverter

        out = CareConverter().convert(args.model, args.official, args.out, num_classes=0)
    else:
        from care_ssl.care import CARE
        from ctxnets_shared.training import load_checkpoint
        from ctxnets_shared.weights import check_state_dict

        run = Path(args.run)
        cfg_path = run / "config.json"
        if not cfg_path.is_file():
            raise ValueError(f"{run} is not a care-ssl pretrain run folder (no config.json)")
        try:
            cfg = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{cfg_path} is not valid JSON: {e}") from e
        needed: tuple[str, ...] = (
            "model",
            "img_size",
            "in_chans",
            "mode",
            "depth",
            "pos_embed",
            "design",
            "hidden_dim",
        )
        needed += ("proj_dim", "heads", "dim_head")
        if not isinstance(cfg, dict) or any(k not in cfg for k in needed):
            raise ValueError(
                f"{cfg_path} is not a care-ssl pretrain config (an object with {', '.join(needed)})"
            )
        model = CARE(
            cfg["model"],
            img_size=cfg["img_size"],
            in_chans=cfg["in_chans"],
            mode=cfg["mode"],
            depth=cfg["depth"],
            pos_embed=cfg["pos_embed"],
            design=cfg["design"],
            hidden_dim=cfg["hidden_dim"],
            proj_dim=cfg["proj_dim"],
            heads=cfg["heads"],
            dim_head=cfg["dim_head"],
        )
        state = load_checkpoint(run / "checkpoints").get("objects", {}).get("model")
        if not isinstance(state, dict):
            raise ValueError(f"the checkpoint in {run / 'checkpoints'} holds no model state")
        check_state_dict(model, state, context=str(run / "checkpoints"))
        model.load_state_dict(state, strict=False)
        out = model.export_backbone(args.out)
    print(f"exported backbone to {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``care-ssl``; returns the exit status (2: a one-line error, 130: interrupted)."""
    from ctxnets_shared.training import run_command

    args = build_parser().parse_args(argv)
    command = {"pretrain": _pretrain, "probe": _probe, "export": _export}[args.command]
    return run_command(f"care-ssl {args.command}", lambda: command(args))


if __name__ == "__main__":
    raise SystemExit(main())
