"""Converter from the official CoTNet checkpoints (JDAI-CV/CoTNet ``.pth`` / ``.pth.tar``) to safetensors.

Our module names equal the official ones, so the conversion only unwraps a training checkpoint
(``state_dict`` / ``state_dict_ema``, DataParallel ``module.`` prefixes) and verifies every key and shape
against the model before writing ``model.safetensors`` + ``config.json``::

    ctxnets convert cotnet50 cotnet50.pth.tar out/
"""

from __future__ import annotations

from ctxnets_shared.weights import CheckpointConverter

__all__ = ["CotConverter"]


class CotConverter(CheckpointConverter):
    """Official CoTNet / CoTNeXt / SE-CoTNetD checkpoint -> our state dict (identity key map).

    Args:
        use_ema: take ``state_dict_ema`` from a training checkpoint instead of ``state_dict``.
    """

    # timm's training script stores the weights under these names
    wrapper_keys = ("state_dict", "model")
    ema_keys = ("state_dict_ema", "model_ema")
    verified = (
        "every official key name and shape is asserted against the official module definitions "
        "(tests/test_convert.py), a trainer-format .pth.tar loads through timm unchanged "
        "(tests/test_pretrained.py), and the CoT layer equals a step-by-step reference of the official layer "
        "(tests/test_cot_layer.py); the official CuPy kernel needs CUDA, so no whole-network logits "
        "comparison runs in the tests."
    )

    def map_key(self, key: str) -> str | None:
        """Official key -> ours: identical (``layer1.0.conv2.key_embed.0.weight`` stays as it is)."""
        return key
