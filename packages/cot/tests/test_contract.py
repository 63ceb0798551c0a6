"""The monorepo's model contract (ctxnets_shared.testing) over the seven registered CoTNet models."""

from __future__ import annotations

import cot  # noqa: F401  (importing the package registers the models with timm)
from ctxnets_shared.testing import ModelSpec, contract_suite

# non-default constructor options that must come back from save_pretrained: input channels, pooling,
# the composition hook, and a paper ablation (Table 5, Linear Fusion) through cot_kwargs
_ROUND_TRIP = {"in_chans": 1, "global_pool": "max", "attn_layer": "eca", "cot_kwargs": {"fusion": "sum"}}

TestContract = contract_suite(
    [
        ModelSpec("cotnet50", output_strides=(8, 16), round_trip_kwargs=_ROUND_TRIP, torchscript=True),
        ModelSpec("cotnext50_2x48d", output_strides=(8, 16), round_trip_kwargs=_ROUND_TRIP),
        ModelSpec("se_cotnetd_50", output_strides=(8, 16), torchscript=True),
        # the deep variants: compile checks graph capture and autograd without code generation (time)
        ModelSpec("cotnet101", output_strides=(8, 16), compile_backend="aot_eager"),
        ModelSpec("cotnext101_2x48d", output_strides=(8, 16), compile_backend="aot_eager"),
        ModelSpec("se_cotnetd_101", output_strides=(8, 16), compile_backend="aot_eager"),
        ModelSpec("se_cotnetd_152", output_strides=(8, 16), compile_backend="aot_eager"),
    ]
)
