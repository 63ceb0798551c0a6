"""FLOP counting on a network with published MACs, and the side-by-side benchmark harness."""

from __future__ import annotations

import math

import pytest
import timm
import torch

from ctxnets_shared.profiling import benchmark, count_gflops, count_params


def test_resnet50_params_and_macs() -> None:
    m = timm.create_model("resnet50")
    assert count_params(m) == 25_557_032  # He et al. ResNet-50, torchvision/timm count
    # ResNet-50 is quoted at 4.1 GMACs ("GFLOPs") at 224 (timm's model table, the CoTNet/GCNet papers)
    assert count_gflops(m, (3, 224, 224)) == pytest.approx(4.1, rel=0.01)


def test_gflops_scales_with_resolution_and_rejects_bad_sizes() -> None:
    m = timm.create_model("resnet18")
    assert count_gflops(m, (3, 224, 224)) == pytest.approx(1.82, rel=0.01)  # ResNet-18: 1.8 GMACs
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        count_gflops(m, (224, 224))


def test_trainable_only() -> None:
    m = timm.create_model("resnet18")
    for p in m.fc.parameters():
        p.requires_grad_(False)
    assert count_params(m) - count_params(m, trainable_only=True) == 512 * 1000 + 1000


@pytest.mark.parametrize("mode", ["infer", "train"])
def test_benchmark_two_models(mode: str) -> None:
    models = {"resnet18": timm.create_model("resnet18"), "resnet50": timm.create_model("resnet50")}
    res = benchmark(models, batch_size=2, img_size=64, mode=mode, warmup=2, repeats=3)
    assert [r.name for r in res] == ["resnet18", "resnet50"]
    by = {r.name: r for r in res}
    for r in res:
        assert r.mode == mode and r.batch_size == 2 and r.img_size == 64
        assert r.img_per_s > 0 and math.isclose(r.img_per_s, 2e3 / r.ms_per_batch)
        assert r.peak_mem_mb >= 0
    # ResNet-18 does under half of ResNet-50's work; the harness must attribute times to the right model
    assert by["resnet18"].img_per_s > by["resnet50"].img_per_s
    if mode == "train":
        # a training step keeps every activation for backward: ResNet-50 needs more than ResNet-18
        assert by["resnet50"].peak_mem_mb > by["resnet18"].peak_mem_mb


class _Scratch(torch.nn.Module):
    """Holds a 16 MiB scratch tensor and an 8 MiB one at once, then returns a tiny output."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.ones(4 * 2**20, dtype=torch.float32)  # 16 MiB
        b = torch.ones(2 * 2**20, dtype=torch.float32)  # 8 MiB
        return (a.sum() + b.sum()) * self.scale * x.mean()


def test_cpu_peak_memory_counts_tensor_allocations_exactly() -> None:
    # 24 MiB live at once, plus the input's mean and a few scalars; the same on every run
    runs = [benchmark({"s": _Scratch()}, batch_size=1, img_size=8, warmup=1, repeats=1)[0] for _ in range(2)]
    assert 24.0 <= runs[0].peak_mem_mb < 24.1
    assert runs[0].peak_mem_mb == runs[1].peak_mem_mb


def test_benchmark_rejects_bad_settings() -> None:
    m = {"r": timm.create_model("resnet18")}
    with pytest.raises(ValueError, match="mode must be one of"):
        benchmark(m, mode="fast")
    with pytest.raises(ValueError, match="at least|>= 1"):
        benchmark(m, batch_size=0)


def test_memory_measurement_prints_nothing() -> None:
    """The profiler's native log lines (kineto's ``profiler_start``) never reach the terminal."""
    import subprocess
    import sys

    code = (
        "import torch\n"
        "from ctxnets_shared.profiling.bench import _cpu_peak_mb\n"
        "_cpu_peak_mb(lambda: torch.randn(64, 64) @ torch.randn(64, 64))\n"
        "print('done')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "done"
    assert "profiler" not in out.stderr and "USDT" not in out.stderr
