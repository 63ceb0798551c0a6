"""The monorepo's model contract (ctxnets_shared.testing) over the three CONTAINER models."""

from __future__ import annotations

from ctxnets_shared.testing import ModelSpec, contract_suite

_CNN_ROUND_TRIP = {"in_chans": 1, "global_pool": "max", "attn_layer": "eca"}

TestContract = contract_suite(
    [
        ModelSpec("container_v1_light", img_size=64, round_trip_kwargs=_CNN_ROUND_TRIP),
        ModelSpec("container_v1", img_size=64, round_trip_kwargs=_CNN_ROUND_TRIP),
        # DeiT-Small layout: three token maps at stride 16, a token head (no spatial map to leave unpooled)
        ModelSpec(
            "container_pam_small",
            img_size=64,
            reductions=(16, 16, 16),
            round_trip_kwargs={"in_chans": 1, "global_pool": "avg"},
            min_img_size=16,
            unpooled_head=False,
        ),
    ]
)
