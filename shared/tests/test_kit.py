"""The model-contract kit: a healthy toy network passes it; each check fails on a network that breaks it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import toy_models

from ctxnets_shared.testing import CHECKS, ModelSpec, build, contract_suite, randomize_zero_init

TOY = dict(output_strides=(8, 16), torchscript=True, compile_backend="aot_eager")

# the whole kit over the healthy toy, as a package runs it over its models
TestToyContract = contract_suite([ModelSpec("ctxnets_toy", **TOY)])


@pytest.mark.parametrize("defect", list(toy_models.DEFECTS))
def test_each_check_fails_on_a_model_that_breaks_it(defect):
    check_name = toy_models.DEFECTS[defect]
    spec = ModelSpec(f"ctxnets_toy_{defect}", **TOY)
    check, _ = CHECKS[check_name]
    with pytest.raises(AssertionError, match=f"ctxnets_toy_{defect}"):
        check(build(spec), spec)


def test_every_check_has_a_broken_model():
    assert set(toy_models.DEFECTS.values()) == set(CHECKS)


def test_randomize_makes_zero_init_branches_visible():
    import timm

    model = timm.create_model("ctxnets_toy")
    assert not model.stages[0].bn2.weight.any()
    randomize_zero_init(model)
    assert model.stages[0].bn2.weight.min() >= 0.5
    assert (model.stem_bn.running_var != 1).all() and (model.stem_bn.running_mean != 0).all()


def test_suite_rejects_unknown_skips():
    with pytest.raises(ValueError, match="unknown contract checks"):
        contract_suite([ModelSpec("ctxnets_toy")], skip=["nope"])


def test_batchnorm_statistics_come_from_a_batch_holding_the_checks_input():
    # eval-mode checks must run on images the statistics were measured on (calibration_input's docstring)
    import timm
    import torch

    from ctxnets_shared.testing import calibration_input, make_input
    from ctxnets_shared.testing.checks import calibrate_batchnorm

    spec = ModelSpec("ctxnets_toy", batch_size=3)
    cal = calibration_input(spec)
    assert cal.shape[0] == 8 and torch.equal(cal[:3], make_input(spec))
    big = ModelSpec("ctxnets_toy", batch_size=10)
    assert torch.equal(calibration_input(big), make_input(big))
    model = build(spec)
    torch.manual_seed(0)
    ref = calibrate_batchnorm(randomize_zero_init(timm.create_model("ctxnets_toy")), cal)
    assert torch.equal(model.stem_bn.running_mean, ref.stem_bn.running_mean)
    assert torch.equal(model.stem_bn.running_var, ref.stem_bn.running_var)


@pytest.mark.parametrize(
    ("overlay", "error"),
    [
        (dict(url="https://example.invalid/toy.pth"), None),
        (dict(hf_hub_id="org/toy"), None),
        (dict(weights_page="https://example.invalid/drive", notes=("get it from the page",)), None),
        (dict(url="http://example.invalid/toy.pth"), "is not an https link"),
        (dict(weights_page="https://example.invalid/drive"), "needs notes"),
    ],
)
def test_pretrained_cfg_may_name_where_weights_come_from(overlay, error):
    import timm

    from ctxnets_shared.testing.checks import check_pretrained_cfg

    model = timm.create_model("ctxnets_toy", pretrained_cfg_overlay=overlay)
    if error is None:
        check_pretrained_cfg(model, ModelSpec("ctxnets_toy"))
    else:
        with pytest.raises(AssertionError, match=error):
            check_pretrained_cfg(model, ModelSpec("ctxnets_toy"))
