"""Layer primitives used by more than one ctxnets package."""

from ctxnets_shared.layers.attention2d import MultiHeadSelfAttention2d
from ctxnets_shared.layers.attn_registry import (
    AttnLayerSpec,
    UnknownAttnLayerError,
    create_attn_layer,
    list_attn_layers,
    register_attn_layer,
    reset_attn_layers,
    resolve_attn_layer,
)
from ctxnets_shared.layers.chunking import images_per_chunk
from ctxnets_shared.layers.conv1x1_grad import conv1x1_backward
from ctxnets_shared.layers.conv_norm_act import ConvNormAct
from ctxnets_shared.layers.tracing import fused_cpu_path, is_plain_cpu, is_traced

__all__ = [
    "AttnLayerSpec",
    "ConvNormAct",
    "MultiHeadSelfAttention2d",
    "UnknownAttnLayerError",
    "conv1x1_backward",
    "create_attn_layer",
    "fused_cpu_path",
    "images_per_chunk",
    "is_plain_cpu",
    "is_traced",
    "list_attn_layers",
    "register_attn_layer",
    "reset_attn_layers",
    "resolve_attn_layer",
]
