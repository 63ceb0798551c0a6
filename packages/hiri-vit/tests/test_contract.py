"""The monorepo's model contract (ctxnets_shared.testing) over hiri_vit_s, hiri_vit_b and hiri_vit_l.

Full-size networks: hiri_vit_s at 128x128 (two positions per side in stage 5, stride 64); B and L, whose
blocks are S's, at the smallest side the default strides take (64) and in batches of 4: stage 5 is then
one position, and a training-mode BatchNorm over two values per channel is ill-conditioned where the two
nearly coincide (gain up to 1 / sqrt(eps)). hiri_vit_s is compiled with inductor; B and L check graph
capture and autograd under torch.compile with aot_eager (same graphs, no code generation: keeps the
suite's CPU time in budget).
"""

from __future__ import annotations

import hiri_vit  # noqa: F401  (registers the models)
from ctxnets_shared.testing import CHECKS, ModelSpec, contract_suite

_HIRI = dict(img_size=128, reductions=(8, 16, 32, 64), output_strides=(), min_img_size=64)
_DEEP = dict(_HIRI, img_size=64, batch_size=4)

TestContract = contract_suite(
    [
        ModelSpec(
            "hiri_vit_s",
            round_trip_kwargs={"in_chans": 1, "head_type": "avg", "attn_layer": "eca", "attn_stages": [2, 3]},
            **_HIRI,
        ),
        ModelSpec(
            "hiri_vit_b",
            round_trip_kwargs={
                "in_chans": 1,
                "global_pool": "avg",
                "sr_ratios": [2, 1],
                "stem_width": 32,
                "fused_attn": False,
            },
            compile_backend="aot_eager",
            **_DEEP,
        ),
        ModelSpec(
            "hiri_vit_l",
            # its float64 FX training step (two float64 copies of 94M parameters, forward and backward)
            # alone took 75 s of CPU; B's and S's blocks run it, and L is FX-traced by fx_feature_extraction
            only=tuple(c for c in CHECKS if c != "fx_trace"),
            only_reason="fx_trace runs on hiri_vit_s / hiri_vit_b, same blocks (CI time)",
            round_trip_kwargs={"in_chans": 1, "downsample_strides": [1, 2, 2, 2], "irds_expansion": 2},
            compile_backend="aot_eager",
            **_DEEP,
        ),
    ]
)
