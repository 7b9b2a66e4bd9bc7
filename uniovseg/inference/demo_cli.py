r"""Segment folders of images from the command line: automatic masks, semantic or panoptic
segmentation with your own class names, or masks for point/box prompts.

Examples (``uniovseg-demo`` is the installed command; ``python demo/demo.py`` is the same):
    uniovseg-demo --config-file stage2/uniovseg_convnext_large_stage2.yaml --input photos/ \
        --output out/ --task semantic --vocab "cat; dog, puppy; sky" \
        --opts MODEL.WEIGHTS model_final.pth
    uniovseg-demo --config-file CONFIG --input "shots/**/*.jpg" --recursive \
        --output out/ --task automatic --device cuda
    uniovseg-demo --config-file CONFIG --input a.jpg --output out/ --task prompted \
        --points "120,80;40,200" --boxes "10,20,200,180" --vocab-name ade20k_150
    uniovseg-demo --config-file CONFIG --input photos/ --output out/ --task concepts \
        --concepts "red car; dog, puppy"

CONFIG is a YAML path or the name of a packaged config (configs/ of the repository, e.g.
tiny/stage1_tiny.yaml), so it works from any folder. A checkpoint that holds the CLIP weights
(trained or converted ones do) makes the CLIP download of the config unnecessary: none is made.

Per image NAME the output folder gets:
    NAME_overlay.png   a picture to look at: the image with its masks filled and outlined and,
                       beside or under it, a legend (classes present by area; for prompts,
                       each prompt's number -> its mask's class, score and IoU; for
                       concepts, each phrase's instances or "none found"). Prompts are
                       numbered 1, 2... points first, then boxes (prompt_index + 1 in the
                       JSON). At the processed size (longest side at most --max-side);
    NAME_semantic.png  data, not a picture: the class index of each pixel (looks black in an
                       image viewer), uint8 (255 = unlabelled) or uint16 (65535) when there
                       are 255 classes or more (tasks semantic and panoptic);
    NAME_semantic_color.png  the same label map in the overlay's class colours;
    NAME_panoptic.png  COCO panoptic RGB ids (task panoptic; segments in the JSON);
    NAME.json          size, conversions, class names and the records (COCO RLE
                       ``segmentation``, ``bbox`` XYWH, ``area``, ``predicted_iou``,
                       ``stability_score``, ``point_coords`` or ``box``, and ``category``/
                       ``score`` when a vocabulary is given; task concepts: ``concepts``,
                       each phrase with ``found`` and its number of instances, and one
                       record per instance with ``concept``, ``score``, ``predicted_iou``);
and the folder gets summary.json (processed and skipped images with reasons, timings).

NAME is the image's path relative to the input directory it was found in (directories: so
--recursive keeps x/a.jpg and y/a.jpg apart as x/a and y/a), or its file name (files, globs),
without extension. A NAME already taken gets _2, _3... appended, so outputs never overwrite
each other or summary.json: a.jpg and a.png give a and a_2; summary.jpg gives summary_2.
Names are compared case-insensitively (A.json and a.json are one file on macOS and Windows):
A.jpg and a.png give A and a_2.
summary.json lists the output JSON of every input file.

Images whose longest side exceeds --max-side are processed downscaled, but every data output
is in the original image's pixels (upright, EXIF applied): the JSON's ``height``/``width``, RLE
sizes, ``bbox``, ``area``, ``point_coords``, ``box`` and the label / panoptic PNGs (masks are
re-rendered from the model's logits at the original size; label maps take the nearest
processed pixel). ``processed_height``/``processed_width`` and ``scale`` say how the image was
processed; only the overlay picture is at that size. --points/--boxes are given in
original-image pixels. Malformed prompts stop the run
before any work; prompts outside a particular image skip that image (with the reason), and
prompts that fit no input image stop the run before the model is built.

The output folder is created and a test file written there (and removed) before the model is
built: an --output that is a file, lies under a file or is not writable stops the run at once.
Bad files never stop the run: unreadable, truncated, empty or too small files are skipped with
a reason; grayscale, palette, CMYK, alpha, 16-bit and EXIF-rotated images are converted. An
image whose files cannot be written (e.g. a full disk) is skipped with the reason, and the
files already written for it are removed; every file is first written as FILE.tmp, then
renamed, so none is ever half-written.
The exit status is 0 when at least one image was processed, 1 when none could be, 2 for invalid
arguments (an unusable output folder included), 3 when summary.json could not be written at the
end (the images' files are kept).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import numpy as np

from uniovseg.data.vocabulary import (
    available_vocabularies,
    class_display_names,
    load_vocabulary,
    parse_vocabulary_string,
    resolve_vocabulary,
)
from uniovseg.inference import output_files
from uniovseg.inference.image_io import (
    ImageReadError,
    collect_image_paths,
    read_image,
    read_image_size,
)
from uniovseg.inference.prompts import check_prompts_inside, parse_boxes, parse_points

logger = logging.getLogger("uniovseg.demo")

TASKS = ("automatic", "semantic", "panoptic", "prompted", "concepts")
EXIT_OK, EXIT_NOTHING_PROCESSED, EXIT_BAD_ARGUMENTS, EXIT_SUMMARY_NOT_WRITTEN = 0, 1, 2, 3


def build_parser() -> argparse.ArgumentParser:
    description, epilog = __doc__.split("\n\n", 1)
    parser = argparse.ArgumentParser(
        description=description, epilog=epilog, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--config-file",
        required=True,
        help="uniovseg YAML config: a path or a packaged name (e.g. tiny/stage1_tiny.yaml)",
    )
    parser.add_argument(
        "--input", nargs="+", required=True, help="image files, directories or glob patterns"
    )
    parser.add_argument("--recursive", action="store_true", help="descend into subdirectories")
    parser.add_argument("--output", required=True, help="output directory (created)")
    parser.add_argument("--task", choices=TASKS, default="automatic")
    vocab = parser.add_mutually_exclusive_group()
    vocab.add_argument("--vocab", help="classes: ';' between classes, ',' between synonyms")
    vocab.add_argument("--vocab-file", help="text file, one class per line (synonyms by ',')")
    vocab.add_argument(
        "--vocab-name", help=f"packaged vocabulary: {', '.join(available_vocabularies())}"
    )
    parser.add_argument(
        "--thing-classes",
        default="",
        help="panoptic: classes split into instances, ';'-separated names (default: none)",
    )
    parser.add_argument("--points", help="task prompted: 'x,y;x,y' in original image pixels")
    parser.add_argument("--boxes", help="task prompted: 'x1,y1,x2,y2;...' in original pixels")
    parser.add_argument(
        "--multimask", action="store_true", help="task prompted: all 4 masks per point"
    )
    parser.add_argument(
        "--concepts", help="task concepts: phrases, ';' between them (e.g. 'red car; dog')"
    )
    parser.add_argument(
        "--background",
        help="task concepts: what a mask may show instead of a phrase (a vocabulary; default "
        "MODEL.UNIOVSEG.CONCEPTS.BACKGROUND_VOCABULARY)",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: config)")
    # 4096: photos up to 12 MP reach the model whole, so the model's one resize (the
    # release's) is the only one; a pre-downscale (SA-1B photos are ~2250 px) changed the input.
    parser.add_argument(
        "--max-side",
        type=int,
        default=4096,
        help="downscale larger images before the model's own resize (default 4096)",
    )
    parser.add_argument(
        "--min-side", type=int, default=8, help="skip images smaller than this (default 8)"
    )
    parser.add_argument(
        "--opts", nargs=argparse.REMAINDER, default=[], help="config overrides: KEY VALUE ..."
    )
    return parser


def validate_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict:
    """Checks everything that can be checked without images or a model (parser.error exits);
    ``args.config_file`` becomes the path of the config file to read."""
    from uniovseg.model_zoo import resolve_config_file

    try:
        args.config_file = resolve_config_file(args.config_file)
    except FileNotFoundError as e:
        parser.error(f"--config-file: {e}")
    if len(args.opts) % 2:
        parser.error(f"--opts needs KEY VALUE pairs, got {args.opts}")
    if args.max_side < 1 or args.min_side < 1:
        parser.error("--max-side and --min-side must be >= 1")
    plan = {"vocabulary": None, "thing_classes": [], "points": None, "boxes": None}
    plan["concepts"], plan["background"] = None, None
    try:
        if args.vocab is not None:
            plan["vocabulary"] = parse_vocabulary_string(args.vocab)
        elif args.vocab_file is not None:
            if not os.path.isfile(args.vocab_file):
                parser.error(f"--vocab-file {args.vocab_file!r} does not exist")
            plan["vocabulary"] = load_vocabulary(args.vocab_file)
        elif args.vocab_name is not None:
            if args.vocab_name not in available_vocabularies():
                parser.error(
                    f"--vocab-name {args.vocab_name!r} is not packaged; choose one of "
                    f"{', '.join(available_vocabularies())}"
                )
            plan["vocabulary"] = load_vocabulary(args.vocab_name)
        if args.thing_classes:
            plan["thing_classes"] = [t.strip() for t in args.thing_classes.split(";") if t.strip()]
        if args.points:
            plan["points"] = parse_points(args.points)
        if args.boxes:
            plan["boxes"] = parse_boxes(args.boxes)
        if args.concepts is not None:
            from uniovseg.modeling.concept_segmentation import parse_concepts

            plan["concepts"] = parse_concepts(args.concepts)
        if args.background is not None:
            plan["background"] = resolve_vocabulary(args.background)
    except ValueError as e:
        parser.error(str(e))
    if args.task in ("semantic", "panoptic") and plan["vocabulary"] is None:
        parser.error(f"--task {args.task} needs class names: --vocab, --vocab-file or --vocab-name")
    if plan["thing_classes"]:
        if plan["vocabulary"] is None:
            parser.error("--thing-classes needs a vocabulary")
        from uniovseg.inference.predictor import thing_class_indices

        try:
            thing_class_indices(plan["vocabulary"], plan["thing_classes"])
        except ValueError as e:
            parser.error(str(e))
    has_prompts = plan["points"] is not None or plan["boxes"] is not None
    if args.task == "prompted" and not has_prompts:
        parser.error("--task prompted needs --points and/or --boxes")
    if args.task != "prompted" and has_prompts:
        parser.error("--points/--boxes are only used with --task prompted")
    if (args.task == "concepts") != (plan["concepts"] is not None):
        parser.error("--task concepts and --concepts 'red car; dog' go together")
    if plan["background"] is not None and args.task != "concepts":
        parser.error("--background is only used with --task concepts")
    return plan


def prompts_fit(plan: dict, size: tuple[int, int]) -> str | None:
    """None when every prompt lies inside an image of ``size`` (H, W), else the reason."""
    try:
        check_prompts_inside(size, points=plan["points"], boxes=plan["boxes"])
    except ValueError as e:
        return str(e)
    return None


def scaled_prompts(plan: dict, loaded) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Prompts in original pixels -> pixels of the (possibly downscaled) processed image."""
    (height, width), (height0, width0) = loaded.size, loaded.original_size
    sx, sy = width / width0, height / height0
    points = plan["points"] * np.float32([sx, sy]) if plan["points"] is not None else None
    boxes = plan["boxes"] * np.float32([sx, sy, sx, sy]) if plan["boxes"] is not None else None
    return points, boxes


