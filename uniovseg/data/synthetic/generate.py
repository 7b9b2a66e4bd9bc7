"""Writes a whole synthetic world to disk: four disjoint image sets in the project's real formats.

Layout under ``root`` (ids of different sets never collide: set ``k`` uses ``k * 10^6 + i``)::

    world.yaml                       the world definition used
    generation.json                  seed, image size and counts
    sa1b/sa_<id>.jpg, sa_<id>.json   image-mask pairs, SA-1B per-image JSON, no labels
    sa1b/uniovseg_sa1b_index.txt     the SA-1B loader's file index
    captions/captions.jsonl          image-text pairs (caption manifest), images in captions/images;
                                     with ``entities=`` also the rows' ground-truth ``entities``
    eval/images/val_<id>.jpg         evaluation images
    eval/semantic/val_<id>.png       uint8 class index, 255 = ignore
    eval/panoptic/val_<id>.png       COCO panoptic PNG (rgb-encoded segment ids)
    eval/panoptic.json               COCO panoptic JSON (images, annotations, categories)
    eval/instances.json              COCO instances JSON (RLE masks of every segment): prompts
    eval/categories.json             the categories alone (read lazily by dataset metadata)
    eval/class_names.txt             one class name per line, contiguous index order
    pretrain/captions.jsonl          CLIP pretraining pairs (manifest), images in pretrain/images

Every image is a pure function of ``(seed, set, index)`` through its own numpy ``Generator``,
and files are written with fixed encoder settings, so the same seed gives the same bytes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing as mp
import os
import shutil
import time
from dataclasses import dataclass

import numpy as np
import yaml
from PIL import Image
from tqdm import tqdm

from .captions import caption_scene
from .records import coco_categories, eval_record, sa1b_annotations
from .scene import RenderSpec, Scene, sample_scene
from .world import SPLITS, World

__all__ = ["GenerationSummary", "SplitCounts", "generate_synthetic_world", "split_rng"]

logger = logging.getLogger(__name__)

_SPLIT_CODE = {name: k + 1 for k, name in enumerate(SPLITS)}
_MAX_PER_SPLIT = 1_000_000
_OUTPUTS = ("sa1b", "captions", "eval", "pretrain", "world.yaml", "generation.json")
# Which text's ground-truth entities the caption manifests carry ("": none).
ENTITY_TEXTS = ("", "caption", "refined")


@dataclass(frozen=True)
class SplitCounts:
    """Number of images of each set."""

    sa1b: int = 1000
    captions: int = 1000
    eval: int = 200
    pretrain: int = 4000


@dataclass
class GenerationSummary:
    """What :func:`generate_synthetic_world` wrote: images per set, SA-1B masks, eval segments,
    and the wall-clock seconds it took."""

    images: dict[str, int]
    sa1b_masks: int
    eval_segments: int
    seconds: float


def split_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random generator of image ``index`` of ``split``: independent streams per image."""
    return np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_CODE[split], index]))


def image_id(split: str, index: int) -> int:
    """Dataset-wide unique image id of image ``index`` of ``split``."""
    return _SPLIT_CODE[split] * _MAX_PER_SPLIT + index + 1


def _save_jpeg(path: str, image: np.ndarray, quality: int) -> None:
    # Fixed quality and chroma subsampling, no optimisation pass: byte-identical across runs.
    Image.fromarray(image).save(path, format="JPEG", quality=quality, subsampling=2)


def _save_png(path: str, array: np.ndarray) -> None:
    Image.fromarray(array).save(path, format="PNG", compress_level=6)


def _write_json(path: str, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, separators=(",", ":"))


_PRETRAIN_KINDS = ("object_crop", "scene", "stuff")


