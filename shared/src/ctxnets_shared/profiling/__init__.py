"""Parameter counts, GFLOPs (multiply-accumulates) and side-by-side throughput / memory benchmarks."""

from ctxnets_shared.profiling.bench import BenchResult, benchmark
from ctxnets_shared.profiling.counting import count_gflops, count_params

__all__ = ["BenchResult", "benchmark", "count_gflops", "count_params"]
