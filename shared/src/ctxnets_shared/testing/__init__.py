"""The model contract as a reusable pytest kit (extra ``test``): every package runs it over its models.

``ctxnets_shared.testing.checks`` holds the checks as plain functions that raise AssertionError;
:func:`contract_suite` turns them into a pytest class; ``ctxnets_shared.testing.autocast`` emulates CUDA's
autocast dtype policy on CPU; ``ctxnets_shared.testing.crash`` kills training commands (kill -9 loops, a
stopping signal) for resume tests. Importing this package needs pytest.
"""

from ctxnets_shared.testing.autocast import cuda_autocast_policy, cuda_like_autocast
from ctxnets_shared.testing.checks import (
    CHECKS,
    STRUCTURAL_CHECKS,
    build,
    calibration_input,
    fx_trace,
    make_input,
    randomize_zero_init,
)
from ctxnets_shared.testing.crash import kill_loop, saved_step, stop_by_signal, temp_files
from ctxnets_shared.testing.spec import ModelSpec
from ctxnets_shared.testing.suite import contract_suite

__all__ = [
    "CHECKS",
    "STRUCTURAL_CHECKS",
    "ModelSpec",
    "build",
    "calibration_input",
    "contract_suite",
    "cuda_autocast_policy",
    "cuda_like_autocast",
    "fx_trace",
    "kill_loop",
    "make_input",
    "randomize_zero_init",
    "saved_step",
    "stop_by_signal",
    "temp_files",
]