def process_image(
    predictor, generator, loaded, args, plan, out_prefix: str, written: list[str]
) -> dict:
    """Runs the task on one image and writes its files (their paths appended to ``written``);
    returns the JSON written."""
    from uniovseg.inference.upscaling import OutputUpscaler

    predictor.set_image(loaded.image)
    upscaler = OutputUpscaler.from_predictor(predictor, loaded.original_size)
    info = output_files.image_info(
        loaded, file_name=loaded.path, task=args.task, class_names=predictor.class_names
    )
    if args.task == "prompted":
        overlay = _prompted(predictor, loaded, args, plan, info, upscaler)
    elif args.task == "concepts":
        overlay = _concepts(predictor, loaded.image, plan, info, upscaler)
    else:
        overlay = _automatic(
            predictor, generator, loaded.image, args.task, out_prefix, info, written, upscaler
        )
    _save(written, output_files.write_rgb_png, f"{out_prefix}_overlay.png", overlay)
    _save(written, output_files.write_json, f"{out_prefix}.json", info)  # last: the image is done
    return info


def _save(written: list[str], write, path: str, *args):
    """``write(path, *args)``, recording ``path`` in ``written`` once it is there."""
    result = write(path, *args)
    written.append(path)
    return result


def _prompted(predictor, loaded, args, plan, info: dict, upscaler) -> np.ndarray:
    """Task prompted: records of every prompt's masks at the original size (prompts numbered
    across points and boxes); overlay with numbered prompts, each mask in its prompt's colour."""
    from uniovseg.inference import visualization

    names = predictor.class_names
    points, boxes = scaled_prompts(plan, loaded)
    records, masks = [], []
    for kind, prompts, given in (
        ("point_coords", points, plan["points"]),
        ("boxes", boxes, plan["boxes"]),
    ):
        if prompts is None:
            continue
        out = predictor.predict_with_labels(
            **{kind: prompts}, multimask_output=args.multimask, squeeze=False
        )
        full = upscaler.prompt_prediction(out)
        records += output_files.prompt_records(
            full.masks,
            out.iou_predictions,
            out.stability_scores,
            points=given if kind == "point_coords" else None,
            boxes=given if kind == "boxes" else None,
            labels=out.labels,
            scores=out.scores,
            class_names=names,
            first_prompt_index=len(masks),
        )
        masks += list(out.masks)  # one [M, H, W] array per prompt, processed size
    texts = [[] for _ in masks]
    for r in records:
        label = f"{r['category']} {r['score']:.0%}, " if "category" in r else ""
        texts[r["prompt_index"]].append(f"{label}iou {r['predicted_iou']:.2f}")
    info["records"] = records
    return visualization.draw_prompts(loaded.image, masks, points=points, boxes=boxes, texts=texts)


