"""The config a model is built with when a checkpoint will be loaded into it.

A UniOVSeg checkpoint (a trained model, or the authors' converted ``stage1.pth``) holds the whole
frozen CLIP under ``backbone.clip_model.*``. Building the model first reads
``MODEL.UNIOVSEG.CLIP.PRETRAINED`` (a hub download, or a 1.4 GB file) only for the checkpoint to
overwrite every one of those weights: the outputs are the same with ``PRETRAINED: ""``.
:func:`cfg_without_clip_download` makes that choice, after checking that the checkpoint exists;
the predictor, the demo and ``train_net.py --eval-only`` call it before ``build_model``
(training still loads ``PRETRAINED``, which stage 1 needs and stage 2 overwrites).
"""

from __future__ import annotations

import logging
import os

from detectron2.config import CfgNode

from uniovseg.checkpoint import read_checkpoint_shapes

from .open_clip_loading import clip_state_dict_shapes

__all__ = ["CLIP_CHECKPOINT_PREFIX", "cfg_without_clip_download"]

logger = logging.getLogger(__name__)

# Where the CLIP weights live in a UniOVSeg state dict: UniOVSeg.backbone is the
# CLIPConvNeXtBackbone, whose open_clip model is its `clip_model` attribute.
CLIP_CHECKPOINT_PREFIX = "backbone.clip_model."


def cfg_without_clip_download(cfg: CfgNode, weights: str | None = None) -> CfgNode:
    """Checks that the checkpoint exists, and skips the CLIP pretrained weights it replaces.

    Args:
        cfg: A uniovseg config (frozen or not); it is not modified.
        weights: The checkpoint that will be loaded into the model; None: ``cfg.MODEL.WEIGHTS``.
            With ``--resume``, pass the checkpoint the run resumes from. ``""`` or a URL
            (``scheme://``): nothing is checked and ``cfg`` is returned.

    Returns:
        ``cfg`` itself when the CLIP pretrained weights are needed (no checkpoint, no CLIP weights
        in it, or some of them missing or of another shape than ``MODEL.UNIOVSEG.CLIP.MODEL_NAME``
        has), else a copy (frozen if ``cfg`` is) with ``MODEL.UNIOVSEG.CLIP.PRETRAINED = ""``.
        Build the model with it, but save or show the original: without that checkpoint the
        copy would give a random CLIP.

    Raises:
        FileNotFoundError: the checkpoint is not a file (the message names it).
        ValueError: the checkpoint is refused or unreadable (see
            :func:`uniovseg.checkpoint.read_checkpoint_shapes`).
    """
    path = cfg.MODEL.WEIGHTS if weights is None else weights
    if not path or "://" in path:
        return cfg
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"MODEL.WEIGHTS {path!r} does not exist (or is not a file). Give the path of a "
            "trained or converted checkpoint (see tools/convert_official_checkpoint.py), or set "
            "MODEL.WEIGHTS to '' for random decoders."
        )
    if not cfg.MODEL.UNIOVSEG.CLIP.PRETRAINED:
        return cfg
    in_checkpoint = {
        name.removeprefix(CLIP_CHECKPOINT_PREFIX): shape
        for name, shape in read_checkpoint_shapes(path).items()
        if name.startswith(CLIP_CHECKPOINT_PREFIX)
    }
    if not in_checkpoint:
        logger.info("%s holds no CLIP weights: CLIP is loaded from its pretrained weights", path)
        return cfg
    model_name = cfg.MODEL.UNIOVSEG.CLIP.MODEL_NAME
    expected = clip_state_dict_shapes(model_name)
    lacking = [name for name, shape in expected.items() if in_checkpoint.get(name) != shape]
    if lacking:
        logger.warning(
            "%s holds CLIP weights, but %d of the %d of open_clip %r are missing or of another "
            "shape (e.g. %s): CLIP is loaded from MODEL.UNIOVSEG.CLIP.PRETRAINED first",
            path,
            len(lacking),
            len(expected),
            model_name,
            lacking[0],
        )
        return cfg
    logger.info(
        "%s holds every CLIP weight: MODEL.UNIOVSEG.CLIP.PRETRAINED %r is not loaded",
        path,
        cfg.MODEL.UNIOVSEG.CLIP.PRETRAINED,
    )
    adjusted = cfg.clone()
    adjusted.defrost()
    adjusted.MODEL.UNIOVSEG.CLIP.PRETRAINED = ""
    if cfg.is_frozen():
        adjusted.freeze()
    return adjusted
