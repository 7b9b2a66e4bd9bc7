"""DistributedDataParallel settings of a training run.

``find_unused_parameters=True`` makes DDP walk the autograd graph after every forward pass to
find the parameters that got no gradient: an extra traversal per iteration that the default
configs do not need (every trainable parameter takes part in every loss; the stage-1 criterion
even connects unmatched outputs with a zero gradient for this). It is needed only where a
trainable head is left out of some batch by construction, which
:func:`needs_unused_parameter_search` reads from the config:

- the mask branch is trained with only one prompt type (``MODEL.UNIOVSEG.TRAIN_PROMPT_TYPES``
  without ``"box"``: the box embedding and the single-mask token's heads get no gradient);
- images without masks are kept (``INPUT.UNIOVSEG.SKIP_IMAGES_WITHOUT_MASKS`` False): a rank
  whose batch has no mask has no box prompt either;
- stage 2 trains the mask branch (``ALIGNMENT.TRAIN_MASK_BRANCH``) on caption batches alone
  (no ``MASK_TRAIN_DATASETS``): caption batches have no box prompt.

``MODEL.UNIOVSEG.DDP_FIND_UNUSED_PARAMETERS`` True turns it on for any other config that needs
it (DDP then stops with "Expected to have finished reduction in the prior iteration").

Gradients are views into DDP's communication buckets (``gradient_as_bucket_view=True``): no
copy of every gradient into its bucket after backward, one gradient-sized buffer less, and no
"grad strides do not match bucket view strides" warning, which DDP prints when a gradient's
strides differ from its bucket view's (autograd may give a gradient any stride on a size-1
dimension, e.g. of a 1x1 convolution's weight; DDP compares every stride). The optimizer,
gradient clipping and AMP's unscaling work on these views in place, as on ordinary gradients.
On a 2-core CPU neither setting changed the step time measurably (README, "Training at scale";
``tools/benchmark_ddp.py``).
"""

from __future__ import annotations

import logging

import torch

__all__ = ["ddp_options", "needs_unused_parameter_search"]

logger = logging.getLogger(__name__)


def needs_unused_parameter_search(cfg) -> bool:
    """Whether DDP must look for unused parameters with this config (see the module
    docstring)."""
    u = cfg.MODEL.UNIOVSEG
    if u.DDP_FIND_UNUSED_PARAMETERS:
        return True
    alignment = u.ALIGNMENT
    trains_mask_branch = not alignment.ENABLED or alignment.TRAIN_MASK_BRANCH
    if not trains_mask_branch:
        return False  # stage 2, adapter only: it takes part in every alignment loss
    if set(u.TRAIN_PROMPT_TYPES) != {"point", "box"}:
        return True
    if not cfg.INPUT.UNIOVSEG.SKIP_IMAGES_WITHOUT_MASKS:
        return True
    return bool(alignment.ENABLED and not alignment.MASK_TRAIN_DATASETS)


def ddp_options(cfg, model: torch.nn.Module) -> dict:
    """Keyword arguments of ``DistributedDataParallel`` for ``model`` built from ``cfg``.

    Returns:
        ``broadcast_buffers=False`` (as detectron2: no buffer changes during training),
        ``gradient_as_bucket_view=True``, ``find_unused_parameters`` from
        :func:`needs_unused_parameter_search`, and ``device_ids``: None for a CPU (gloo) model,
        else the model's current CUDA device (right also when a launcher shows each process a
        single GPU).
    """
    find_unused = needs_unused_parameter_search(cfg)
    logger.info("DistributedDataParallel: find_unused_parameters=%s", find_unused)
    device = next(model.parameters()).device
    device_ids = None if device.type == "cpu" else [device.index or torch.cuda.current_device()]
    return {
        "broadcast_buffers": False,
        "gradient_as_bucket_view": True,
        "find_unused_parameters": find_unused,
        "device_ids": device_ids,
    }
