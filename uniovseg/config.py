"""Config keys of uniovseg, added to a detectron2 config by :func:`add_uniovseg_config`.

Every key lives under ``MODEL.UNIOVSEG.*`` (model) or ``INPUT.UNIOVSEG.*`` / ``SOLVER.*`` where
detectron2 already has a home for it. Each key carries a comment saying what it does; YAML files
under ``configs/`` override them with ``_BASE_`` inheritance.
"""

from detectron2.config import CfgNode as CN

# CLIP pixel statistics in 0-255 units (open_clip's OPENAI_DATASET_MEAN/STD x 255); the frozen
# CLIP backbone was trained with these, so every config uses them.
CLIP_PIXEL_MEAN = [122.7709383, 116.7460125, 104.09373615]
CLIP_PIXEL_STD = [68.5005327, 66.6321579, 70.32316305]


def add_uniovseg_config(cfg: CN) -> None:
    """Adds every uniovseg key, with its default, to ``cfg`` in place."""
    cfg.MODEL.UNIOVSEG = CN()
    _add_clip_config(cfg)
    # --- further sections are added below by later components (pixel decoder, prompt encoder,
    # --- mask decoder, data, alignment); keep one function per section.


def _add_clip_config(cfg: CN) -> None:
    """The frozen open_clip ConvNeXt CLIP used as backbone and text encoder."""
    cfg.MODEL.UNIOVSEG.CLIP = CN()
    # open_clip model name, e.g. "convnext_large_d_320" (the paper's) or a packaged tiny config
    # such as "uniovseg_tiny_convnext" (see uniovseg/model_zoo/open_clip_configs/).
    cfg.MODEL.UNIOVSEG.CLIP.MODEL_NAME = "convnext_large_d_320"
    # open_clip pretrained tag (e.g. "laion2b_s29b_b131k_ft_soup", needs the hub) or a local
    # weights file (.bin / .safetensors / .pt). Empty string: random weights (tests, benchmarks).
    cfg.MODEL.UNIOVSEG.CLIP.PRETRAINED = "laion2b_s29b_b131k_ft_soup"
    # Texts are encoded this many at a time to bound memory (A-847 x 14 templates > 11k prompts).
    cfg.MODEL.UNIOVSEG.CLIP.TEXT_CHUNK_SIZE = 256
