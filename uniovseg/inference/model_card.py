"""The model card (``README.md``) of a model bundle: what the model is, its key settings, how to
load it, where its weights and training data come from.

The front matter is the Hugging Face hub's (``library_name``, ``tags``, ``pipeline_tag``), so a
bundle pushed to the hub as it is shows a proper card there.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

__all__ = ["model_card"]

# The paper the method comes from.
_PAPER = (
    "Z. Wang, X. Xia, Z. Chen, X. He, Y. Guo, M. Gong, T. Liu. *Open-Vocabulary Segmentation "
    "with Unpaired Mask-Text Supervision* (Uni-OVSeg)."
)


def model_card(
    cfg,
    state_dict: Mapping[str, torch.Tensor],
    *,
    clip_model_name: str,
    clip_pretrained: str,
    training_data: str | None = None,
    source: str | None = None,
    files: Mapping[str, str],
) -> str:
    """The Markdown text of a bundle's ``README.md``.

    Args:
        cfg: The config the model was built with (before the bundle empties ``MODEL.WEIGHTS``
            and ``MODEL.UNIOVSEG.CLIP.PRETRAINED``).
        state_dict: The weights the bundle holds (for counts and dtypes only).
        clip_model_name: The open_clip model config name of the CLIP.
        clip_pretrained: Where the CLIP weights were first loaded from (an open_clip tag, a file;
            "" when unknown).
        training_data: What the model was trained on, in words; None: the datasets of the config.
        source: Where the weights come from (e.g. "converted from the authors' stage1.pth");
            None: not stated.
        files: Bundle file name -> what it holds, listed in the card.

    Returns:
        The card, ending with a newline.
    """
    ov = cfg.MODEL.UNIOVSEG
    stage2 = bool(ov.ALIGNMENT.ENABLED)
    num_values = sum(int(t.numel()) for t in state_dict.values())
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in state_dict.values()})
    if stage2:
        what = (
            "stage 2: the promptable mask generator plus the multi-scale adapter trained by "
            "mask-text alignment, so masks get open-vocabulary labels (prompted, automatic, "
            "semantic and panoptic outputs)"
        )
    else:
        what = (
            "stage 1: a class-agnostic, promptable mask generator (point and box prompts, "
            "automatic point-grid masks); labels come from raw CLIP mask pooling (the paper's "
            "baseline)"
        )
    clip_origin = f", initialised from `{clip_pretrained}`" if clip_pretrained else ""
    settings = [
        ("CLIP (frozen)", f"open_clip `{clip_model_name}`{clip_origin}"),
        ("stage", "2 (mask-text alignment)" if stage2 else "1 (promptable masks)"),
        ("test input size", f"{ov.TEST.INPUT_SIZE} px (longest side, padded square)"),
        (
            "pixel decoder",
            f"{_layers(ov.PIXEL_DECODER.NUM_ENCODER_LAYERS)}, {ov.PIXEL_DECODER.CONV_DIM} channels",
        ),
        (
            "mask decoder",
            f"{_layers(ov.MASK_DECODER.NUM_LAYERS)}, {ov.MASK_DECODER.HIDDEN_DIM} channels",
        ),
        (
            "automatic masks",
            f"{ov.AUTOMATIC.POINTS_PER_SIDE}x{ov.AUTOMATIC.POINTS_PER_SIDE} points, predicted "
            f"IoU >= {ov.AUTOMATIC.PRED_IOU_THRESH}, "
            f"stability >= {ov.AUTOMATIC.STABILITY_SCORE_THRESH}",
        ),
    ]
    if stage2:
        settings.append(
            (
                "adapter",
                f"LoRA rank {ov.ALIGNMENT.ADAPTER.RANK}, ensemble sizes "
                f"{list(ov.ALIGNMENT.ENSEMBLE_SIZES)}",
            )
        )
    settings.append(
        ("weights", f"{len(state_dict)} tensors, {num_values:,} values ({', '.join(dtypes)})")
    )
    if training_data is None:
        datasets = [*cfg.DATASETS.TRAIN, *(ov.ALIGNMENT.MASK_TRAIN_DATASETS if stage2 else [])]
        training_data = (
            f"The datasets named in its config: {', '.join(f'`{d}`' for d in datasets)}."
            if datasets
            else "Not stated."
        )
    lines = [
        "---",
        "library_name: uniovseg",
        "pipeline_tag: image-segmentation",
        "tags:",
        "- image-segmentation",
        "- open-vocabulary-segmentation",
        "- uniovseg",
        "---",
        "",
        f"# Uni-OVSeg model, {'stage 2' if stage2 else 'stage 1'}",
        "",
        f"A model of the uniovseg detectron2 extension, an implementation of {_PAPER} "
        f"This bundle holds {what}.",
        "",
        "## Files",
        "",
        *(f"- `{name}`: {text}" for name, text in files.items()),
        "",
        "## Key settings",
        "",
        "| setting | value |",
        "|---|---|",
        *(f"| {key} | {value} |" for key, value in settings),
        "",
        "`config.yaml` holds every other setting.",
        "",
        "## Training data",
        "",
        training_data,
        "",
        "## How to load",
        "",
        "```python",
        "from uniovseg.inference import UniOVSegPredictor",
        "",
        'predictor = UniOVSegPredictor.from_pretrained("path/to/this/folder")  # or "org/name"',
        "predictor.set_image(image)  # uint8 [H, W, 3] RGB",
        "masks, ious, _ = predictor.predict(point_coords=points)",
        "```",
        "",
        "Loading reads only YAML (`yaml.safe_load`), JSON and safetensors: nothing is unpickled. "
        "The command-line tools take the two files: `--config-file config.yaml` with "
        "`MODEL.WEIGHTS model.safetensors` (a CLIP config that neither open_clip nor uniovseg "
        "ships is known to `from_pretrained` only).",
        "",
        "## Licence",
        "",
        "The uniovseg code is Apache-2.0. These weights derive from the CLIP weights and the "
        "training data named above; their terms apply to the weights: check them before you "
        "redistribute or deploy the model.",
    ]
    if source:
        lines += ["", "## Source", "", source]
    return "\n".join(lines) + "\n"


def _layers(count: int) -> str:
    return f"{count} layer{'' if count == 1 else 's'}"