def _concepts(predictor, image, plan, info: dict, upscaler) -> np.ndarray:
    """Task concepts: every instance of each phrase (records at the original size, re-rendered
    from the automatic masks' logits) or "none found"; the overlay at the processed size."""
    import torch

    from uniovseg.inference import visualization

    out = predictor.segment_concepts(plan["concepts"], background=plan["background"])
    result = predictor.generate_automatic_masks()  # cached: the masks the instances index
    records, summary = [], []
    for i, concept in enumerate(out):
        index = [instance.mask_index for instance in concept.instances]
        if index:
            chosen = result.select(torch.tensor(index, device=result.masks.device))
            full = upscaler.automatic_result(chosen)
            records += output_files.concept_records(
                full.masks.cpu().numpy(),
                concept.scores,
                chosen.iou_scores.cpu().numpy(),
                concept=concept.phrase,
                concept_index=i,
            )
        summary.append({"concept": concept.phrase, "found": concept.found, "instances": len(index)})
    info["concepts"] = summary
    info["score_threshold"] = out.score_threshold
    info["records"] = records
    names = class_display_names([c.phrase for c in out])
    masks = [
        np.stack([i.mask for i in c.instances])
        if c.found
        else np.zeros((0, *image.shape[:2]), bool)
        for c in out
    ]
    return visualization.draw_concepts(image, names, masks, [c.scores.tolist() for c in out])


