"""Model components. Importing this package registers the backbone and the meta-architecture
with detectron2's registries (by name, as configs refer to them)."""

from uniovseg.modeling import clip_backbone  # noqa: F401  (registers CLIPConvNeXtBackbone)
from uniovseg.modeling import meta_arch  # noqa: F401  (registers the UniOVSeg meta-architecture)
