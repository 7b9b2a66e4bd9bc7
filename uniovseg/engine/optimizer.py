"""Optimizer construction: AdamW parameter groups and full-model gradient clipping.

The release trains with AdamW (lr 1e-4, weight decay 0.05), a 0.1 learning-rate multiplier on
trainable backbone parameters, no weight decay on normalisation layers and embeddings, and
gradient clipping at 1.0 over the whole model (Mask2Former's "full_model" clipping).
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

# Parameters of these modules never get weight decay (they rescale, they do not extract).
_NORM_MODULE_TYPES = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)


def _is_norm_module(module: nn.Module) -> bool:
    # Custom norms (e.g. a channel-wise LayerNorm for NCHW maps) are recognised by class name.
    return isinstance(module, _NORM_MODULE_TYPES) or "Norm" in type(module).__name__


def _is_embedding_parameter(module: nn.Module, local_name: str) -> bool:
    """Learned embeddings: nn.Embedding weights and bare parameters named like `*_emb(ed)`
    (prompt corner/type/mask embeddings, level embeddings)."""
    if isinstance(module, nn.Embedding):
        return True
    return local_name not in ("weight", "bias") and "emb" in local_name


def build_param_groups(
    model: nn.Module,
    *,
    base_lr: float,
    weight_decay: float,
    weight_decay_norm: float = 0.0,
    weight_decay_embed: float = 0.0,
    backbone_multiplier: float = 0.1,
) -> list[dict[str, Any]]:
    """One parameter group per trainable parameter, with its own lr and weight decay.

    Args:
        model: the model; parameters with ``requires_grad=False`` (the frozen CLIP) are left out.
        base_lr: learning rate of every group before multipliers.
        weight_decay: weight decay of ordinary weights.
        weight_decay_norm: weight decay of normalisation layers' parameters.
        weight_decay_embed: weight decay of learned embeddings.
        backbone_multiplier: lr multiplier for trainable parameters under ``backbone.``.

    Returns:
        A list of dicts with keys ``params`` (one tensor), ``lr``, ``weight_decay``, ``name``.
    """
    groups: list[dict[str, Any]] = []
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for local_name, parameter in module.named_parameters(recurse=False):
            if not parameter.requires_grad or id(parameter) in seen:
                continue
            seen.add(id(parameter))
            full_name = f"{module_name}.{local_name}" if module_name else local_name
            lr = base_lr
            if full_name.startswith("backbone."):
                lr *= backbone_multiplier
            decay = weight_decay
            if _is_norm_module(module):
                decay = weight_decay_norm
            elif _is_embedding_parameter(module, local_name):
                decay = weight_decay_embed
            groups.append(
                {"params": [parameter], "lr": lr, "weight_decay": decay, "name": full_name}
            )
    if not groups:
        raise ValueError(
            "the model has no trainable parameters: check MODEL.UNIOVSEG.*.FREEZE-style options"
        )
    return groups


def clip_grad_norm_(parameter_groups: list[dict[str, Any]], max_norm: float) -> torch.Tensor:
    """Clips the gradient norm over every parameter of every group together."""
    parameters = itertools.chain(*(group["params"] for group in parameter_groups))
    return torch.nn.utils.clip_grad_norm_(parameters, max_norm)


class FullModelClippedAdamW(torch.optim.AdamW):
    """AdamW that clips the global gradient norm of all its parameters before each step.

    detectron2's built-in clipping works per parameter; the release clips the whole model's
    gradient norm (Mask2Former's "full_model" mode), which this class does.
    """

    def __init__(self, params, *, clip_max_norm: float, **kwargs):
        super().__init__(params, **kwargs)
        self.clip_max_norm = clip_max_norm

    @torch.no_grad()
    def step(self, closure=None):
        if self.clip_max_norm > 0:
            clip_grad_norm_(self.param_groups, self.clip_max_norm)
        return super().step(closure)


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """AdamW from ``cfg.SOLVER`` (BASE_LR, WEIGHT_DECAY, WEIGHT_DECAY_NORM, WEIGHT_DECAY_EMBED,
    BACKBONE_MULTIPLIER, CLIP_GRADIENTS)."""
    if cfg.SOLVER.OPTIMIZER != "ADAMW":
        raise ValueError(f"SOLVER.OPTIMIZER={cfg.SOLVER.OPTIMIZER!r}: only 'ADAMW' is supported")
    groups = build_param_groups(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        weight_decay_embed=cfg.SOLVER.WEIGHT_DECAY_EMBED,
        backbone_multiplier=cfg.SOLVER.BACKBONE_MULTIPLIER,
    )
    clipping = cfg.SOLVER.CLIP_GRADIENTS
    if clipping.ENABLED and clipping.CLIP_TYPE != "full_model":
        raise ValueError(
            f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE={clipping.CLIP_TYPE!r}: only 'full_model' is "
            "supported"
        )
    max_norm = clipping.CLIP_VALUE if clipping.ENABLED else 0.0
    num_trainable = sum(group["params"][0].numel() for group in groups)
    logger.info(
        "Optimizing %d tensors (%.2f M values) with AdamW", len(groups), num_trainable / 1e6
    )
    return FullModelClippedAdamW(
        groups, lr=cfg.SOLVER.BASE_LR, betas=(0.9, 0.999), clip_max_norm=max_norm
    )
