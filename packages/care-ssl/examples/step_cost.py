"""Cost of one CARE training step against one BYOL step with the same backbone (spec "Cost").

Counts the MACs of a full step (forward of both views through online and target networks, backward)
with torch's FlopCounterMode, and times steps with the two modes interleaved (A, B, A, B, ...), so that
load from other processes on a shared CPU hits both alike; reports medians.

    uv run python packages/care-ssl/examples/step_cost.py --model resnet18 --img-size 64 --batch-size 32
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from care_ssl import CARE


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=10, help="timed steps per mode, after 2 warm-up steps")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(args.batch_size, 3, args.img_size, args.img_size, generator=g)
    x2 = torch.randn(args.batch_size, 3, args.img_size, args.img_size, generator=g)
    models, opts = {}, {}
    for mode in ("byol", "care"):
        torch.manual_seed(0)
        models[mode] = CARE(args.model, img_size=args.img_size, mode=mode)
        opts[mode] = torch.optim.SGD(models[mode].online_parameters(), lr=0.01, momentum=0.9)

    def step(mode: str) -> None:
        loss = models[mode](x1, x2).total
        opts[mode].zero_grad(set_to_none=True)
        loss.backward()
        opts[mode].step()
        models[mode].update_momentum(0, 100)

    macs, params = {}, {}
    for mode in models:
        with FlopCounterMode(display=False) as fc:
            step(mode)
        macs[mode] = fc.get_total_flops() / 2e9
        params[mode] = sum(p.numel() for p in models[mode].online_parameters()) / 1e6
    cpu: dict[str, list[float]] = {m: [] for m in models}
    wall: dict[str, list[float]] = {m: [] for m in models}
    for i in range(args.steps + 2):
        for mode in models:
            c0, w0 = time.process_time(), time.perf_counter()
            step(mode)
            if i >= 2:
                cpu[mode].append(time.process_time() - c0)
                wall[mode].append(time.perf_counter() - w0)
    print(
        f"{args.model} at {args.img_size} px, batch {args.batch_size}, {args.threads} thread(s), "
        f"median of {args.steps} interleaved steps"
    )
    print("| mode | trained params (M) | GMACs per step | CPU s per step | wall s per step |")
    print("|---|---|---|---|---|")
    for mode in models:
        print(
            f"| {mode} | {params[mode]:.1f} | {macs[mode]:.2f} | {statistics.median(cpu[mode]):.3f} "
            f"| {statistics.median(wall[mode]):.3f} |"
        )
    ratio = {
        k: statistics.median(v["care"]) / statistics.median(v["byol"])
        for k, v in (("cpu", cpu), ("wall", wall))
    }
    print(
        f"CARE / BYOL: {macs['care'] / macs['byol']:.2f}x MACs, {ratio['cpu']:.2f}x CPU time, "
        f"{ratio['wall']:.2f}x wall time"
    )


if __name__ == "__main__":
    main()
