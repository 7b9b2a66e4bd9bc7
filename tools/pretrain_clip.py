#!/usr/bin/env python
"""Pretrains a tiny open_clip model contrastively on the synthetic world's pretraining captions.

No CLIP weights can be downloaded here, so the synthetic world ships its own stand-in: a small
ConvNeXt image tower and a small text transformer (``uniovseg_synthetic_clip``), trained with the
CLIP loss on ``<root>/pretrain/captions.jsonl``. Half of each batch is embedded as tiles of 2x2
mosaics, by pooling the mosaic's dense map over each tile (``--mosaic-grid``,
``--mosaic-fraction``): segmentation reads CLIP through mask pooling on whole scenes, which a
CLIP trained on single small images alone does poorly. The output is a plain open_clip state
dict that loads exactly like real weights::

    python tools/pretrain_clip.py --root datasets/synthetic --output output/synthetic_clip.pt
    # then: MODEL.UNIOVSEG.CLIP.MODEL_NAME uniovseg_synthetic_clip
    #       MODEL.UNIOVSEG.CLIP.PRETRAINED output/synthetic_clip.pt

By default training runs for a wall-clock budget (``--time-budget``) with a cosine learning rate
over that budget; ``--max-steps`` gives a fixed, reproducible number of steps instead.
Pixels are normalised with CLIP's mean/std (the backbone's ``MODEL.PIXEL_MEAN/STD``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

logger = logging.getLogger("uniovseg.tools.pretrain_clip")


def load_pairs(manifest: str, image_size: int, field: str) -> tuple[torch.Tensor, list[str]]:
    """All images of a caption manifest as one uint8 tensor [N, 3, S, S] and their captions."""
    from uniovseg.data.datasets.captions import load_caption_manifest

    dicts = load_caption_manifest(manifest)
    if not dicts:
        raise ValueError(f"{manifest} holds no usable image-caption pair.")
    images = np.empty((len(dicts), image_size, image_size, 3), dtype=np.uint8)
    texts = []
    for i, d in enumerate(dicts):
        with Image.open(d["file_name"]) as im:
            im = im.convert("RGB")
            if im.size != (image_size, image_size):
                im = im.resize((image_size, image_size), Image.BICUBIC)
            images[i] = np.asarray(im)
        texts.append(d.get(field) or d["caption"])
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), texts


def random_resized_crop(images: torch.Tensor, scale: tuple[float, float], gen) -> torch.Tensor:
    """Per-image random square crop of ``scale`` of the side, resized back: [B, 3, S, S] float."""
    b, _, s, _ = images.shape
    out = torch.empty_like(images)
    sides = (torch.empty(b).uniform_(*scale, generator=gen) * s).round().clamp(8, s).long()
    for i in range(b):
        side = int(sides[i])
        y0 = int(torch.randint(0, s - side + 1, (1,), generator=gen))
        x0 = int(torch.randint(0, s - side + 1, (1,), generator=gen))
        crop = images[i : i + 1, :, y0 : y0 + side, x0 : x0 + side]
        out[i : i + 1] = F.interpolate(crop, size=(s, s), mode="bilinear", align_corners=False)
    return out


def mosaic_embeddings(model: torch.nn.Module, images: torch.Tensor, grid: int) -> torch.Tensor:
    """Embeds each tile of ``grid`` x ``grid`` mosaics by pooling the dense map over that tile.

    The images [B, 3, S, S] (B a multiple of grid**2) are tiled row-major into B / grid**2
    mosaics of side grid * S. Each tile's embedding is the average of the mosaic's dense feature
    map over the tile's cells, through the trunk head and the projection: exactly how
    segmentation reads a region (mask pooling, paper Eq. 5). A contrastive loss on these
    embeddings teaches the dense features to describe their own region rather than the whole
    picture, as a web-scale CLIP's convolutional features do well enough for FC-CLIP-style
    mask pooling; a tiny CLIP trained on single images alone does not (its mask-pooled object
    accuracy stays near chance on whole scenes).

    Returns:
        [B, D] tile embeddings, in the order of ``images``.
    """
    b, c, s, _ = images.shape
    n = b // (grid * grid)
    tiles = images[: n * grid * grid].reshape(n, grid, grid, c, s, s)
    mosaics = tiles.permute(0, 3, 1, 4, 2, 5).reshape(n, c, grid * s, grid * s)
    visual = model.visual
    dense = visual.trunk.forward_features(mosaics)  # [n, C', grid * h, grid * h]
    channels, side = dense.shape[1], dense.shape[-1] // grid
    cells = dense.reshape(n, channels, grid, side, grid, side).mean(dim=(3, 5))
    pooled = cells.permute(0, 2, 3, 1).reshape(n * grid * grid, channels, 1, 1)
    return visual.head(visual.trunk.forward_head(pooled).flatten(1))


def contrastive_loss(
    image_embeds: torch.Tensor, text_embeds: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric CLIP loss (InfoNCE over the batch, image->text and text->image).

    Identical captions in a batch are harmless: they have identical embeddings, so their logits
    tie and the loss neither rewards nor punishes telling them apart.

    Args:
        image_embeds: [B, D] L2-normalised.
        text_embeds: [B, D] L2-normalised; row i is the caption of image i.
        scale: logit temperature (scalar tensor).
    """
    logits = scale * image_embeds @ text_embeds.t()
    targets = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices and convolution kernels only (not norms, biases, embeddings,
    positional embeddings or the temperature)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.ndim < 2 or "embedding" in name or "logit_scale" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0},
    ]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="synthetic world root (prepare_synthetic)")
    parser.add_argument("--manifest", default=None, help="default: <root>/pretrain/captions.jsonl")
    parser.add_argument("--output", required=True, help="where to save the state dict (.pt)")
    parser.add_argument("--model-name", default="uniovseg_synthetic_clip")
    parser.add_argument("--image-size", type=int, default=None, help="default: model config's")
    parser.add_argument(
        "--caption-field", default="caption", choices=["caption", "refined_caption"]
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=256,
        help="256 learned the most per image seen here (64: half as much; 512: no better)",
    )
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument(
        "--warmup-steps",
        type=int,
        default=30,
        help="linear warm-up steps (without one the text tower collapses to a single embedding "
        "within ~10 steps at this learning rate)",
    )
    parser.add_argument("--time-budget", type=float, default=240.0, help="seconds of training")
    parser.add_argument("--max-steps", type=int, default=None, help="fixed step count instead")
    parser.add_argument(
        "--layer-scale-init",
        type=float,
        default=1.0,
        help="re-initialise the ConvNeXt layer-scale gammas (timm's 1e-6 makes every block start "
        "as the identity, which a from-scratch run of a few hundred steps cannot afford)",
    )
    parser.add_argument(
        "--crop-scale",
        type=float,
        nargs=2,
        default=[1.0, 1.0],
        help="random square crop side range (fraction); 1 1 = off (short runs learn faster "
        "without it)",
    )
    parser.add_argument(
        "--mosaic-grid",
        type=int,
        default=2,
        help="tile this many images per side into one mosaic and embed each tile by pooling the "
        "mosaic's dense features (1 = off: whole images only)",
    )
    parser.add_argument(
        "--mosaic-fraction",
        type=float,
        default=0.5,
        help="fraction of each batch embedded as mosaic tiles (the rest as whole images)",
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=25)
    args = parser.parse_args(argv)
    from uniovseg.logs import setup_logging

    setup_logging()
    if args.max_steps is None and args.time_budget <= 0:
        raise ValueError("Give a positive --time-budget or --max-steps.")

    import open_clip

    from uniovseg.config import CLIP_PIXEL_MEAN, CLIP_PIXEL_STD
    from uniovseg.model_zoo import register_open_clip_configs

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    register_open_clip_configs()
    cfg = open_clip.get_model_config(args.model_name)
    if cfg is None:
        raise ValueError(f"Unknown open_clip model {args.model_name!r}.")
    image_size = args.image_size or int(cfg["vision_cfg"]["image_size"])
    manifest = args.manifest or os.path.join(args.root, "pretrain", "captions.jsonl")

    t0 = time.perf_counter()
    images, texts = load_pairs(manifest, image_size, args.caption_field)
    tokenizer = open_clip.get_tokenizer(args.model_name)
    tokens = tokenizer(texts)
    logger.info("%d pairs loaded in %.1f s", len(texts), time.perf_counter() - t0)

    model = open_clip.create_model(args.model_name, pretrained=None)
    model.train()
    if args.layer_scale_init > 0:
        with torch.no_grad():
            for name, p in model.visual.trunk.named_parameters():
                if name.endswith(".gamma"):
                    p.fill_(args.layer_scale_init)
    # CLIP's AdamW settings (beta2 0.98, eps 1e-6) for stability with small batches.
    optimizer = torch.optim.AdamW(
        param_groups(model, args.weight_decay), lr=args.lr, betas=(0.9, 0.98), eps=1e-6
    )
    mean = torch.tensor(CLIP_PIXEL_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_PIXEL_STD).view(1, 3, 1, 1)

    n = len(texts)
    batch = min(args.batch_size, n)
    order, cursor = torch.randperm(n, generator=gen), 0
    step, samples, losses = 0, 0, []
    start = time.perf_counter()
    while True:
        elapsed = time.perf_counter() - start
        progress = step / args.max_steps if args.max_steps else elapsed / args.time_budget
        if progress >= 1.0:
            break
        # Linear warm-up over steps, cosine decay over the whole run (steps or time budget).
        warmup = min(1.0, (step + 1) / max(args.warmup_steps, 1))
        lr = args.lr * warmup * 0.5 * (1 + math.cos(math.pi * progress))
        for group in optimizer.param_groups:
            group["lr"] = lr
        if cursor + batch > n:
            order, cursor = torch.randperm(n, generator=gen), 0
        idx = order[cursor : cursor + batch]
        cursor += batch
        x = images[idx].float()
        if min(args.crop_scale) < 1.0:
            x = random_resized_crop(x, tuple(args.crop_scale), gen)
        x = (x - mean) / std
        tiles_per_mosaic = args.mosaic_grid**2
        num_tiled = 0
        if args.mosaic_grid > 1:
            num_tiled = int(len(x) * args.mosaic_fraction) // tiles_per_mosaic * tiles_per_mosaic
        parts = []
        if num_tiled:
            parts.append(mosaic_embeddings(model, x[:num_tiled], args.mosaic_grid))
        if num_tiled < len(x):
            parts.append(model.encode_image(x[num_tiled:]))
        image_embeds = F.normalize(torch.cat(parts), dim=-1)
        text_embeds = F.normalize(model.encode_text(tokens[idx]), dim=-1)
        scale = model.logit_scale.exp().clamp(max=100)
        loss = contrastive_loss(image_embeds, text_embeds, scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        samples += len(idx)
        losses.append(loss.item())
        if step % args.log_every == 0:
            logger.info(
                "step %d  loss %.3f  lr %.2e  scale %.1f  %.0f img/s",
                step,
                np.mean(losses[-args.log_every :]),
                lr,
                scale.item(),
                samples / (time.perf_counter() - start),
            )
    train_seconds = time.perf_counter() - start

    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save(state, args.output)
    summary = {
        "model_name": args.model_name,
        "output": args.output,
        "pairs": n,
        "steps": step,
        "samples_seen": samples,
        "epochs": samples / n,
        "train_seconds": round(train_seconds, 1),
        "threads": args.threads,
        "final_loss": round(float(np.mean(losses[-20:])), 4) if losses else None,
    }
    with open(os.path.splitext(args.output)[0] + ".json", "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
