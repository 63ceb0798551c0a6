"""Layer primitives used by more than one ctxnets package: the attention-name registry.

Layers a single paper uses live in that paper's package (hiri-vit's ``ConvNormAct``, gcnet's
``MultiHeadSelfAttention2d``); where timm has a layer (DropPath, Mlp, ConvMlp, SE/ECA/CBAM), packages use
timm's.
"""

from ctxnets_shared.layers.attn_registry import (
    AttnLayerSpec,
    UnknownAttnLayerError,
    create_attn_layer,
    list_attn_layers,
    register_attn_layer,
    reset_attn_layers,
    resolve_attn_layer,
)

__all__ = [
    "AttnLayerSpec",
    "UnknownAttnLayerError",
    "create_attn_layer",
    "list_attn_layers",
    "register_attn_layer",
    "reset_attn_layers",
    "resolve_attn_layer",
]