def _automatic(
    predictor,
    generator,
    image,
    task: str,
    out_prefix: str,
    info: dict,
    written: list[str],
    upscaler,
) -> np.ndarray:
    """Tasks automatic, semantic, panoptic: labelled automatic-mask records and label maps at
    the original size; the overlay at the processed size."""
    from uniovseg.inference import visualization

    names = predictor.class_names
    result, labels = generator.result_for_current_image()
    info["records"] = upscaler.automatic_records(
        result, labels, min_region_area=getattr(generator.engine, "min_region_area", 0)
    )
    if task == "automatic":
        return visualization.draw_masks(
            image,
            result.masks.cpu().numpy(),
            class_ids=labels.labels if labels is not None else None,
            class_names=names or None,
        )
    if task == "semantic":
        semantic = predictor.predict_semantic()
        label_map = upscaler.label_map(semantic.labels)
        overlay = visualization.draw_semantic(image, semantic.labels, names)
    else:
        panoptic = predictor.predict_panoptic()
        panoptic_seg = upscaler.label_map(panoptic.panoptic_seg)
        _save(written, output_files.write_panoptic_png, f"{out_prefix}_panoptic.png", panoptic_seg)
        info["panoptic_file"] = os.path.basename(f"{out_prefix}_panoptic.png")
        info["segments_info"] = panoptic.segments_info
        label_map = output_files.panoptic_to_semantic(panoptic_seg, panoptic.segments_info)
        overlay = visualization.draw_panoptic(
            image, panoptic.panoptic_seg, panoptic.segments_info, names
        )
    info["semantic_ignore_value"] = _save(
        written, output_files.write_label_map, f"{out_prefix}_semantic.png", label_map, len(names)
    )
    info["semantic_file"] = os.path.basename(f"{out_prefix}_semantic.png")
    _save(
        written,
        output_files.write_semantic_color_png,
        f"{out_prefix}_semantic_color.png",
        label_map,
        len(names),
    )
    info["semantic_color_file"] = os.path.basename(f"{out_prefix}_semantic_color.png")
    return overlay


