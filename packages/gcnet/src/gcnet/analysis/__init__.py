"""The analysis of the paper's Section 3 (Cao et al., "Global Context Networks", TPAMI): capture the
attention maps of NL / SNL / GC (and multi-head self-attention) blocks with hooks, measure the average cosine
distance between positions of their input, output and attention maps (Table 1), and draw the attention
maps of several query positions over the image (Figures 1-2)::

    records = capture_attention(model, images)          # {block name: AttentionRecord}
    {name: r.distances() for name, r in records.items()}  # {"input": ., "output": ., "att": .}
    plot_attention(image_rgb, records, "attention.png")   # needs gcnet[analysis]
"""

from gcnet.analysis.attention import MultiHeadSelfAttention2d
from gcnet.analysis.distance import average_cosine_distance
from gcnet.analysis.figure import DEFAULT_QUERIES, plot_attention
from gcnet.analysis.probe import (
    AttentionProbe,
    AttentionRecord,
    attention_modules,
    capture_attention,
    upsample_maps,
)

__all__ = [
    "DEFAULT_QUERIES",
    "AttentionProbe",
    "AttentionRecord",
    "MultiHeadSelfAttention2d",
    "attention_modules",
    "average_cosine_distance",
    "capture_attention",
    "plot_attention",
    "upsample_maps",
]
