"""The monorepo's model contract (ctxnets_shared.testing) over all six networks.

Full-size networks at 64x64; the 101-layer ones, whose blocks are gc_resnet50's, at the smallest side (32)
and in batches of 4: their last stage's maps are then 1x1, and a training-mode BatchNorm over two values
per channel is ill-conditioned where the two nearly coincide (gain up to 1 / sqrt(eps)). gc_resnet50 is
compiled with inductor; the others check graph capture and autograd under torch.compile with aot_eager
(same graphs, no code generation: keeps the suite's CPU time in budget).
"""

from __future__ import annotations

import gcnet  # noqa: F401  (registers the models)
from ctxnets_shared.testing import ModelSpec, contract_suite

_CNN = dict(img_size=64, reductions=(4, 8, 16, 32), output_strides=(8, 16), min_img_size=32)
_DEEP = dict(_CNN, img_size=32, batch_size=4)

TestContract = contract_suite(
    [
        ModelSpec(
            "gc_resnet50",
            round_trip_kwargs={"in_chans": 1, "global_pool": "max", "attn_layer": "eca"},
            **_CNN,
        ),
        ModelSpec(
            "gc_resnet50_r4",
            round_trip_kwargs={"in_chans": 1, "pooling": "avg", "fusion": ["channel_add", "channel_mul"]},
            compile_backend="aot_eager",
            **_CNN,
        ),
        ModelSpec(
            "gc_resnet101",
            round_trip_kwargs={"in_chans": 1, "attn_position": "after_add", "attn_stages": [3]},
            compile_backend="aot_eager",
            **_DEEP,
        ),
        ModelSpec(
            "gc_resnext101_32x4d",
            round_trip_kwargs={"in_chans": 1, "attn_position": "after_conv2", "ratio": 0.25},
            compile_backend="aot_eager",
            **_DEEP,
        ),
        ModelSpec(
            "nl_resnet50",
            round_trip_kwargs={"in_chans": 1, "mode": "concatenation"},
            compile_backend="aot_eager",
            **_CNN,
        ),
        ModelSpec(
            "snl_resnet50",
            round_trip_kwargs={"in_chans": 1, "attn_stages": [1, 2], "attn_blocks": [0]},
            compile_backend="aot_eager",
            **_CNN,
        ),
    ]
)