def main(argv: list[str] | None = None) -> int:
    """Runs the demo; returns the exit status (see the module docstring).

    Args:
        argv: The arguments; None: ``sys.argv[1:]``, run as a program (``uniovseg-demo``,
            ``python demo/demo.py``), which also sends INFO logging to stderr.
    """
    if argv is None:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    plan = validate_args(parser, args)

    images, problems = collect_image_paths(args.input, recursive=args.recursive)
    skipped = [{"file": item, "reason": reason} for item, reason in problems]
    candidates = []
    for item in images:
        try:
            size = read_image_size(item.path)
        except ImageReadError as e:
            skipped.append({"file": item.path, "reason": str(e)})
            continue
        reason = prompts_fit(plan, size) if args.task == "prompted" else None
        if reason is not None:
            skipped.append({"file": item.path, "reason": reason})
            continue
        candidates.append(item)
    if args.task == "prompted" and images and not candidates:
        fits = [s for s in skipped if "outside" in s["reason"]]
        if fits:
            parser.error(f"the prompts fit none of the input images: {fits[0]['reason']}")

    try:  # before the model is built: a run must not compute everything and lose it
        output_files.check_output_dir(args.output)
    except ValueError as e:
        parser.exit(EXIT_BAD_ARGUMENTS, f"{parser.prog}: error: {e}\n")

    summary = {"output": args.output, "task": args.task, "processed": [], "skipped": skipped}
    if candidates:
        run_images(parser, args, plan, candidates, summary)
    summary_path = os.path.join(args.output, output_files.SUMMARY_FILE)
    try:
        output_files.write_json(summary_path, summary)
    except OSError as e:
        print(f"{parser.prog}: error: cannot write {summary_path}: {e}", file=sys.stderr)
        print_summary(summary, len(images) + len(problems))
        return EXIT_SUMMARY_NOT_WRITTEN
    print_summary(summary, len(images) + len(problems))
    return EXIT_OK if summary["processed"] else EXIT_NOTHING_PROCESSED


def run_images(parser, args, plan, candidates, summary) -> None:
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from uniovseg.inference.automatic_mask_generator_api import AutomaticMaskGenerator
    from uniovseg.inference.predictor import UniOVSegPredictor

    try:
        predictor = UniOVSegPredictor.from_config(
            args.config_file, opts=args.opts, device=args.device
        )
    except (KeyError, ValueError, AssertionError, FileNotFoundError) as e:
        parser.error(f"cannot build the model from {args.config_file} with {args.opts}: {e}")
    if plan["vocabulary"] is not None:
        predictor.set_vocabulary(plan["vocabulary"], thing_classes=plan["thing_classes"])
        logger.info(
            "vocabulary: %d classes (%s)",
            len(plan["vocabulary"]),
            ", ".join(class_display_names(plan["vocabulary"])[:10]),
        )
    generator = AutomaticMaskGenerator.from_predictor_config(predictor, output_mode="coco_rle")
    names = output_files.output_names([item.name for item in candidates])
    with logging_redirect_tqdm():
        for item, name in zip(
            tqdm(candidates, desc=f"uniovseg {args.task}", unit="image"), names, strict=True
        ):
            start = time.perf_counter()
            written: list[str] = []
            try:
                loaded = read_image(item.path, max_side=args.max_side, min_side=args.min_side)
                out_prefix = os.path.join(args.output, name)
                os.makedirs(os.path.dirname(out_prefix), exist_ok=True)
                info = process_image(predictor, generator, loaded, args, plan, out_prefix, written)
            except ImageReadError as e:
                _skip(summary, item.path, str(e))
                continue
            except OSError as e:  # e.g. a full disk: this image's files, not the run, are lost
                _remove_files(written)
                _skip(summary, item.path, f"cannot write its output files: {e}")
                continue
            except Exception as e:  # one failing image must not end a long run
                _remove_files(written)
                _skip(summary, item.path, f"failed: {type(e).__name__}: {e}")
                logger.debug("traceback of %s", item.path, exc_info=True)
                continue
            seconds = time.perf_counter() - start
            summary["processed"].append(
                {
                    "file": item.path,
                    "output": f"{name}.json",
                    "masks": len(info["records"]),
                    "seconds": round(seconds, 4),
                    "notes": loaded.notes,
                }
            )
    times = [p["seconds"] for p in summary["processed"]]
    summary["mean_seconds_per_image"] = float(np.mean(times)) if times else None


def _skip(summary: dict, path: str, reason: str) -> None:
    summary["skipped"].append({"file": path, "reason": reason})
    logger.warning("skipped %s: %s", path, reason)


def _remove_files(paths: list[str]) -> None:
    """Removes the files written for an image that failed: its outputs are all or nothing."""
    for path in paths:
        try:
            os.remove(path)
        except OSError as e:
            logger.warning("cannot remove %s of a skipped image: %s", path, e)


def print_summary(summary: dict, num_inputs: int) -> None:
    processed, skipped = summary["processed"], summary["skipped"]
    line = f"Processed {len(processed)} of {num_inputs} input(s) -> {summary['output']}"
    if processed:
        line += f" ({summary['mean_seconds_per_image']:.2f} s per image)"
    print(line)
    if skipped:
        print(f"Skipped {len(skipped)}:")
        for item in skipped:
            print(f"  {item['file']}: {item['reason']}")


if __name__ == "__main__":
    sys.exit(main())
