"""The monorepo's model contract (ctxnets_shared.testing) over all seven CoTNet models: every check.

Batches of 4. Every CoT layer's fusion (and SE-CoTNetD's SE convs) runs a BatchNorm over pooled (B, C, 1, 1)
values: in training it sees B values per channel, and with B = 2 a few of a layer's channels always get two
nearly equal values (noise images pool to close means), where BatchNorm's gain approaches 1 / sqrt(eps)
~ 300 and amplifies any rounding difference between two ways of running the model (TorchScript, FX).

All at 48x48 (2x2 maps in the last stage, 6x6 in the dilated ones of output_stride 8), which keeps the
seven full kits within the suite's CI time. Not 32: with 1x1 maps in the last stage its BatchNorms see only
B values per channel too.
"""

from __future__ import annotations

from ctxnets_shared.testing import ModelSpec, contract_suite

# non-default constructor kwargs that must come back from save_pretrained: input channels, pooling, the
# attention hook and a CoT ablation (which changes the layer's keys)
_KWARGS = {"in_chans": 1, "global_pool": "max", "attn_layer": "eca", "cot_kwargs": {"fusion": "sum"}}


def _spec(name: str) -> ModelSpec:
    # compile checks graph capture and AOT autograd (aot_eager); the CoT layer's inductor path has its own
    # compiled-vs-eager tests in test_cot_layer.py
    return ModelSpec(
        name,
        img_size=48,
        batch_size=4,
        output_strides=(8, 16),
        round_trip_kwargs=_KWARGS,
        torchscript=True,
    )


TestContract = contract_suite(
    [
        _spec("cotnet50"),
        _spec("cotnet101"),
        _spec("cotnext50_2x48d"),
        _spec("cotnext101_2x48d"),
        _spec("se_cotnetd_50"),
        _spec("se_cotnetd_101"),
        _spec("se_cotnetd_152"),
    ]
)
