"""The files that a web-app photo (:class:`~uniovseg.inference.web_session.WebImageSession`)
offers for download, in the command-line demo's formats (:mod:`uniovseg.inference.output_files`),
in the original photo's pixels: ``NAME_prompts.json``; ``NAME_vocabulary.json`` with
``NAME_semantic.png``, ``NAME_semantic_color.png`` and ``NAME_panoptic.png``;
``NAME_everything.json``. ``NAME`` is the uploaded file's name without its extension.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from uniovseg.data.vocabulary import class_display_names
from uniovseg.inference import output_files
from uniovseg.inference.image_io import LoadedImage

__all__ = ["result_info", "write_result_json", "write_vocabulary_files"]


def result_info(
    loaded: LoadedImage, file_name: str, task: str, vocabulary: Sequence[str] | None
) -> dict:
    """The demo's per-image JSON header (:func:`output_files.image_info`), with
    ``class_names`` when there is a vocabulary."""
    names = class_display_names(vocabulary) if vocabulary is not None else None
    return output_files.image_info(loaded, file_name=file_name, task=task, class_names=names)


def write_result_json(prefix: str, section: str, info: dict) -> str:
    """Writes ``<prefix>_<section>.json`` (one file per section of the page); returns its path."""
    path = f"{prefix}_{section}.json"
    output_files.write_json(path, info)
    return path


def write_vocabulary_files(
    prefix: str, info: dict, upscaler, semantic, panoptic, num_classes: int
) -> list[str]:
    """The demo's panoptic-task files, with the semantic map of ``predict_semantic``.

    Args:
        prefix: Folder and ``NAME`` of the files.
        info: The JSON so far (:func:`result_info` and ``records``); the files' names, the
            segments and the label map's ignore value are added.
        upscaler: The photo's ``OutputUpscaler`` (processed -> original pixels).
        semantic, panoptic: The predictor's ``SemanticPrediction`` and ``PanopticPrediction``.
        num_classes: Classes of the vocabulary.

    Returns:
        The paths: the JSON, the semantic label map, its colour picture, the panoptic PNG.
    """
    label_map = upscaler.label_map(semantic.labels)
    paths = [f"{prefix}{suffix}" for suffix in ("_semantic.png", "_semantic_color.png")]
    paths.append(f"{prefix}_panoptic.png")
    info["segments_info"] = panoptic.segments_info
    for key, path in zip(
        ("semantic_file", "semantic_color_file", "panoptic_file"), paths, strict=True
    ):
        info[key] = os.path.basename(path)
    info["semantic_ignore_value"] = output_files.write_label_map(paths[0], label_map, num_classes)
    output_files.write_semantic_color_png(paths[1], label_map, num_classes)
    output_files.write_panoptic_png(paths[2], upscaler.label_map(panoptic.panoptic_seg))
    return [write_result_json(prefix, "vocabulary", info), *paths]
