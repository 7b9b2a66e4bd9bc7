"""Builds a model from a config and exercises it once: the main job of the environment check.

Used by ``python -m uniovseg.check_env --build-model``; no data, no weights, no network needed
(the configs it is meant for use random weights).
"""

from __future__ import annotations

import time

import torch

from uniovseg.modeling.point_grid import build_point_grid


def _synthetic_training_example(size: int) -> dict:
    """One SA1BDatasetMapper-shaped example: two nested squares and a band, a 4x4 point grid."""
    masks = torch.zeros(3, size, size, dtype=torch.bool)
    quarter, half = size // 4, size // 2
    masks[0, quarter : quarter + half, quarter : quarter + half] = True
    masks[1, quarter : quarter + quarter, quarter : quarter + quarter] = True
    masks[2, size - quarter :, :] = True
    boxes = torch.tensor(
        [
            [quarter, quarter, quarter + half, quarter + half],
            [quarter, quarter, half, half],
            [0, size - quarter, size, size],
        ],
        dtype=torch.float32,
    )
    grid = build_point_grid(4, (size, size))
    return {
        "image": torch.randint(0, 256, (3, size, size), dtype=torch.uint8),
        "gt_masks": masks,
        "point_coords": grid,
        "box_prompts": boxes,
    }


def build_and_run(*, config_file: str, opts: list[str], image_size: int) -> dict[str, str]:
    """Builds the model of ``config_file`` (+ ``opts``), runs one training step's forward and
    backward on a synthetic example and automatic mask generation on a random image.

    Returns:
        Human-readable (name -> value) facts about the model and the run.
    """
    from detectron2.modeling import build_model

    import uniovseg.modeling  # noqa: F401  (registers the meta-architecture and backbone)
    from uniovseg.config import load_config

    cfg = load_config(config_file, opts)
    start = time.perf_counter()
    model = build_model(cfg)
    build_seconds = time.perf_counter() - start
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    shapes = model.backbone.output_shape()

    model.train()
    example = _synthetic_training_example(cfg.INPUT.UNIOVSEG.CROP_SIZE)
    start = time.perf_counter()
    losses = model([example])
    sum(losses.values()).backward()
    train_seconds = time.perf_counter() - start
    without_grad = [
        name for name, p in model.named_parameters() if p.requires_grad and p.grad is None
    ]

    model.eval()
    image = torch.randint(0, 256, (3, image_size, image_size * 3 // 2), dtype=torch.uint8)
    start = time.perf_counter()
    with torch.no_grad():
        (output,) = model([{"image": image}])
    inference_seconds = time.perf_counter() - start
    if without_grad:
        raise RuntimeError(f"trainable parameters without gradient: {without_grad[:5]}")
    total_loss = float(sum(loss.detach() for loss in losses.values()))
    return {
        "config": config_file,
        "device": str(model.device),
        "backbone": f"{cfg.MODEL.UNIOVSEG.CLIP.MODEL_NAME} (weights: "
        f"{cfg.MODEL.UNIOVSEG.CLIP.PRETRAINED or 'random'})",
        "backbone outputs": ", ".join(
            f"{name}: {spec.channels} ch / stride {spec.stride}" for name, spec in shapes.items()
        ),
        "parameters": f"{trainable / 1e6:.2f} M trainable, {frozen / 1e6:.2f} M frozen",
        "build": f"{build_seconds:.2f} s",
        "training step": f"{len(losses)} loss terms, total {total_loss:.3f}, "
        f"forward+backward {train_seconds:.2f} s, every trainable parameter got a gradient",
        "automatic masks": f"{len(output['automatic_masks'])} masks kept on a random "
        f"{image.shape[1]}x{image.shape[2]} image in {inference_seconds:.2f} s",
    }
