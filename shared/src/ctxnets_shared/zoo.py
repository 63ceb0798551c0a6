"""The model zoo report: every installed ctxnets model measured beside its paper's numbers.

For each model registered by an installed ctxnets package: parameters (checked against the paper's count
within the cfg's ``params_rtol``, exact by default), GMACs at the paper's resolution (within
``gflops_rtol``), and CPU throughput at a small batch. Writes markdown, JSON and a GFLOPs-vs-top-1 chart.
Without the throughput column (``speed=False``) the report depends only on the code and the installed
torch/timm versions, byte for byte: that is what the docs commit and ``nox -s zoo`` compares against.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import timm
import torch

from ctxnets_shared.models.cfg import paper_numbers
from ctxnets_shared.packages import CtxnetsPackage
from ctxnets_shared.profiling import benchmark, count_gflops, count_params
from ctxnets_shared.weights.io import atomic_write

__all__ = ["ZooRow", "measure_model", "render_markdown", "run_zoo", "write_outputs"]


@dataclass
class ZooRow:
    """One model's line in the zoo table."""

    model: str
    package: str
    img_size: int
    params: int
    paper_params: int | None
    params_ok: bool
    gflops: float
    paper_gflops: float | None
    gflops_ok: bool
    paper_top1: float | None
    img_per_s: float | None  # None: throughput not measured
    batch_size: int

    @property
    def passed(self) -> bool:
        return self.params_ok and self.gflops_ok


def _within(measured: float, target: float | None, rtol: float) -> bool:
    if target is None:
        return False  # a model without paper numbers cannot pass a comparison against them
    return math.isclose(measured, target, rel_tol=rtol, abs_tol=0.0) if rtol else measured == target


def measure_model(
    name: str, package: str, batch_size: int = 1, repeats: int = 3, speed: bool = True
) -> ZooRow:
    """Build ``name`` through timm and measure it (CPU, float32); ``speed=False`` skips the timing."""
    model = timm.create_model(name, pretrained=False)
    cfg: dict[str, Any] = dict(getattr(model, "pretrained_cfg", None) or {})
    paper = paper_numbers(cfg)
    size = paper["paper_img_size"] or cfg.get("input_size", (3, 224, 224))[-1]
    in_chans = cfg.get("input_size", (3,))[0]
    params = count_params(model)
    gflops = count_gflops(model, (in_chans, size, size))
    img_per_s = None
    if speed:
        (bench,) = benchmark({name: model}, batch_size=batch_size, img_size=size, warmup=1, repeats=repeats)
        img_per_s = round(bench.img_per_s, 2)
    return ZooRow(
        model=name,
        package=package,
        img_size=size,
        params=params,
        paper_params=paper["paper_params"],
        params_ok=_within(params, paper["paper_params"], paper["params_rtol"] or 0.0),
        gflops=round(gflops, 3),
        paper_gflops=paper["paper_gflops"],
        gflops_ok=_within(gflops, paper["paper_gflops"], paper["gflops_rtol"] or 0.05),
        paper_top1=paper["paper_top1"],
        img_per_s=img_per_s,
        batch_size=batch_size,
    )


def run_zoo(
    packages: dict[str, CtxnetsPackage],
    batch_size: int = 1,
    only: Sequence[str] | None = None,
    progress: Callable[[Any], Any] | None = None,
    speed: bool = True,
) -> list[ZooRow]:
    """Measure every model of every package (or just ``only``), in package then registration order.

    ``speed=False`` leaves out the CPU throughput (``img_per_s`` None): the rows are then deterministic.
    """
    work = [(m, p.distribution) for p in packages.values() for m in p.models if not only or m in only]
    it = progress(work) if progress else work
    return [measure_model(m, pkg, batch_size=batch_size, speed=speed) for m, pkg in it]


