"""A procedurally generated world that exercises the whole pipeline in the real data formats.

Scenes of textured stuff and coloured things (several made of parts) with masks at part, object
and background granularity, captions with attributes and noise, and labelled evaluation data,
all defined by one YAML world definition (:func:`load_world`) and written by
:func:`generate_synthetic_world` (CLI: ``datasets/prepare_synthetic.py``).
"""

from .captions import CaptionPair, caption_scene
from .generate import GenerationSummary, SplitCounts, generate_synthetic_world, split_rng
from .records import coco_categories, encode_rle, eval_record, id_to_rgb, sa1b_annotations
from .scene import RenderSpec, Scene, sample_scene
from .world import SPLITS, World, default_world_path, load_world

__all__ = [
    "SPLITS",
    "CaptionPair",
    "GenerationSummary",
    "RenderSpec",
    "Scene",
    "SplitCounts",
    "World",
    "caption_scene",
    "coco_categories",
    "default_world_path",
    "encode_rle",
    "eval_record",
    "generate_synthetic_world",
    "id_to_rgb",
    "load_world",
    "sa1b_annotations",
    "sample_scene",
    "split_rng",
]
