"""Container: Context Aggregation Networks (Gao et al., NeurIPS 2021) for timm, in pure PyTorch.

Importing the package registers container_v1_light (CONTAINER-LIGHT, the released model), container_v1
(CONTAINER, a reconstruction) and container_pam_small (CONTAINER-PAM on DeiT-Small) with timm.
"""

from container.aggregation import ContextAggregation, DenseAffinity, depthwise_affinity
from container.container import Container, ContainerBlock, ContainerStage, PatchEmbed
from container.convert import ContainerConverter, map_official_key
from container.pam import ContainerPam, PamAttention, resample_static_affinity
from ctxnets_shared.packages import CtxnetsPackage, distribution_version

__version__ = distribution_version("container")

MODELS = ("container_v1_light", "container_v1", "container_pam_small")

CITATION = """\
@inproceedings{gao2021container,
  title         = {Container: Context Aggregation Networks},
  author        = {Gao, Peng and Lu, Jiasen and Li, Hongsheng and Mottaghi, Roozbeh and Kembhavi, Aniruddha},
  booktitle     = {Advances in Neural Information Processing Systems (NeurIPS)},
  year          = {2021},
  eprint        = {2106.01401},
  archivePrefix = {arXiv}
}
"""

CTXNETS_PACKAGE = CtxnetsPackage(
    distribution="container",
    import_name="container",
    paper="Container: Context Aggregation Networks (NeurIPS 2021)",
    models=MODELS,
    converter=ContainerConverter(),
    citation=CITATION,
)

__all__ = [
    "CITATION",
    "CTXNETS_PACKAGE",
    "MODELS",
    "Container",
    "ContainerBlock",
    "ContainerConverter",
    "ContainerPam",
    "ContainerStage",
    "ContextAggregation",
    "DenseAffinity",
    "PamAttention",
    "PatchEmbed",
    "__version__",
    "depthwise_affinity",
    "map_official_key",
    "resample_static_affinity",
]
