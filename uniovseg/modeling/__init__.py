"""Model components. Importing this package registers the backbone and the meta-architecture
with detectron2's registries (by name, as configs refer to them)."""

# CLIPConvNeXtBackbone and the UniOVSeg meta-architecture register themselves on import.
from uniovseg.modeling import clip_backbone, meta_arch  # noqa: F401
