"""Dataset loaders and their detectron2 catalog registration.

Importing this package registers the synthetic world's datasets (``synthetic_*``, see
:mod:`.synthetic`) from ``$UNIOVSEG_SYNTHETIC_ROOT`` (default ``./datasets/synthetic``). The
registration is lazy: it reads no file, so it costs nothing when the world was never generated.
"""

import os

from .captions import load_caption_manifest, register_caption_dataset
from .promptable import register_promptable_view
from .synthetic import register_synthetic_world

__all__ = ["load_caption_manifest", "register_caption_dataset", "register_synthetic_world"]

register_synthetic_world(
    os.environ.get("UNIOVSEG_SYNTHETIC_ROOT", os.path.join("datasets", "synthetic"))
)
# 1-point / 1-box IoU on the synthetic world's labelled segments (things and stuff).
register_promptable_view("synthetic_promptable_val", "synthetic_panoptic_val")
