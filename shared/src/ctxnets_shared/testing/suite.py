"""The contract checks as a pytest test class: one line per package runs them over all its models."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch.nn as nn

from ctxnets_shared.testing.checks import CHECKS, build
from ctxnets_shared.testing.spec import ModelSpec

__all__ = ["contract_suite"]


def contract_suite(specs: Sequence[ModelSpec], *, skip: Sequence[str] = ()) -> type:
    """A pytest class with one test per contract check, each parametrized over ``specs``.

    Use it as ``TestContract = contract_suite([ModelSpec("cotnet50", output_strides=(8, 16)), ...])`` in a
    package's ``tests/test_contract.py``. Read-only checks share one instance per model (built once,
    zero-initialised weights randomised, eval mode); the others copy it or build their own.

    Args:
        specs: the package's models.
        skip: check names (keys of :data:`~ctxnets_shared.testing.checks.CHECKS`) that do not apply to any
            of them; each skip shows in pytest's summary with its name.
    """
    unknown = (set(skip) | {c for s in specs for c in (s.only or ())}) - set(CHECKS)
    if unknown:
        raise ValueError(f"unknown contract checks {sorted(unknown)}; valid: {sorted(CHECKS)}")
    if not specs:
        raise ValueError("contract_suite needs at least one ModelSpec")
    models: dict[str, nn.Module] = {}

    def shared_model(spec: ModelSpec) -> nn.Module:
        if spec.name not in models:
            models[spec.name] = build(spec)
        return models[spec.name]

    def make_test(check_name: str) -> Callable[[object, ModelSpec], None]:
        check, applies = CHECKS[check_name]

        @pytest.mark.parametrize("spec", list(specs), ids=[s.name for s in specs])
        def test(self: object, spec: ModelSpec) -> None:
            if check_name in skip:
                pytest.skip(f"{check_name}: skipped for this package")
            if spec.only is not None and check_name not in spec.only:
                pytest.skip(f"{check_name}: {spec.only_reason or 'not in this spec'}")
            reason = applies(spec)
            if reason is not None:
                pytest.skip(f"{check_name}: {reason}")
            check(shared_model(spec), spec)

        test.__name__ = f"test_{check_name}"
        test.__doc__ = check.__doc__
        return test

    namespace = {f"test_{name}": make_test(name) for name in CHECKS}
    return type("TestModelContract", (), namespace)