def _fmt_opt(v: float | int | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def render_markdown(rows: Sequence[ZooRow]) -> str:
    """The zoo as a markdown table (also what the console shows); no speed column when none was measured."""
    speed = any(r.img_per_s is not None for r in rows)
    cols = ["model", "package", "res", "params", "paper params", "GFLOPs", "paper GFLOPs", "paper top-1"]
    cols += ["CPU img/s (bs)", "check"] if speed else ["check"]
    head = "| " + " | ".join(cols) + " |\n" + "|---" * len(cols) + "|\n"
    lines = []
    for r in rows:
        cells = [
            r.model, r.package, str(r.img_size), f"{r.params:,}", _fmt_opt(r.paper_params, ","),
            f"{r.gflops:.2f}", _fmt_opt(r.paper_gflops, ".1f"), _fmt_opt(r.paper_top1, ".1f"),
        ]  # fmt: skip
        if speed:
            cells.append(f"{_fmt_opt(r.img_per_s, '.1f')} ({r.batch_size})")
        cells.append("pass" if r.passed else "FAIL")
        lines.append("| " + " | ".join(cells) + " |\n")
    return head + "".join(lines)


def write_outputs(rows: Sequence[ZooRow], out_dir: str | os.PathLike[str], machine: str | None) -> list[Path]:
    """Write ``zoo.md``, ``zoo.json`` and ``zoo.png`` (GFLOPs vs paper top-1) into ``out_dir``.

    ``machine`` describes where the throughput was measured; None (and no ``img_per_s`` in ``rows``)
    leaves the machine out, so the table and the JSON depend only on the code and the torch/timm versions.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} exists and is not a folder")
    meta = {"torch": torch.__version__, "timm": timm.__version__}
    if machine is not None:
        meta = {"machine": machine, **meta}
    written = []
    with atomic_write(out / "zoo.md", "w") as f:
        versions = f"torch {torch.__version__}, timm {timm.__version__}"
        where = f"Measured on {machine}" if machine is not None else "Counted"
        f.write(f"# ctxnets zoo\n\n{where} ({versions}).\n\n")
        f.write(render_markdown(rows))
    written.append(out / "zoo.md")
    with atomic_write(out / "zoo.json", "w") as f:
        json.dump({"meta": meta, "rows": [asdict(r) | {"passed": r.passed} for r in rows]}, f, indent=2)
    written.append(out / "zoo.json")
    written.append(_plot(rows, out / "zoo.png"))
    return written


_BASE_SIZE = 224


def point_label(row: ZooRow) -> str:
    """A chart point's label: the model, with its input size when that is not the usual 224 px."""
    return row.model if row.img_size == _BASE_SIZE else f"{row.model} ({row.img_size} px)"


def _plot(rows: Sequence[ZooRow], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
    by_pkg: dict[str, list[ZooRow]] = {}
    for r in rows:
        if r.paper_top1 is not None:
            by_pkg.setdefault(r.package, []).append(r)
    for pkg, pts in by_pkg.items():
        color = ax.scatter([], [], label=pkg, s=30).get_facecolor()
        for size_class in (False, True):
            sub = [r for r in pts if (r.img_size > _BASE_SIZE) == size_class]
            if sub:  # squares: measured at a higher input resolution than 224, so not like-for-like
                ax.scatter(
                    [r.gflops for r in sub], [float(r.paper_top1 or 0.0) for r in sub], s=30, color=color,
                    marker="s" if size_class else "o",
                )  # fmt: skip
        for i, r in enumerate(sorted(pts, key=lambda p: p.gflops)):
            # alternate above/below so neighbours with equal top-1 do not print over each other
            ax.annotate(
                point_label(r), (r.gflops, r.paper_top1), fontsize=7, xytext=(3, 4 if i % 2 else -10),
                textcoords="offset points",
            )  # fmt: skip
    if any(r.img_size > _BASE_SIZE for pts in by_pkg.values() for r in pts):
        ax.scatter([], [], marker="s", color="grey", s=30, label=f"input above {_BASE_SIZE} px")
    ax.set_xlabel("GFLOPs (multiply-accumulates, measured)")
    ax.set_ylabel("ImageNet top-1 (%) reported by the paper")
    ax.set_title("ctxnets zoo")
    ax.grid(alpha=0.3)
    if by_pkg:
        ax.legend(fontsize=8)
    with atomic_write(path) as f:
        fig.savefig(f, format="png", bbox_inches="tight")
    plt.close(fig)
    return path