class _Writer:
    """Generates and writes the images of every set; all per-split rules are parsed (and
    validated) once, before the first image."""

    def __init__(
        self,
        root: str,
        world: World,
        seed: int,
        image_size: tuple[int, int],
        entities: str = "",
    ):
        self.root, self.world, self.seed, self.hw = root, world, seed, image_size
        self.entities = entities
        render = world.section("render")
        self.quality = int(render.get("jpeg_quality", 92))
        if not 1 <= self.quality <= 100:
            raise ValueError(f"render.jpeg_quality must be in 1-100, got {self.quality}.")
        self.render = RenderSpec.from_section(render)
        self.scene_specs = {s: world.scene_spec(s) for s in SPLITS}
        self.caption_specs = {s: world.caption_spec(s) for s in SPLITS}
        _check_entities(entities, self.caption_specs["captions"].write_refined)
        sa1b = world.section("sa1b", "sa1b")
        self.sa1b_args = {
            "min_area": float(sa1b.get("min_area", 0.0004)),
            "predicted_iou": tuple(sa1b.get("predicted_iou", [0.86, 0.99])),
            "stability_score": tuple(sa1b.get("stability_score", [0.9, 0.99])),
        }
        self.eval_min_area = float(world.section("eval", "eval").get("min_area", 0.0015))
        pretrain = world.section("pretrain", "pretrain")
        mix = pretrain.get("mix", {"object_crop": 0.7, "scene": 0.15, "stuff": 0.15})
        if any(k not in _PRETRAIN_KINDS for k in mix) or sum(mix.values()) <= 0:
            raise ValueError(f"pretrain.mix weighs some of {_PRETRAIN_KINDS} (sum > 0), got {mix}.")
        self.pretrain_kinds = sorted(mix)
        weights = np.array([float(mix[k]) for k in self.pretrain_kinds])
        self.pretrain_weights = weights / weights.sum()
        self.crop_scale = tuple(pretrain.get("crop_scale", [1.15, 1.8]))
        self.crop_size = int(pretrain.get("crop_size", 64))

    def scene(self, rng: np.random.Generator, split: str, **overrides) -> Scene:
        spec = self.scene_specs[split]
        if overrides:
            spec = dataclasses.replace(spec, **overrides)
        return sample_scene(rng, self.world, spec, self.render, self.hw)

    def _manifest_row(self, rng, split: str, scene: Scene, rel_path: str) -> dict:
        spec = self.caption_specs[split]
        pair = caption_scene(rng, self.world, spec, scene)
        row = {"image": rel_path, "caption": pair.caption}
        if spec.write_refined:
            row["refined_caption"] = pair.refined
        if self.entities and split == "captions":
            entities = pair.refined_entities if self.entities == "refined" else pair.entities
            row["entities"] = list(entities)
        return row

    def sa1b(self, index: int) -> int:
        rng = split_rng(self.seed, "sa1b", index)
        scene = self.scene(rng, "sa1b")
        iid = image_id("sa1b", index)
        anns = sa1b_annotations(scene, rng, image_id=iid, **self.sa1b_args)
        name = f"sa_{iid}"
        _save_jpeg(os.path.join(self.root, "sa1b", name + ".jpg"), scene.image, self.quality)
        h, w = self.hw
        info = {"image_id": iid, "width": w, "height": h, "file_name": name + ".jpg"}
        record = {"image": info, "annotations": anns}
        _write_json(os.path.join(self.root, "sa1b", name + ".json"), record)
        return len(anns)

    def captions(self, index: int) -> dict:
        rng = split_rng(self.seed, "captions", index)
        scene = self.scene(rng, "captions")
        rel = f"images/cap_{image_id('captions', index)}.jpg"
        _save_jpeg(os.path.join(self.root, "captions", rel), scene.image, self.quality)
        return self._manifest_row(rng, "captions", scene, rel)

    def eval(self, index: int) -> tuple[dict, dict, list[dict]]:
        rng = split_rng(self.seed, "eval", index)
        scene = self.scene(rng, "eval")
        iid = image_id("eval", index)
        rec = eval_record(scene, self.world, image_id=iid, min_area=self.eval_min_area)
        name = f"val_{iid}"
        d = os.path.join(self.root, "eval")
        _save_jpeg(os.path.join(d, "images", name + ".jpg"), scene.image, self.quality)
        _save_png(os.path.join(d, "semantic", name + ".png"), rec.sem_seg)
        _save_png(os.path.join(d, "panoptic", name + ".png"), rec.panoptic_rgb)
        h, w = self.hw
        image = {"id": iid, "file_name": name + ".jpg", "width": w, "height": h}
        ann = {"image_id": iid, "file_name": name + ".png", "segments_info": rec.segments_info}
        return image, ann, rec.instances

    def pretrain(self, index: int) -> dict:
        rng = split_rng(self.seed, "pretrain", index)
        kind = self.pretrain_kinds[
            int(rng.choice(len(self.pretrain_kinds), p=self.pretrain_weights))
        ]
        if kind == "stuff":
            scene = self.scene(rng, "pretrain", num_things=(0, 0))
        else:
            scene = self.scene(rng, "pretrain")
        visible = [t for t in scene.things if t.mask.any()]
        if kind == "object_crop" and visible:
            target = visible[int(rng.integers(len(visible)))]
            scene = scene.crop(*_crop_window(rng, target.mask, self.crop_scale))
        size = self.crop_size
        image = Image.fromarray(scene.image).resize((size, size), Image.BICUBIC)
        rel = f"images/pre_{image_id('pretrain', index)}.jpg"
        _save_jpeg(os.path.join(self.root, "pretrain", rel), np.asarray(image), self.quality)
        return self._manifest_row(rng, "pretrain", scene, rel)


