"""CARE: CNN Attention REvitalization, transformer-guided self-supervised pretraining for any timm backbone.

Paper: "Revitalizing CNN Attentions via Transformers in Self-Supervised Visual Representation Learning"
(Ge et al., NeurIPS 2021). :class:`CARE` wraps any timm backbone with stride-16 and stride-32 feature maps;
``care-ssl pretrain | probe | export`` trains it, evaluates it and keeps its online backbone. Importing
the package registers no timm models: CARE is a training method, not an architecture.
"""

from care_ssl.backbone import Backbone, BackboneError, create_backbone
from care_ssl.care import CARE, DESIGNS, MODES, momentum_at
from care_ssl.export import CareConverter, export_backbone
from care_ssl.losses import CareLosses, attention_loss, byol_loss, symmetric_byol_loss
from care_ssl.tstream import POS_EMBEDS, BoTBlock, TStream
from ctxnets_shared.packages import CtxnetsPackage, distribution_version

__version__ = distribution_version("care-ssl")

CITATION = """\
@inproceedings{ge2021care,
  title     = {Revitalizing {CNN} Attentions via Transformers in Self-Supervised Visual Representation
               Learning},
  author    = {Ge, Chongjian and Liang, Youwei and Song, Yibing and Jiao, Jianbo and Wang, Jue and Luo, Ping},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  year      = {2021}
}
"""

CTXNETS_PACKAGE = CtxnetsPackage(
    distribution="care-ssl",
    import_name="care_ssl",
    paper="CARE: Revitalizing CNN Attentions via Transformers in Self-Supervised Learning (NeurIPS 2021)",
    converter=CareConverter(),
    citation=CITATION,
)

__all__ = [
    "CARE",
    "CITATION",
    "CTXNETS_PACKAGE",
    "DESIGNS",
    "MODES",
    "POS_EMBEDS",
    "Backbone",
    "BackboneError",
    "BoTBlock",
    "CareConverter",
    "CareLosses",
    "TStream",
    "__version__",
    "attention_loss",
    "byol_loss",
    "create_backbone",
    "export_backbone",
    "momentum_at",
    "symmetric_byol_loss",
]
