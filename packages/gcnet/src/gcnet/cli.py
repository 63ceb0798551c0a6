"""``gcnet analyze MODEL --image PATH --out DIR``: the paper's Section 3 analysis on any model.

Captures the attention maps of every NL / SNL / GC block (or module with an ``attention_map`` method, see
:mod:`gcnet.analysis.probe`) of ``MODEL`` (a timm name from any installed package, or ``local-dir:DIR`` for
saved weights) on one or more images (default: the two photographs scikit-learn ships), writes one heatmap
figure per image (Figures 1-2) and ``distances.json`` with Table 1's average cosine distances (null where
a distance is undefined), and prints the table. Weights come from ``--checkpoint`` (an official or our
own checkpoint file), ``--pretrained`` (timm's pretrained tag) or ``local-dir:``; without any, one warning
line says the maps are those of random weights. User mistakes (missing image, unknown model, a model
without supported attention blocks) end with one ``gcnet: error: ...`` line, exit 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
import torch.nn.functional as F

from ctxnets_shared.weights import atomic_write

__all__ = ["main"]


class UserError(Exception):
    """A mistake in the command line: reported as one line, exit status 2."""


def _load_images(paths: Sequence[str] | None) -> list[tuple[str, np.ndarray]]:
    """(name, (H, W, 3) uint8 RGB) pairs: the given files, or scikit-learn's sample photographs."""
    if not paths:
        try:
            from sklearn.datasets import load_sample_images
        except ImportError as e:
            raise UserError(
                "no --image given and scikit-learn is missing: pip install 'gcnet[analysis]'"
            ) from e
        bunch = load_sample_images()
        return [(Path(f).stem, img) for f, img in zip(bunch.filenames, bunch.images)]
    try:
        from PIL import Image
    except ImportError as e:
        raise UserError("reading --image files needs Pillow: pip install 'gcnet[analysis]'") from e
    out = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise UserError(f"image not found: {path}")
        try:
            with Image.open(path) as im:
                out.append((path.stem, np.asarray(im.convert("RGB"))))
        except OSError as e:
            raise UserError(f"cannot read image {path}: {e}") from e
    return out


def _create_model(name: str, pretrained: bool, checkpoint: str | None) -> torch.nn.Module:
    from ctxnets_shared import discover_packages
    from ctxnets_shared.weights import (
        CheckpointConverter,
        CheckpointMismatchError,
        WeightsFileError,
        read_checkpoint,
    )

    packages = discover_packages()  # registers every installed ctxnets package's models with timm
    local = name.startswith("local-dir:")
    if not local and not timm.is_model(name):
        raise UserError(f"unknown model {name!r} (not registered with timm by any installed package)")
    try:
        model = timm.create_model(name, pretrained=local or pretrained)
    except (RuntimeError, OSError, ValueError) as e:  # timm's unknown tag, a missing file, a bad one
        raise UserError(f"cannot create model {name!r}: {e}") from e
    if checkpoint is not None:
        try:
            ckpt = read_checkpoint(checkpoint)
        except WeightsFileError as e:
            raise UserError(f"cannot load --checkpoint {checkpoint}: {e}") from e
        base = name.split(".")[0]
        official = [p.converter for p in packages.values() if base in p.models]
        try:  # our own format first: a state dict or a training checkpoint of this model
            state = CheckpointConverter().convert_state_dict(ckpt, model)
        except CheckpointMismatchError as plain:
            converter = next((c for c in official if isinstance(c, CheckpointConverter)), None)
            if converter is None:
                raise UserError(f"cannot load --checkpoint {checkpoint}: {plain}") from plain
            # the package's official format (gcnet's: an mmdetection detector, backbone only, no classifier)
            model.reset_classifier(0)  # type: ignore[operator]
            try:
                state = converter.convert_state_dict(ckpt, model)
            except CheckpointMismatchError as e:
                first = str(plain).splitlines()[0]
                raise UserError(
                    f"cannot load --checkpoint {checkpoint}: not a state dict of {name} ({first}) "
                    f"nor an official checkpoint ({str(e).splitlines()[0]})"
                ) from e
        model.load_state_dict(state, strict=False)  # convert_state_dict checked every key and shape
    return model


def _jsonable(v: float) -> float | None:
    """JSON has no NaN: an undefined distance (no non-zero vector) is null."""
    return None if math.isnan(v) else v