def _crop_window(rng, mask: np.ndarray, scale) -> tuple[int, int, int, int]:
    """A square window (x0, y0, x1, y1) around a mask, ``scale`` times its longer box side,
    jittered, shifted to lie inside the image."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    bw, bh = xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()
    side = int(min(max(bw, bh) * rng.uniform(*scale), h, w))
    side = max(side, min(8, h, w))
    cx = (xs.min() + xs.max() + 1) / 2 + rng.uniform(-0.1, 0.1) * side
    cy = (ys.min() + ys.max() + 1) / 2 + rng.uniform(-0.1, 0.1) * side
    x0 = int(np.clip(round(cx - side / 2), 0, w - side))
    y0 = int(np.clip(round(cy - side / 2), 0, h - side))
    return x0, y0, x0 + side, y0 + side


def _check_entities(entities: str, write_refined: bool) -> None:
    if entities not in ENTITY_TEXTS:
        raise ValueError(f"entities must be one of {list(ENTITY_TEXTS)}, got {entities!r}.")
    if entities == "refined" and not write_refined:
        raise ValueError(
            "entities='refined' needs refined captions: set captions.write_refined true in the "
            "world definition, or use entities='caption'."
        )


_worker_writer: _Writer | None = None


def _init_worker(writer: _Writer) -> None:
    global _worker_writer
    _worker_writer = writer


def _work(task: tuple[str, int]):
    split, index = task
    return getattr(_worker_writer, split)(index)


def _run_split(writer: _Writer, pool, split: str, count: int, bar):
    """Results of every image of a split, in index order (the files are written as a side
    effect, by this process or by the pool's workers)."""
    tasks = [(split, i) for i in range(count)]
    results = (
        pool.imap(_work, tasks, chunksize=8)
        if pool
        else (getattr(writer, split)(i) for _, i in tasks)
    )
    for result in results:
        bar.update(1)
        yield result


def _index_sa1b(sa1b_root: str) -> None:
    """Writes the SA-1B loader's file index, so ``<prefix>_sa1b_train`` works right away."""
    try:
        from uniovseg.data.datasets.sa1b import build_sa1b_index
    except ImportError as e:  # the SA-1B loader is optional for the generator itself
        logger.warning("SA-1B index not written (%s); build it with datasets/prepare_sa1b.py", e)
        return
    build_sa1b_index(sa1b_root)


def _write_manifest(path: str, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def generate_synthetic_world(
    root: str,
    *,
    world: World,
    seed: int = 0,
    counts: SplitCounts = SplitCounts(),
    image_size: int | tuple[int, int] = 256,
    overwrite: bool = False,
    progress: bool = True,
    workers: int = 1,
    entities: str = "",
) -> GenerationSummary:
    """Generates and writes every set of a synthetic world.

    Args:
        root: Output folder (created if needed).
        world: The world definition (see :func:`load_world`).
        seed: Master seed; same seed, world and sizes give byte-identical files.
        counts: Images per set.
        image_size: Square side, or (H, W), of scene images in pixels.
        overwrite: Replace a world already written in ``root`` (only its own files).
        progress: Show a tqdm progress bar.
        workers: Processes rendering in parallel (the output does not depend on it).
        entities: Also write each caption row's ground-truth ``entities`` (what a perfect parser
            extracts; see :mod:`.captions`): ``"refined"`` those of ``refined_caption`` (the
            text stage 2 reads by default), ``"caption"`` those of the noisy caption, ``""``
            none (stage 2 then parses the captions). Captions and images do not depend on it.

    Returns:
        A :class:`GenerationSummary`.

    Raises:
        ValueError: On bad counts or sizes, or if ``root`` holds a world and not ``overwrite``.
    """
    hw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if min(hw) < 16:
        raise ValueError(f"image_size must be at least 16 pixels, got {image_size}.")
    for split in SPLITS:
        n = getattr(counts, split)
        if not 0 <= n < _MAX_PER_SPLIT:
            raise ValueError(f"{split}: count must be in [0, {_MAX_PER_SPLIT}), got {n}.")
    _check_entities(entities, world.caption_spec("captions").write_refined)
    existing = [p for p in _OUTPUTS if os.path.exists(os.path.join(root, p))]
    if existing and not overwrite:
        raise ValueError(f"{root} already holds {existing}; pass overwrite=True (--overwrite).")
    for p in existing:
        full = os.path.join(root, p)
        shutil.rmtree(full) if os.path.isdir(full) else os.remove(full)
    for sub in (
        "sa1b",
        "captions/images",
        "eval/images",
        "eval/semantic",
        "eval/panoptic",
        "pretrain/images",
    ):
        os.makedirs(os.path.join(root, sub), exist_ok=True)

    start = time.perf_counter()
    writer = _Writer(root, world, seed, hw, entities)
    total = sum(getattr(counts, s) for s in SPLITS)
    bar = tqdm(total=total, disable=not progress, desc="synthetic world", unit="img")
    pool = mp.Pool(workers, initializer=_init_worker, initargs=(writer,)) if workers > 1 else None
    try:
        num_masks = sum(_run_split(writer, pool, "sa1b", counts.sa1b, bar))
        if counts.sa1b:
            _index_sa1b(os.path.join(root, "sa1b"))
        rows = list(_run_split(writer, pool, "captions", counts.captions, bar))
        _write_manifest(os.path.join(root, "captions", "captions.jsonl"), rows)
        images, annotations, instances = [], [], []
        for image, ann, inst in _run_split(writer, pool, "eval", counts.eval, bar):
            images.append(image)
            annotations.append(ann)
            instances.extend(inst)
        rows = list(_run_split(writer, pool, "pretrain", counts.pretrain, bar))
        _write_manifest(os.path.join(root, "pretrain", "captions.jsonl"), rows)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
        bar.close()
    categories = coco_categories(world)
    eval_dir = os.path.join(root, "eval")
    _write_json(
        os.path.join(eval_dir, "panoptic.json"),
        {"images": images, "annotations": annotations, "categories": categories},
    )
    _write_json(
        os.path.join(eval_dir, "instances.json"),
        {"images": images, "annotations": instances, "categories": categories},
    )
    _write_json(os.path.join(eval_dir, "categories.json"), categories)
    with open(os.path.join(eval_dir, "class_names.txt"), "w", encoding="utf-8") as f:
        f.write("".join(name + "\n" for name in world.class_names))

    with open(os.path.join(root, "world.yaml"), "w", encoding="utf-8") as f:
        yaml.safe_dump(world.raw, f, sort_keys=False)
    meta = {
        "format_version": 1,
        "world": world.name,
        "seed": seed,
        "image_size": list(hw),
        "counts": dataclasses.asdict(counts),
    }
    _write_json(os.path.join(root, "generation.json"), meta)
    summary = GenerationSummary(
        images={s: getattr(counts, s) for s in SPLITS},
        sa1b_masks=num_masks,
        eval_segments=len(instances),
        seconds=time.perf_counter() - start,
    )
    logger.info("Synthetic world written to %s: %s", root, summary)
    return summary
