"""The ``ctxnets`` command: list, info, zoo, bench and convert over whatever ctxnets packages are installed.

User mistakes (unknown model, bad size, missing or mismatched file) print one ``ctxnets: error: ...`` line
(a checkpoint mismatch adds the list of offending keys) and exit with status 2; a zoo row that misses its
paper numbers makes ``ctxnets zoo`` exit with status 1.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm
import torch

from ctxnets_shared import __version__
from ctxnets_shared.layers import UnknownAttnLayerError, list_attn_layers
from ctxnets_shared.models.cfg import paper_numbers
from ctxnets_shared.packages import UnknownModelError, discover_packages, distribution_version, find_model
from ctxnets_shared.profiling import BenchResult, benchmark, count_params
from ctxnets_shared.training.cli_args import DefaultsHelpFormatter
from ctxnets_shared.weights.errors import CheckpointMismatchError, WeightsFileError
from ctxnets_shared.weights.io import atomic_write

__all__ = ["main"]


class UserError(Exception):
    """A mistake in the command line; printed as one line."""


def _machine() -> str:
    return f"{platform.machine()} CPU, {torch.get_num_threads()} threads, {platform.system()}"


def _tqdm(items: Any, **kw: Any) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:  # the cli extra is not installed: plain iteration
        return items
    return tqdm(items, file=sys.stderr, **kw)


def _resolve_model_name(name: str) -> str:
    discover_packages()
    if not timm.is_model(name):
        close = timm.list_models(f"*{name}*")[:8]
        hint = f"; did you mean: {', '.join(close)}" if close else ""
        raise UserError(
            f"unknown model {name!r} (not registered with timm or any installed ctxnets package){hint}"
        )
    return name


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


# ---- list / info -------------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace) -> int:
    pkgs = discover_packages()
    if not pkgs:
        print("no ctxnets packages are installed (pip install cotnet gcnet hiri-vit container care-ssl)")
        return 0
    for pkg in pkgs.values():
        dist = f"{pkg.distribution} {distribution_version(pkg.distribution)}"
        print(f"{dist} (import {pkg.import_name}): {pkg.paper}")
        print(f"  models: {', '.join(pkg.models) if pkg.models else '(none yet)'}")
        if pkg.attn_layers:
            print(f"  attention layers: {', '.join(pkg.attn_layers)}")
    if args.attn:
        print("attention layers (name: source):")
        for name, src in list_attn_layers().items():
            print(f"  {name}: {src}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    name = _resolve_model_name(args.model)
    model = timm.create_model(name, pretrained=False)
    cfg: dict[str, Any] = dict(getattr(model, "pretrained_cfg", None) or {})
    try:
        pkg: str | None = find_model(name).distribution
    except UnknownModelError:
        pkg = None  # a plain timm model
    info: dict[str, Any] = {
        "model": name,
        "package": pkg or "timm",
        "params": count_params(model),
        "num_features": getattr(model, "num_features", None),
        "feature_info": [
            {k: v for k, v in fi.items() if k in ("num_chs", "reduction", "module")}
            for fi in getattr(model, "feature_info", [])
        ],
        "paper": paper_numbers(cfg),
        "pretrained_cfg": {k: v for k, v in cfg.items() if k not in paper_numbers(cfg)},
    }
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    print(f"{name} ({info['package']}): {info['params']:,} parameters, {info['num_features']} features")
    for k, v in info["paper"].items():
        if v is not None:
            print(f"  {k}: {v}")
    for k in (
        "input_size",
        "crop_pct",
        "interpolation",
        "mean",
        "std",
        "paper_name",
        "paper_ids",
        "origin_url",
    ):
        if cfg.get(k) is not None:
            print(f"  {k}: {cfg[k]}")
    for fi in info["feature_info"]:
        print(f"  feature {fi.get('module')}: {fi.get('num_chs')} channels, stride {fi.get('reduction')}")
    return 0


# ---- zoo ---------------------------------------------------------------------------------------


def cmd_zoo(args: argparse.Namespace) -> int:
    from ctxnets_shared.zoo import render_markdown, run_zoo, write_outputs

    pkgs = discover_packages()
    models = [m for p in pkgs.values() for m in p.models]
    if not models:
        names = ", ".join(pkgs) if pkgs else "none"
        print(f"no ctxnets models installed yet (installed ctxnets packages: {names}); nothing to measure")
        return 0
    if args.out:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UserError(
                "--out draws zoo.png with matplotlib: pip install 'ctxnets-shared[cli]'"
            ) from None
    for m in args.models or ():
        if m not in models:
            raise UserError(f"{m!r} is not an installed ctxnets model; installed: {', '.join(models)}")
    rows = run_zoo(
        pkgs,
        batch_size=args.batch_size,
        only=args.models,
        progress=lambda w: _tqdm(w, desc="zoo"),
        speed=not args.no_speed,
    )
    print(render_markdown(rows), end="")
    failed = [r.model for r in rows if not r.passed]
    print(
        f"{len(rows) - len(failed)} passed, {len(failed)} failed"
        + (f": {', '.join(failed)}" if failed else "")
    )
    if args.out:
        for p in write_outputs(rows, args.out, None if args.no_speed else _machine()):
            print(f"wrote {p}")
    return 1 if failed else 0


# ---- bench -------------------------------------------------------------------------------------


def _bench_argv(args: argparse.Namespace, mode: str, compiled: bool, out: str) -> list[str]:
    argv = [*args.model, "--vs", *args.vs, "--mode", mode, "--compile", "on" if compiled else "off"]
    argv += ["--batch-size", str(args.batch_size), "--img-size", str(args.img_size), "--device", args.device]
    argv += ["--warmup", str(args.warmup), "--repeats", str(args.repeats), "--out", out]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    if args.channels_last:
        argv.append("--channels-last")
    if args.native_size:
        argv.append("--native-size")
    if args.quiet:
        argv.append("--quiet")
    return [sys.executable, "-m", "ctxnets_shared.cli", "bench", *argv]


def _bench_in_subprocess(args: argparse.Namespace, mode: str, compiled: bool) -> list[BenchResult]:
    # each setting in a process of its own: the allocator's state, oneDNN's primitive cache and the
    # compiler's caches left by one setting would otherwise shape the timing of the next
    with tempfile.TemporaryDirectory(prefix="ctxnets-bench-") as tmp:
        proc = subprocess.run(_bench_argv(args, mode, compiled, tmp), stdout=subprocess.DEVNULL, check=False)
        if proc.returncode != 0:
            raise UserError(f"the {mode}/{'compiled' if compiled else 'eager'} run failed (see above)")
        data = json.loads((Path(tmp) / "bench.json").read_text())
    return [BenchResult(**r) for r in data["results"]]


def _native_size(model: torch.nn.Module) -> int:
    size = dict(getattr(model, "pretrained_cfg", None) or {}).get("input_size", (3, 224, 224))
    return int(size[-1])


def _size_text(args: argparse.Namespace) -> str:
    return "each model at its pretrained_cfg input size" if args.native_size else f"{args.img_size}px"


def _stderr_progress(label: str) -> Any:
    def progress(msg: str) -> None:
        print(f"[{label}] {msg}", file=sys.stderr, flush=True)

    return progress


def cmd_bench(args: argparse.Namespace) -> int:
    names = [_resolve_model_name(n) for n in [*args.model, *args.vs]]
    peer = names[len(args.model)]
    modes = ["infer", "train"] if args.mode == "both" else [args.mode]
    compiles = [False, True] if args.compile == "both" else [args.compile == "on"]
    if args.threads:
        torch.set_num_threads(args.threads)
    results: list[BenchResult] = []
    for mode in modes:
        for compiled in compiles:
            if len(modes) * len(compiles) > 1:
                results += _bench_in_subprocess(args, mode, compiled)
                continue
            # fresh models per setting: compiled wrappers and optimiser state must not leak across settings
            models = {n: timm.create_model(n, pretrained=False) for n in dict.fromkeys(names)}
            label = f"{mode}, {'compiled' if compiled else 'eager'}"
            sizes = {n: _native_size(m) for n, m in models.items()} if args.native_size else args.img_size
            print(
                f"[{label}] {', '.join(models)}: batch {args.batch_size} at {_size_text(args)} on "
                f"{args.device}",
                file=sys.stderr,
            )
            results += benchmark(
                models,
                batch_size=args.batch_size,
                img_size=sizes,
                mode=mode,
                compile=compiled,
                channels_last=args.channels_last,
                warmup=args.warmup,
                repeats=args.repeats,
                device=args.device,
                progress=None if args.quiet else _stderr_progress(label),
            )
    lines = [
        f"machine: {_machine()}; torch {torch.__version__}; batch {args.batch_size}, {_size_text(args)}, "
        f"{'channels_last' if args.channels_last else 'NCHW'}, median of {args.repeats}",
        "",
        "| setting | model | img/s | vs " + peer + " | peak MB | vs " + peer + " |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        ref = next(p for p in results if p.name == peer and p.mode == r.mode and p.compiled == r.compiled)
        setting = f"{r.mode}, {'compiled' if r.compiled else 'eager'}"
        mem_ratio = r.peak_mem_mb / ref.peak_mem_mb if ref.peak_mem_mb > 0 else float("nan")
        name = f"{r.name} ({r.img_size}px)" if args.native_size else r.name
        lines.append(
            f"| {setting} | {name} | {r.img_per_s:.1f} | {r.img_per_s / ref.img_per_s:.2f}x "
            f"| {r.peak_mem_mb:.0f} | {mem_ratio:.2f}x |"
        )
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        out = Path(args.out)
        with atomic_write(out / "bench.md", "w") as f:
            f.write(text)
        with atomic_write(out / "bench.json", "w") as f:
            json.dump({"machine": _machine(), "results": [r.as_dict() for r in results]}, f, indent=2)
        print(f"wrote {out / 'bench.md'} and {out / 'bench.json'}")
    return 0


# ---- convert -----------------------------------------------------------------------------------


def cmd_convert(args: argparse.Namespace) -> int:
    pkg = find_model(args.model)
    if pkg.converter is None:
        raise UserError(f"{pkg.distribution} has no converter for official checkpoints")
    ckpt = Path(args.checkpoint)
    if not ckpt.is_file():
        raise UserError(f"checkpoint not found: {ckpt}")
    converter = type(pkg.converter)(use_ema=args.ema)
    converter.allow_nonfinite = args.allow_nonfinite  # an attribute: subclasses keep their own __init__
    out = converter.convert(args.model, ckpt, args.out_dir)
    print(f"converted {ckpt} -> {out} (load with timm.create_model('local-dir:{out}', pretrained=True))")
    if args.push_to_hub:
        _push_to_hub(pkg, converter, args, ckpt, Path(out))
    return 0


def _push_to_hub(pkg: Any, converter: Any, args: argparse.Namespace, ckpt: Path, out: Path) -> None:
    from ctxnets_shared.weights.hub import model_card, push_folder
    from ctxnets_shared.weights.io import load_pretrained

    card = model_card(
        load_pretrained(out),
        args.model,
        repo_id=args.push_to_hub,
        source=ckpt,
        converter=type(converter).__name__,
        package=pkg.distribution,
        package_version=distribution_version(pkg.distribution),
        citation=getattr(pkg, "citation", ""),
        verified=getattr(converter, "verified", ""),
    )
    with atomic_write(out / "README.md", "w") as f:
        f.write(card)
    try:
        url = push_folder(out, args.push_to_hub, private=args.private)
    except ImportError as e:
        raise UserError(str(e)) from None
    print(f"pushed {out} to {url}")


# ---- entry point -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ctxnets", description="Tools for the installed ctxnets model packages.")
    p.add_argument("--version", action="version", version=f"ctxnets-shared {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("list", help="installed ctxnets packages and their models")
    s.add_argument("--attn", action="store_true", help="also list every attention-layer name")
    s.set_defaults(func=cmd_list)

    s = sub.add_parser("info", help="one model: parameters, features, paper numbers, pretrained_cfg")
    s.add_argument("model")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("zoo", help="measure every installed model against its paper's numbers")
    s.add_argument("--out", help="folder for zoo.md, zoo.json and zoo.png")
    s.add_argument("--batch-size", type=_positive, default=1, help="batch for the CPU throughput column")
    s.add_argument("--models", nargs="+", help="only these models")
    s.add_argument(
        "--no-speed",
        action="store_true",
        help="leave out the CPU throughput column: the output then depends only on the code (what the "
        "docs commit)",
    )
    s.set_defaults(func=cmd_zoo)

    s = sub.add_parser(
        "bench",
        help="throughput and peak memory side by side with a peer, in one process",
        description="Throughput and peak memory of MODEL(s) beside peer(s), interleaved in one process. "
        "By default eager inference only; --compile and --mode add torch.compile and training steps.",
        formatter_class=DefaultsHelpFormatter,
    )
    s.add_argument("model", nargs="+", help="model(s) to measure")
    s.add_argument("--vs", nargs="+", required=True, help="peer model(s); ratios are against the first")
    s.add_argument("--batch-size", type=_positive, default=8, help="images per step")
    s.add_argument("--img-size", type=_positive, default=224, help="square input resolution")
    s.add_argument(
        "--native-size",
        action="store_true",
        help="run each model at its own pretrained_cfg input size (e.g. a 448 model beside a 224 peer); "
        "overrides --img-size",
    )
    s.add_argument(
        "--mode",
        choices=("infer", "train", "both"),
        default="infer",
        help="inference (forward under inference_mode), training (forward, backward, SGD step), or both",
    )
    s.add_argument(
        "--compile",
        choices=("off", "on", "both"),
        default="off",
        help="torch.compile the models (compilation happens in the untimed warm-up)",
    )
    s.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    s.add_argument("--warmup", type=_positive, default=5, help="untimed steps per model")
    s.add_argument("--repeats", type=_positive, default=10, help="timed steps per model; the median is kept")
    s.add_argument("--threads", type=_positive, help="torch intra-op threads (default: torch's choice)")
    s.add_argument("--device", default="cpu", help="cpu or cuda")
    s.add_argument("--out", help="folder for bench.md and bench.json (default: print only)")
    s.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser("convert", help="official checkpoint -> safetensors folder timm can load")
    s.add_argument("model")
    s.add_argument("checkpoint", help="official .pth / .pth.tar file")
    s.add_argument("out_dir")
    s.add_argument(
        "--ema", action="store_true", help="take the EMA weights of a training checkpoint (an error if none)"
    )
    s.add_argument(
        "--allow-nonfinite",
        action="store_true",
        help="convert weights holding NaN or Inf (refused by default)",
    )
    s.add_argument(
        "--push-to-hub",
        metavar="REPO",
        help="also upload the folder, with a generated model card (README.md), to this Hugging Face Hub "
        "repository (user/name; needs huggingface_hub and a login); off by default",
    )
    s.add_argument("--private", action="store_true", help="with --push-to-hub: create the repository private")
    s.set_defaults(func=cmd_convert)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status (0 ok, 1 zoo check failed, 2 user error)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except CheckpointMismatchError as e:
        print(f"ctxnets: error: {e}", file=sys.stderr)
        return 2
    except (
        UserError,
        UnknownModelError,
        UnknownAttnLayerError,
        WeightsFileError,
        FileNotFoundError,
        NotADirectoryError,
        ValueError,
    ) as e:
        print(f"ctxnets: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ctxnets: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
