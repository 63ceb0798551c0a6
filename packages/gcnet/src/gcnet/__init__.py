"""Global Context Networks (Cao, Xu, Lin, Wei, Hu, "Global Context Networks", TPAMI) for timm.

Importing the package registers the GC-ResNets, NL-ResNet-50 and SNL-ResNet-50 with timm and the blocks
"gc", "nl" and "snl" with ctxnets_shared's attention registry, so every ctxnets backbone takes them through
``attn_layer``. The analysis tools of the paper's Section 3 are in :mod:`gcnet.analysis`.
"""

from ctxnets_shared.layers import register_attn_layer
from ctxnets_shared.packages import CtxnetsPackage, distribution_version
from gcnet.convert import MMDetGCNetConverter
from gcnet.gc_block import FUSIONS, POOLINGS, TRANSFORMS, GlobalContextBlock
from gcnet.gc_resnet import POSITIONS, ContextBottleneck, GCResNet
from gcnet.non_local import NL_MODES, NonLocalBlock
from gcnet.simplified_non_local import SimplifiedNonLocalBlock

__version__ = distribution_version("gcnet")

MODELS = (
    "gc_resnet50",
    "gc_resnet50_r4",
    "gc_resnet101",
    "gc_resnext101_32x4d",
    "nl_resnet50",
    "snl_resnet50",
)
ATTN_LAYERS = {"gc": GlobalContextBlock, "nl": NonLocalBlock, "snl": SimplifiedNonLocalBlock}
for _name, _factory in ATTN_LAYERS.items():
    register_attn_layer(_name, _factory, source="gcnet")

CITATION = """\
@article{cao2020gcnet,
  title         = {Global Context Networks},
  author        = {Cao, Yue and Xu, Jiarui and Lin, Stephen and Wei, Fangyun and Hu, Han},
  journal       = {IEEE Transactions on Pattern Analysis and Machine Intelligence},
  year          = {2020},
  doi           = {10.1109/TPAMI.2020.3047209},
  eprint        = {2012.13375},
  archivePrefix = {arXiv}
}
"""

CTXNETS_PACKAGE = CtxnetsPackage(
    distribution="gcnet",
    import_name="gcnet",
    paper="Global Context Networks (GCNet, TPAMI)",
    models=MODELS,
    attn_layers=tuple(ATTN_LAYERS),
    converter=MMDetGCNetConverter(),
    citation=CITATION,
)

__all__ = [
    "ATTN_LAYERS",
    "CITATION",
    "CTXNETS_PACKAGE",
    "FUSIONS",
    "MODELS",
    "NL_MODES",
    "POOLINGS",
    "POSITIONS",
    "TRANSFORMS",
    "ContextBottleneck",
    "GCResNet",
    "GlobalContextBlock",
    "MMDetGCNetConverter",
    "NonLocalBlock",
    "SimplifiedNonLocalBlock",
    "__version__",
]
