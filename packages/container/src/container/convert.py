"""Converter from the official CONTAINER-LIGHT checkpoint (allenai/container, DeiT-style trainer) to our
safetensors folder.

The official trainer saves ``{'model', 'optimizer', 'lr_scheduler', 'epoch', 'model_ema', 'scaler',
'args'}``; ``model`` holds the weights (``model_ema`` on request). Official keys are renamed to ours::

    patch_embed{s}.proj|norm.*          -> stages.{s-1}.patch_embed.proj|norm.*
    blocks{s}.{i}.pos_embed|norm1|norm2|mlp.fc1|mlp.fc2.*
                                        -> stages.{s-1}.blocks.{i}.(same).*
    blocks{s}.{i}.conv1.*               -> stages.{s-1}.blocks.{i}.mixer.in_proj.*    ([q | k | v] or v)
    blocks{s}.{i}.attn.* (stages 1-3)   -> stages.{s-1}.blocks.{i}.mixer.static.*     (5x5 depthwise)
    blocks{s}.{i}.conv.*  (stage 4)     -> stages.{s-1}.blocks.{i}.mixer.static.*     (5x5 depthwise)
    blocks{s}.{i}.sa_weight             -> stages.{s-1}.blocks.{i}.mixer.mix_logit
    blocks{s}.{i}.conv2.*               -> stages.{s-1}.blocks.{i}.mixer.out_proj.*
    norm.*, head.*                      -> unchanged

    ctxnets convert container_v1_light checkpoint.pth out/
"""

from __future__ import annotations

import re

from ctxnets_shared.weights import CheckpointConverter

__all__ = ["ContainerConverter", "map_official_key"]

_MIXER = {
    "conv1": "in_proj",
    "attn": "static",
    "conv": "static",
    "sa_weight": "mix_logit",
    "conv2": "out_proj",
}
_BLOCK = re.compile(r"^blocks([1-4])\.(\d+)\.([a-z_0-9]+)(.*)$")
_EMBED = re.compile(r"^patch_embed([1-4])\.(.*)$")


def map_official_key(key: str) -> str:
    """An official CONTAINER-LIGHT key -> ours (unknown keys pass through so the check lists them)."""
    m = _EMBED.match(key)
    if m:
        return f"stages.{int(m[1]) - 1}.patch_embed.{m[2]}"
    m = _BLOCK.match(key)
    if m:
        stage, idx, part, rest = int(m[1]) - 1, m[2], m[3], m[4]
        part = f"mixer.{_MIXER[part]}" if part in _MIXER else part
        return f"stages.{stage}.blocks.{idx}.{part}{rest}"
    return key


class ContainerConverter(CheckpointConverter):
    """Official CONTAINER-LIGHT checkpoint -> our state dict.

    Args:
        use_ema: take ``model_ema`` from a training checkpoint instead of ``model``.
    """

    wrapper_keys = ("model", "state_dict")
    ema_keys = ("model_ema", "state_dict_ema")
    verified = (
        "a checkpoint in the official trainer's layout gives, after conversion, the same logits as an "
        "independent re-statement of the released architecture loaded with it (official-forward equality, "
        "tests/test_convert.py)."
    )

    def map_key(self, key: str) -> str | None:
        """Official key -> ours (see the module docstring)."""
        return map_official_key(key)
