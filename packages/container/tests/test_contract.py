"""The shared model-contract kit over the three models (runs once ctxnets-shared ships ``testing``)."""

from __future__ import annotations

import pytest

testing = pytest.importorskip("ctxnets_shared.testing", reason="contract kit not in this ctxnets-shared")

import container  # noqa: E402,F401  (registers the models)

_CNN_ROUND_TRIP = {"in_chans": 1, "global_pool": "max", "attn_layer": "eca"}

TestContract = testing.contract_suite(
    [
        testing.ModelSpec(
            "container_v1_light", img_size=64, reductions=(4, 8, 16, 32), round_trip_kwargs=_CNN_ROUND_TRIP,
            min_img_size=32,
        ),
        testing.ModelSpec(
            "container_v1", img_size=64, reductions=(4, 8, 16, 32), round_trip_kwargs=_CNN_ROUND_TRIP,
            min_img_size=32,
        ),
        testing.ModelSpec(
            "container_pam_small", img_size=64, reductions=(16, 16, 16),
            round_trip_kwargs={"in_chans": 1, "global_pool": "avg"}, min_img_size=16,
        ),
    ]
)  # fmt: skip