def _preprocess(img: np.ndarray, size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, size, size) normalised."""
    x = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).float().div(255.0).unsqueeze(0)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def _parse_query(text: str) -> tuple[float, float]:
    try:
        y, x = (float(v) for v in text.split(","))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"query must be 'Y,X' with relative positions, got {text!r}") from e
    if not (0.0 <= y <= 1.0 and 0.0 <= x <= 1.0):
        raise argparse.ArgumentTypeError(f"query positions are relative, in [0, 1]; got {text!r}")
    return y, x


def _fmt(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{v:.3f}"


def cmd_analyze(args: argparse.Namespace) -> int:
    from gcnet.analysis import DEFAULT_QUERIES, attention_modules, capture_attention, plot_attention
    from gcnet.analysis.probe import unsupported_attention

    images = _load_images(args.image)
    model = _create_model(args.model, args.pretrained, args.checkpoint).eval()
    if not attention_modules(model):
        raise UserError(f"model {args.model!r}: {unsupported_attention(model)}")
    weights = "random weights"
    if args.checkpoint:
        weights = Path(args.checkpoint).name
    elif args.pretrained or args.model.startswith("local-dir:"):
        weights = "pretrained"
    else:
        print(
            f"gcnet: warning: {args.model} has random weights (no --checkpoint or --pretrained): the maps "
            "show the initialisation, not what a trained network attends to",
            file=sys.stderr,
        )
    cfg: dict[str, Any] = dict(getattr(model, "pretrained_cfg", None) or {})
    mean, std = cfg.get("mean", (0.485, 0.456, 0.406)), cfg.get("std", (0.229, 0.224, 0.225))
    queries = args.query or list(DEFAULT_QUERIES)
    out = Path(args.out)
    report: dict[str, dict[str, dict[str, float]]] = {}  # NaN where undefined, null in the JSON
    for name, img in images:
        x = _preprocess(img, args.img_size, mean, std)
        records = capture_attention(model, x)
        shown = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).unsqueeze(0).float()
        shown = F.interpolate(shown, size=(args.img_size,) * 2, mode="bilinear", antialias=True)
        shown = shown[0].permute(1, 2, 0).div(255.0).clamp(0, 1)
        title = f"image: {name}    model: {args.model} ({weights})"
        png = plot_attention(shown, records, out / f"attention_{name}.png", queries, title=title)
        report[name] = {block: r.distances() for block, r in records.items()}
        print(f"{png}")
        print(f"{'image':<12} {'block':<28} {'input':>7} {'output':>7} {'att':>7}")
        for block, d in report[name].items():
            print(f"{name:<12} {block:<28} {_fmt(d['input']):>7} {_fmt(d['output']):>7} {_fmt(d['att']):>7}")
    distances = {
        image: {block: {k: _jsonable(v) for k, v in d.items()} for block, d in blocks.items()}
        for image, blocks in report.items()
    }
    with atomic_write(out / "distances.json", "w") as f:
        doc = {"model": args.model, "weights": weights, "img_size": args.img_size, "distances": distances}
        json.dump(doc, f, indent=2, allow_nan=False)
    print(out / "distances.json")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gcnet", description="Global Context Networks tools")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser(
        "analyze",
        help="attention maps and Table 1's cosine distances of a model's NL/SNL/GC blocks",
        description=__doc__,
    )
    s.add_argument("model", help="timm model name (e.g. nl_resnet50) or local-dir:DIR")
    s.add_argument("--image", nargs="+", help="image file(s); default: scikit-learn's sample photographs")
    s.add_argument("--out", required=True, help="folder for the PNG figures and distances.json")
    weights = s.add_mutually_exclusive_group()
    weights.add_argument(
        "--checkpoint",
        help="weights file for MODEL: an official checkpoint as published (.pth/.pth.tar) or a "
        ".safetensors state dict (default: random weights, with a warning)",
    )
    weights.add_argument(
        "--pretrained",
        action="store_true",
        help="load MODEL's pretrained weights through timm (a pretrained tag)",
    )
    s.add_argument("--img-size", type=int, default=224, help="square input size (default 224)")
    s.add_argument("--query", nargs="+", type=_parse_query, help="query positions 'Y,X' relative in [0, 1]")
    s.set_defaults(func=cmd_analyze)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "img_size", 32) < 32:
        parser.error(f"--img-size must be at least 32 (the network stride), got {args.img_size}")
    try:
        return int(args.func(args))
    except UserError as e:
        print(f"gcnet: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
