"""The model contract as a reusable pytest kit (extra ``test``): every package runs it over its models.

``ctxnets_shared.testing.checks`` holds the checks as plain functions that raise AssertionError;
:func:`contract_suite` turns them into a pytest class. ``ctxnets_shared.testing.fused`` checks a layer's
fused CPU path against its plain layers; ``ctxnets_shared.testing.autocast`` emulates CUDA's autocast dtype
policy on CPU. Importing this package needs pytest.
"""

from ctxnets_shared.testing.autocast import CudaFloat32Policy, cuda_like_autocast
from ctxnets_shared.testing.checks import (
    CHECKS,
    STRUCTURAL_CHECKS,
    build,
    calibration_input,
    fx_trace,
    make_input,
    randomize_zero_init,
)
from ctxnets_shared.testing.fused import (
    assert_autocast_bf16_grads_match,
    assert_inference_matches,
    assert_retain_graph_backward_matches,
    assert_training_matches,
    float64_input,
    input_and_param_grads,
)
from ctxnets_shared.testing.spec import ModelSpec
from ctxnets_shared.testing.suite import contract_suite

__all__ = [
    "CHECKS",
    "STRUCTURAL_CHECKS",
    "CudaFloat32Policy",
    "ModelSpec",
    "assert_autocast_bf16_grads_match",
    "assert_inference_matches",
    "assert_retain_graph_backward_matches",
    "assert_training_matches",
    "build",
    "calibration_input",
    "contract_suite",
    "cuda_like_autocast",
    "float64_input",
    "fx_trace",
    "input_and_param_grads",
    "make_input",
    "randomize_zero_init",
]
