"""The model contract as a reusable pytest kit (extra ``test``): every package runs it over its models.

``ctxnets_shared.testing.checks`` holds the checks as plain functions that raise AssertionError;
:func:`contract_suite` turns them into a pytest class. Importing this package needs pytest.
"""

from ctxnets_shared.testing.checks import (
    CHECKS,
    STRUCTURAL_CHECKS,
    build,
    calibration_input,
    fx_trace,
    make_input,
    randomize_zero_init,
)
from ctxnets_shared.testing.spec import ModelSpec
from ctxnets_shared.testing.suite import contract_suite

__all__ = [
    "CHECKS",
    "STRUCTURAL_CHECKS",
    "ModelSpec",
    "build",
    "calibration_input",
    "contract_suite",
    "fx_trace",
    "make_input",
    "randomize_zero_init",
]
