"""Every model that any installed ctxnets package registers, with all of them installed together.

The names come from the packages' entry points (``discover_packages``), not from a list here, so a model a
package adds later is covered without touching this file; ``test_discovery_found_every_model`` makes sure a
discovery failure cannot turn this module into a silent no-op. For each name, one model instance (built
through ``timm.create_model`` by the contract kit's ``build``: zero-initialised weights randomised,
BatchNorm statistics measured, eval mode) serves every check:

* ``features_only``: as many maps as ``feature_info`` entries, with its channels and reductions, and the
  same stages as the classifier's ``feature_info``;
* ``save_pretrained`` -> ``timm.create_model("local-dir:DIR", pretrained=True)``: identical outputs;
* a forward under CUDA's autocast dtype policy (emulated on CPU, bf16) gives finite logits.

Each package's contract suite also trains every one of its models under that policy in bf16 and fp16
and checks channels_last input (the kit's ``autocast`` and ``channels_last`` checks).

``torch.compile`` is not repeated here: each package's contract suite compiles every one of its models
(the kit's ``compile`` check), and graph capture does not depend on which other packages are installed.

Small inputs, batch 2: 64x64 (HIRI-ViT's smallest side at its stride 64; CONTAINER needs multiples of 32).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
import timm
import torch

from ctxnets_shared.packages import discover_packages
from ctxnets_shared.testing import ModelSpec, build, cuda_like_autocast, make_input
from ctxnets_shared.weights import save_pretrained

# every model the five packages register today: the parametrisation below must find at least these
EXPECTED_MODELS = {
    "cotnet50", "cotnet101", "cotnext50_2x48d", "cotnext101_2x48d", "se_cotnetd_50", "se_cotnetd_101",
    "se_cotnetd_152",
    "gc_resnet50", "gc_resnet50_r4", "gc_resnet101", "gc_resnext101_32x4d", "nl_resnet50", "snl_resnet50",
    "hiri_vit_s", "hiri_vit_b", "hiri_vit_l",
    "container_v1_light", "container_v1", "container_pam_small",
}  # fmt: skip

MODELS = [m for pkg in discover_packages().values() for m in pkg.models]

# 64 fits every model: CNNs (stride 32), HIRI-ViT (smallest side 64), CONTAINER (multiples of 32) and
# CONTAINER-PAM (multiples of 16, static affinities resampled from 224)
IMG_SIZE = 64


def test_discovery_found_every_model() -> None:
    assert MODELS, "discover_packages() found no ctxnets models: every test below would be skipped"
    missing = EXPECTED_MODELS - set(MODELS)
    assert not missing, f"registered models not discovered: {sorted(missing)}"
    assert len(MODELS) == len(set(MODELS)), "a model name is registered by two packages"


def _spec(name: str) -> ModelSpec:
    # the kit's default tolerances: its build() measures BatchNorm statistics on a batch holding the
    # checks' input, so even 152 layers in eval mode stay at unit scale (ctxnets_shared.testing)
    return ModelSpec(name, img_size=IMG_SIZE, batch_size=2)


Built = tuple[Any, ModelSpec, torch.Tensor]


@pytest.fixture(scope="module", params=MODELS)
def built(request: pytest.FixtureRequest) -> Iterator[Built]:
    """One randomised eval-mode instance per name and its eager logits on ``make_input``.

    pytest groups the tests by this module-scoped parameter, so one model is alive at a time.
    """
    spec = _spec(request.param)
    model = build(spec)
    with torch.no_grad():
        logits = model(make_input(spec))
    yield model, spec, logits


def test_create_model(built: Built) -> None:
    model, spec, logits = built
    assert timm.is_model(spec.name)
    assert model.pretrained_cfg["architecture"] == spec.name
    assert logits.shape == (2, model.num_classes) and torch.isfinite(logits).all()


def test_features_only(built: Built) -> None:
    model, spec, _ = built
    torch.manual_seed(0)
    fm = timm.create_model(spec.name, features_only=True).eval()
    info = fm.feature_info
    with torch.no_grad():
        feats = fm(make_input(spec))
    assert len(feats) == len(info.out_indices) > 0
    assert [f.shape[1] for f in feats] == info.channels()
    expected = [(math.ceil(IMG_SIZE / r),) * 2 for r in info.reduction()]
    assert [tuple(f.shape[-2:]) for f in feats] == expected
    # the same stages the classifier declares, at the same widths and strides
    full = {d["module"]: (d["num_chs"], d["reduction"]) for d in model.feature_info}
    for d in info.get_dicts():
        assert full.get(d["module"]) == (d["num_chs"], d["reduction"]), d["module"]


def test_local_dir_round_trip(built: Built) -> None:
    model, spec, want = built
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model, tmp)
        again = timm.create_model(f"local-dir:{tmp}", pretrained=True).eval()
    assert type(again) is type(model)
    with torch.no_grad():
        got = again(make_input(spec))
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_bf16_autocast_finite(built: Built) -> None:
    model, spec, _ = built
    with torch.no_grad(), cuda_like_autocast(torch.bfloat16):
        out = model(make_input(spec))
    assert out.shape == (2, model.num_classes) and torch.isfinite(out.float()).all()
