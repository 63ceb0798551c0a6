"""Contextual Transformer Networks (CoTNet, Li et al., TPAMI 2022) for timm, in pure PyTorch.

Importing the package registers cotnet50, cotnet101, cotnext50_2x48d, cotnext101_2x48d, se_cotnetd_50,
se_cotnetd_101 and se_cotnetd_152 with timm.
"""

from cot.aggregation import local_aggregate
from cot.convert import CotConverter
from cot.cot_layer import ABLATIONS, CotLayer, CoXtLayer
from cot.cotnet import CotBottleneck, CoTNet
from cot.se_conv import SeConv2d
from cot.surgery import replace_conv3x3
from ctxnets_shared.packages import CtxnetsPackage, distribution_version

__version__ = distribution_version("cotnet")

MODELS = (
    "cotnet50",
    "cotnet101",
    "cotnext50_2x48d",
    "cotnext101_2x48d",
    "se_cotnetd_50",
    "se_cotnetd_101",
    "se_cotnetd_152",
)

CITATION = """\
@article{li2022cotnet,
  title         = {Contextual Transformer Networks for Visual Recognition},
  author        = {Li, Yehao and Yao, Ting and Pan, Yingwei and Mei, Tao},
  journal       = {IEEE Transactions on Pattern Analysis and Machine Intelligence},
  year          = {2022},
  doi           = {10.1109/TPAMI.2022.3164083},
  eprint        = {2107.12292},
  archivePrefix = {arXiv}
}
"""

CTXNETS_PACKAGE = CtxnetsPackage(
    distribution="cotnet",
    import_name="cot",
    paper="Contextual Transformer Networks for Visual Recognition (CoTNet, TPAMI 2022)",
    models=MODELS,
    converter=CotConverter(),
    citation=CITATION,
)

__all__ = [
    "ABLATIONS",
    "CITATION",
    "CTXNETS_PACKAGE",
    "MODELS",
    "CoTNet",
    "CoXtLayer",
    "CotBottleneck",
    "CotConverter",
    "CotLayer",
    "SeConv2d",
    "__version__",
    "local_aggregate",
    "replace_conv3x3",
]
