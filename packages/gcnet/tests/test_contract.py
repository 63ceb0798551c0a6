"""The monorepo's model contract (ctxnets_shared.testing) over all six networks.

Full-size networks at 64x64. gc_resnet50 is compiled with inductor; the others check graph capture and
autograd under torch.compile with aot_eager (same graphs, no code generation: keeps the suite's CPU time in
budget).
"""

from __future__ import annotations

import gcnet  # noqa: F401  (registers the models)
from ctxnets_shared.testing import STRUCTURAL_CHECKS, ModelSpec, contract_suite

_CNN = dict(img_size=64, reductions=(4, 8, 16, 32), output_strides=(8, 16), min_img_size=32)

# CI time: the deeper variants repeat the blocks of a sibling that runs every check
DEEP = "same blocks as gc_resnet50, which runs every check"

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
            only=STRUCTURAL_CHECKS,
            only_reason=DEEP,
            round_trip_kwargs={"in_chans": 1, "attn_position": "after_add", "attn_stages": [3]},
            compile_backend="aot_eager",
            # 101 randomised layers give logits around 200: FrozenBatchNorm2d vs BatchNorm2d rounding
            # differs by 4e-4 relative there
            rtol=1e-3,
            **_CNN,
        ),
        ModelSpec(
            "gc_resnext101_32x4d",
            only=STRUCTURAL_CHECKS,
            only_reason=DEEP,
            round_trip_kwargs={"in_chans": 1, "attn_position": "after_conv2", "ratio": 0.25},
            compile_backend="aot_eager",
            **_CNN,
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
