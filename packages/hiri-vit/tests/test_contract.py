"""The monorepo's model contract (ctxnets_shared.testing) over hiri_vit_s, hiri_vit_b and hiri_vit_l.

Full-size networks at 128x128 (two positions per side in stage 5, stride 64); 64 is the smallest side
the default strides take. hiri_vit_s is compiled with inductor; B and L check graph capture and autograd
under torch.compile with aot_eager (same graphs, no code generation: keeps the suite's CPU time in budget).
"""

from __future__ import annotations

import hiri_vit  # noqa: F401  (registers the models)
from ctxnets_shared.testing import STRUCTURAL_CHECKS, ModelSpec, contract_suite

_HIRI = dict(img_size=128, reductions=(8, 16, 32, 64), output_strides=(), min_img_size=64)

# CI time: the deeper variants repeat the blocks of a sibling that runs every check
DEEP = "same blocks as hiri_vit_s, which runs every check"

TestContract = contract_suite(
    [
        ModelSpec(
            "hiri_vit_s",
            round_trip_kwargs={"in_chans": 1, "head_type": "avg", "attn_layer": "eca", "attn_stages": [2, 3]},
            **_HIRI,
        ),
        ModelSpec(
            "hiri_vit_b",
            only=STRUCTURAL_CHECKS,
            only_reason=DEEP,
            round_trip_kwargs={"in_chans": 1, "global_pool": "avg", "sr_ratios": [2, 1], "stem_width": 32},
            compile_backend="aot_eager",
            **_HIRI,
        ),
        ModelSpec(
            "hiri_vit_l",
            only=STRUCTURAL_CHECKS,
            only_reason=DEEP,
            round_trip_kwargs={"in_chans": 1, "downsample_strides": [1, 2, 2, 2], "irds_expansion": 2},
            compile_backend="aot_eager",
            **_HIRI,
        ),
    ]
)
