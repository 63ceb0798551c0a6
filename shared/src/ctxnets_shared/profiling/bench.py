"""Throughput and peak memory of a model and its peers, measured interleaved in one process.

Absolute numbers depend on the machine; the ratio between models run side by side is the figure to
report. Each repeat times every model once in turn (so drift in clock speed or background load hits all of
them alike), and the median over repeats is kept. Peak memory is the most tensor memory one step holds
beyond what was allocated before it (activations, new gradients, temporaries): the CUDA allocator's peak on
GPU, and on CPU the running sum of the allocation and free events PyTorch's profiler records for that step.
The CPU figure counts exactly what ATen allocates, so it is the same on every run and does not depend on
how the C library hands memory back to the system.
"""

from __future__ import annotations

import contextlib
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn as nn

__all__ = ["BenchResult", "benchmark"]

MODES = ("infer", "train")


@dataclass
class BenchResult:
    """One model's measurement in one setting."""

    name: str
    mode: str
    compiled: bool
    channels_last: bool
    batch_size: int
    img_size: int
    device: str
    img_per_s: float
    ms_per_batch: float
    peak_mem_mb: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextlib.contextmanager
def _quiet_native_output() -> Iterator[None]:
    """Silence what native code prints to the process's stdout/stderr (kineto's profiler_start lines)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def _cpu_peak_mb(step: Callable[[], None]) -> float:
    from torch.profiler import ProfilerActivity, profile

    with _quiet_native_output(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    results = getattr(prof.profiler, "kineto_results", None) if prof.profiler is not None else None
    if results is None:
        return float("nan")  # this torch build records no allocation events
    events = sorted(
        ((e.start_ns(), e.nbytes()) for e in results.events() if e.name() == "[memory]"),
        key=lambda t: t[0],
    )
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak / 2**20


def _make_step(model: nn.Module, x: torch.Tensor, mode: str, compiled: bool) -> Callable[[], None]:
    fn: Callable[..., Any] = torch.compile(model) if compiled else model
    if mode == "infer":
        model.eval()

        def step() -> None:
            with torch.inference_mode():
                fn(x)

        return step
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    target = torch.randint(0, 10, (x.shape[0],), device=x.device)

    def train_step() -> None:
        out = fn(x)
        logits = out if out.dim() == 2 else out.flatten(1)
        loss = nn.functional.cross_entropy(logits[:, :10], target)
        loss.backward()
        opt.step()
        # gradients are freed at the end of the step that made them, so a measured step starts clean
        opt.zero_grad(set_to_none=True)

    return train_step


def _peak_memory_mb(step: Callable[[], None], dev: torch.device) -> float:
    """Memory one step needs beyond what is already allocated (activations, gradients, workspaces)."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        step()
        torch.cuda.synchronize(dev)
        return (torch.cuda.max_memory_allocated(dev) - base) / 2**20
    return _cpu_peak_mb(step)


class _DropCudaHomeNotice(logging.Filter):
    """Drops torch's "No CUDA runtime is found, using CUDA_HOME=..." warning.

    ``torch.utils.cpp_extension`` logs it once, when first imported, on a machine that has a CUDA toolkit
    but no GPU; ``torch.compile``'s inductor imports that module, so every compiled CPU run printed it. No
    C++ extension is built by a benchmark, so the notice says nothing about the measurement.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No CUDA runtime is found")


def _silence_cuda_home_notice() -> None:
    log = logging.getLogger("torch.utils.cpp_extension")
    if not any(isinstance(f, _DropCudaHomeNotice) for f in log.filters):
        log.addFilter(_DropCudaHomeNotice())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def benchmark(
    models: Mapping[str, nn.Module],
    *,
    batch_size: int = 8,
    img_size: int | Mapping[str, int] = 224,
    mode: str = "infer",
    compile: bool = False,
    channels_last: bool = False,
    warmup: int = 5,
    repeats: int = 10,
    device: str | torch.device = "cpu",
    progress: Callable[[str], None] | None = None,
) -> list[BenchResult]:
    """Time every model on the same random batch, interleaved, and return one result per model.

    Args:
        models: name -> model (moved to ``device``; put in eval or train mode according to ``mode``).
        batch_size: images per step.
        img_size: square input resolution, or name -> resolution to run each model at its own size (a
            high-resolution model beside a peer at 224, as in a paper's throughput table).
        mode: ``"infer"`` (forward under inference_mode) or ``"train"`` (forward, backward, SGD step).
        compile: wrap each model in ``torch.compile`` (compile time is spent in warm-up, not timed).
        channels_last: run in channels-last memory format.
        warmup: untimed steps per model before timing (CPU training needs a few: oneDNN builds its
            kernels in the first steps).
        repeats: timed steps per model; the median is reported.
        device: ``"cpu"`` or ``"cuda"``.
        progress: called with a short status line as work proceeds.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    sizes = {name: img_size[name] if isinstance(img_size, Mapping) else img_size for name in models}
    if batch_size < 1 or min(sizes.values(), default=1) < 1 or repeats < 1 or warmup < 0:
        raise ValueError("batch_size, img_size and repeats must be >= 1 and warmup >= 0")
    dev = torch.device(device)
    if compile and dev.type != "cuda":
        _silence_cuda_home_notice()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    steps: dict[str, Callable[[], None]] = {}
    for name, model in models.items():
        in_chans = getattr(model, "pretrained_cfg", {}).get("input_size", (3,))[0]
        x = torch.randn(batch_size, in_chans, sizes[name], sizes[name], device=dev).to(memory_format=fmt)
        model.to(dev).to(memory_format=fmt)  # type: ignore[call-overload]
        steps[name] = _make_step(model, x, mode, compile)

    for name, step in steps.items():
        if progress:
            what = "compiling (torch.compile) and warming up" if compile else "warming up"
            progress(f"{what} {name}: {warmup} untimed step(s)")
        for _ in range(warmup):
            step()
        _sync(dev)

    times: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(repeats):
        if progress:
            progress(f"measuring throughput: repeat {r + 1}/{repeats}, every model in turn")
        for name, step in steps.items():
            _sync(dev)
            t0 = time.perf_counter()
            step()
            _sync(dev)
            times[name].append(time.perf_counter() - t0)

    if progress:
        progress("measuring peak memory: one more step per model")
    peaks = {name: _peak_memory_mb(step, dev) for name, step in steps.items()}

    results = []
    for name in steps:
        med = statistics.median(times[name])
        results.append(
            BenchResult(
                name=name,
                mode=mode,
                compiled=compile,
                channels_last=channels_last,
                batch_size=batch_size,
                img_size=sizes[name],
                device=str(dev),
                img_per_s=batch_size / med,
                ms_per_batch=med * 1e3,
                peak_mem_mb=peaks[name],
            )
        )
    return results
