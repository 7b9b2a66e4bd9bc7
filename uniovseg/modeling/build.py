"""The config a model is built with when a checkpoint will be loaded into it.

A UniOVSeg checkpoint (a trained model, or the authors' converted ``stage1.pth``) holds the whole
frozen CLIP under ``backbone.clip_model.*``. Building the model first reads
``MODEL.UNIOVSEG.CLIP.PRETRAINED`` (a hub download, or a 1.4 GB file) only for the checkpoint to
overwrite every one of those weights: the outputs are the same with ``PRETRAINED: ""``.
:func:`cfg_without_clip_download` makes that choice, after checking that the checkpoint exists;
the predictor, the demo and ``train_net.py --eval-only`` call it before ``build_model``
(training still loads ``PRETRAINED``, which stage 1 needs and stage 2 overwrites).
:func:`build_inference_model` is the whole path from a config file to a model in eval mode.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import torch
from detectron2.config import CfgNode

from uniovseg.checkpoint import UniOVSegCheckpointer, read_checkpoint_shapes

from .open_clip_loading import clip_state_dict_shapes

__all__ = ["CLIP_CHECKPOINT_PREFIX", "build_inference_model", "cfg_without_clip_download"]

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


def build_inference_model(
    config_file: str,
    weights: str = "",
    opts: Sequence[str] = (),
    device: str | None = None,
) -> tuple[torch.nn.Module, CfgNode]:
    """Builds the model of a config file, loads its weights and puts it in eval mode.

    Args:
        config_file: A uniovseg YAML config: a path, or the name of a config packaged with
            uniovseg (``"stage2/uniovseg_convnext_large_stage2.yaml"``,
            ``"tiny/stage1_tiny.yaml"``; see :func:`uniovseg.model_zoo.available_configs`),
            so it works from any folder.
        weights: Checkpoint path (overrides ``MODEL.WEIGHTS``); empty: ``MODEL.WEIGHTS``
            from the config/opts, or none (random decoders, CLIP from
            ``MODEL.UNIOVSEG.CLIP.PRETRAINED``). When the checkpoint holds every CLIP weight
            (trained and converted checkpoints do), ``MODEL.UNIOVSEG.CLIP.PRETRAINED`` is not
            loaded: nothing is downloaded.
        opts: ``KEY VALUE`` config overrides, e.g. ``["MODEL.UNIOVSEG.AUTOMATIC.
            POINTS_PER_SIDE", "32"]``.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; None: the config's ``MODEL.DEVICE``.

    Returns:
        ``(model, cfg)``: the model, and the (frozen) config as the user gave it.

    Raises:
        FileNotFoundError: ``config_file`` is neither a file nor a packaged config.
        ValueError: the weights file does not exist (checked before anything is built) or is
            refused; CLIP weights that can be neither found nor downloaded; bad ``opts``.
    """
    from detectron2.modeling import build_model

    import uniovseg.modeling  # noqa: F401  (registers the meta-architecture and backbone)
    from uniovseg.config import load_config
    from uniovseg.model_zoo import resolve_config_file

    if len(opts) % 2:
        raise ValueError(f"opts must be KEY VALUE pairs, got an odd number: {list(opts)}")
    cfg = load_config(resolve_config_file(config_file), opts)  # plain YAML only: no Python tags
    if device is not None:
        cfg.MODEL.DEVICE = device
    if str(cfg.MODEL.DEVICE).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"device {cfg.MODEL.DEVICE!r} was requested but CUDA is not available here; "
            "use device='cpu'"
        )
    if weights:
        cfg.MODEL.WEIGHTS = weights
    cfg.freeze()
    try:
        # Before anything is built: a missing checkpoint is reported at once, and CLIP weights
        # that the checkpoint replaces are neither downloaded nor read. Only the model is built
        # with that config; the returned config stays the user's.
        build_cfg = cfg_without_clip_download(cfg)
    except FileNotFoundError as e:
        raise ValueError(f"cannot load weights: {e}") from None
    model = build_model(build_cfg)
    if cfg.MODEL.WEIGHTS:
        try:
            # Refuses pickles; reads tensors only (torch.load(weights_only=True)).
            UniOVSegCheckpointer(model).load(cfg.MODEL.WEIGHTS)
        except FileNotFoundError as e:
            raise ValueError(f"cannot load weights {cfg.MODEL.WEIGHTS!r}: {e}") from e
    return model.eval(), cfg
