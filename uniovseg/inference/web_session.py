"""What the web app (:mod:`uniovseg.inference.web_app`) keeps for one uploaded photo, free of
any web framework: the photo, encoded once, the prompts clicked on it, and the pictures and
files of its latest result.

Threads: a predictor's current image belongs to the thread that set it (see
:class:`~uniovseg.inference.predictor.UniOVSegPredictor`, "Thread safety"), while a web server
answers each request on any thread of its pool. So each :class:`WebImageSession` owns one
worker thread: the photo is set there once, at upload, and every later call for it (clicks,
vocabulary, segment everything) runs there, so that a click runs the prompt decoder only. The
vocabulary belongs to the model and is shared by every session: a call sets its session's
vocabulary and computes under one lock shared by all the sessions of a
:class:`~uniovseg.inference.web_session_store.WebSessionStore`.

Background points: the model takes positive points only (it has no negative-point path), so a
background click is a prompt of its own whose chosen mask is erased from the foreground masks,
in the pictures and in the JSON alike.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from itertools import count

import numpy as np

from uniovseg.data.vocabulary import class_display_names, thing_class_indices
from uniovseg.inference import output_files, visualization, web_files
from uniovseg.inference.image_io import read_image
from uniovseg.inference.predictions import PromptPrediction
from uniovseg.inference.web_views import (
    BOX_CORNER,
    FOREGROUND,
    PROMPT_MODES,
    EverythingView,
    LegendRow,
    PromptView,
    VocabularyView,
    parse_thing_classes,
    parse_vocabulary_text,
)

__all__ = ["WebImageSession"]


_SERIALS = count()


def _one_at_a_time(method):
    """Runs a session method holding the session's lock: a page may send two events for one
    photo at once (a click while its vocabulary is computed), and both change its prompts."""

    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self._state_lock:
            return method(self, *args, **kwargs)

    return locked


@dataclasses.dataclass(eq=False)  # compared by identity (the last prompt is found by it)
class _Prompt:
    """One click (or box) and its prediction at the processed size.

    Attributes:
        kind: ``"point"`` or ``"box"``.
        coords: float [2] (x, y) or [4] XYXY, processed pixels.
        foreground: False for a background point (its mask erases).
        prediction: The predictor's output with a leading N = 1 (``squeeze=False``).
        chosen: The mask shown (index into M); the best predicted IoU at first.
        serial: Tells prompts apart in cache keys (the n-th prompt of the process).
        records: Cached JSON records of its masks at the original size (re-rendering them is
            the slow part of a click on a large photo), valid for ``records_key``: what they
            depend on (the erasing background masks and the labels).
    """

    kind: str
    coords: np.ndarray
    foreground: bool
    prediction: PromptPrediction
    chosen: int
    serial: int = dataclasses.field(default_factory=lambda: next(_SERIALS))
    records: list[dict] | None = None
    records_key: tuple | None = None

    @property
    def masks(self) -> np.ndarray:
        """bool [M, H, W]."""
        return self.prediction.masks[0]


class WebImageSession:
    """One uploaded photo: encoded once on its own worker thread, then prompted, labelled and
    segmented any number of times (see the module docstring)."""

    def __init__(
        self,
        predictor,
        generator,
        path: str,
        *,
        max_side: int | None,
        lock: threading.Lock,
        display_name: str | None = None,
    ) -> None:
        """
        Args:
            predictor: A :class:`~uniovseg.inference.predictor.UniOVSegPredictor`.
            generator: An ``AutomaticMaskGenerator`` of that predictor (no crops).
            path: The uploaded image file.
            max_side: Downscale larger photos to this longest side (the JSON stays in the
                original pixels); None: never.
            lock: Held around every model call (shared by the sessions of one model).
            display_name: The file name the user gave (default: ``path``'s).

        Raises:
            ImageReadError: the file is not a usable image (a ``ValueError``).
        """
        self.predictor, self.generator, self._lock = predictor, generator, lock
        self.loaded = read_image(path, max_side=max_side)
        self.image = self.loaded.image
        self.file_name = os.path.basename(display_name or path)
        stem = re.sub(r"[^\w.-]+", "_", os.path.splitext(self.file_name)[0]).strip("._")
        self.output_dir = tempfile.mkdtemp(prefix="uniovseg-web-")
        self._prefix = os.path.join(self.output_dir, stem or "image")
        self.prompts: list[_Prompt] = []
        self.pending_corner: tuple[float, float] | None = None
        self.vocabulary: list[str] | None = None
        self.thing_classes: list[str] = []
        self._last: _Prompt | None = None
        self._state_lock = threading.RLock()
        self._worker: ThreadPoolExecutor | None = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="uniovseg-web-image"
        )
        start = time.perf_counter()
        try:
            self.upscaler = self._labelled(self._encode)
        except BaseException:
            self.close()
            raise
        self.encode_seconds = time.perf_counter() - start

    # ------------------------------------------------------------------ threads
    def _encode(self):
        from uniovseg.inference.upscaling import OutputUpscaler

        self.predictor.set_image(self.image)
        return OutputUpscaler.from_predictor(self.predictor, self.loaded.original_size)

    def _labelled(self, function, vocabulary: tuple[list[str], list[str]] | None = None):
        """``function()`` on the worker thread, under the model lock, with ``vocabulary``
        (default: the session's, if any) set on the model first."""
        worker = self._worker
        if worker is None:
            raise ValueError("this photo was closed; upload it again")
        entries, things = vocabulary or (self.vocabulary, self.thing_classes)

        def job():
            with self._lock:
                if entries is not None:
                    self.predictor.set_vocabulary(entries, thing_classes=things)
                return function()

        return worker.submit(job).result()

    def close(self) -> None:
        """Frees the photo's encoding, its thread and its files (idempotent)."""
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.submit(self.predictor.reset_image)
            worker.shutdown(wait=False)
        shutil.rmtree(self.output_dir, ignore_errors=True)

    # ------------------------------------------------------------------ prompts
    @_one_at_a_time
    def click(self, x: float, y: float, mode: str) -> PromptView:
        """A click at pixel (x, y) of the canvas in ``mode`` (one of :data:`PROMPT_MODES`).

        Raises:
            ValueError: an unknown mode, a click outside the photo (on the legend), or a box
                whose corners share a row or a column.
        """
        if mode not in PROMPT_MODES:
            raise ValueError(f"mode must be one of {PROMPT_MODES}, got {mode!r}")
        height, width = self.image.shape[:2]
        if not (0 <= x < width and 0 <= y < height):
            raise ValueError(f"click on the photo ({width}x{height} px), not beside it")
        start = time.perf_counter()
        if mode == BOX_CORNER:
            if self.pending_corner is None:
                self.pending_corner = (float(x), float(y))
                return self._prompt_view(
                    f"Box: first corner at ({x:.0f}, {y:.0f}); click the opposite corner."
                )
            (x0, y0), self.pending_corner = self.pending_corner, None
            if x0 == x or y0 == y:
                raise ValueError("the two corners of a box must differ in x and in y")
            coords = np.array([min(x0, x), min(y0, y), max(x0, x), max(y0, y)], dtype=np.float64)
            prompt = self._predict("box", coords, foreground=True)
        else:
            coords = np.array([x, y], dtype=np.float64)
            prompt = self._predict("point", coords, foreground=mode == FOREGROUND)
        self.prompts.append(prompt)
        self._last = prompt
        ious = ", ".join(f"{v:.2f}" for v in prompt.prediction.iou_predictions[0])
        what = "box" if prompt.kind == "box" else mode
        return self._prompt_view(
            f"{what.capitalize()} at {_coords_text(coords)}: {len(prompt.masks)} mask(s), "
            f"predicted IoU {ious} ({time.perf_counter() - start:.2f} s, image encoded once "
            f"at upload in {self.encode_seconds:.2f} s)."
        )

    @_one_at_a_time
    def choose_mask(self, index: int) -> PromptView:
        """Shows mask ``index`` of the last prompt (a click on the gallery)."""
        last = self._last
        if last is None:
            raise ValueError("click on the photo first")
        if not 0 <= index < len(last.masks):
            raise ValueError(f"the last prompt has {len(last.masks)} masks, not {index + 1}")
        last.chosen = int(index)
        return self._prompt_view(f"Showing mask {index + 1} of the last prompt.")

    @_one_at_a_time
    def clear_prompts(self) -> PromptView:
        """Forgets every prompt (the encoding stays)."""
        self.prompts, self.pending_corner, self._last = [], None, None
        return self._prompt_view("Prompts cleared.")

    def _predict(self, kind: str, coords: np.ndarray, *, foreground: bool) -> _Prompt:
        key = "point_coords" if kind == "point" else "boxes"
        prediction = self._labelled(
            lambda: self.predictor.predict_with_labels(
                **{key: coords[None]}, with_labels=self.vocabulary is not None, squeeze=False
            )
        )
        best = int(np.argmax(prediction.iou_predictions[0]))
        return _Prompt(kind, coords, foreground, prediction, best)

    def _numbered(self) -> list[_Prompt]:
        """Foreground prompts in drawing order (points, then boxes: ``draw_prompts``'s
        numbering)."""
        shown = [p for p in self.prompts if p.foreground]
        return [p for p in shown if p.kind == "point"] + [p for p in shown if p.kind == "box"]

    def _erased(self, prompt: _Prompt, masks: np.ndarray, erase: np.ndarray | None) -> np.ndarray:
        return masks & ~erase if erase is not None and prompt.foreground else masks

    def _erase_mask(self, full_size: bool) -> np.ndarray | None:
        """The union of the background points' chosen masks (processed or original size)."""
        union = None
        for prompt in self.prompts:
            if not prompt.foreground:
                mask = prompt.masks[prompt.chosen]
                if full_size:
                    mask = self.upscaler.prompt_prediction(prompt.prediction).masks[
                        0, prompt.chosen
                    ]
                union = mask if union is None else union | mask
        return union

    def _prompt_view(self, status: str) -> PromptView:
        numbered, erase = self._numbered(), self._erase_mask(full_size=False)
        canvas = self.image
        if numbered:
            canvas = visualization.draw_prompts(
                self.image,
                [self._erased(p, p.masks[p.chosen], erase) for p in numbered],
                points=[p.coords for p in numbered if p.kind == "point"] or None,
                boxes=[p.coords for p in numbered if p.kind == "box"] or None,
                texts=[_mask_text(p.prediction, p.chosen) for p in numbered],
            )
        background = [p.coords for p in self.prompts if not p.foreground]
        size = self.image.shape[:2]
        if background:
            canvas = visualization.mark_points(canvas, background, text="x", image_size=size)
        if self.pending_corner is not None:
            color = visualization.class_color(len(numbered))  # the colour the box will get
            canvas = visualization.mark_points(
                canvas, [self.pending_corner], text="+", color=color, image_size=size
            )
        gallery = self._gallery(numbered, erase)
        chosen = self._last.chosen if self._last is not None else None
        return PromptView(canvas, gallery, status, self._prompt_files(), chosen)

    def _gallery(self, numbered: list[_Prompt], erase) -> list[tuple[np.ndarray, str]]:
        last = self._last
        if last is None:
            return []
        number = numbered.index(last) + 1 if last.foreground else None
        box = last.coords[None] if last.kind == "box" else None
        pictures = []
        for m, mask in enumerate(self._erased(last, last.masks, erase)):
            picture = visualization.draw_masks(
                self.image, mask[None], class_ids=[(number or 1) - 1], boxes=box
            )
            # The prompt's own number, over the 1 that draw_masks gives a box at the same spot.
            marker, text = last.coords[None, :2], str(number or "x")
            color = visualization.class_color(number - 1) if number else (0, 0, 0)
            picture = visualization.mark_points(picture, marker, text=text, color=color)
            caption = f"{'* ' if m == last.chosen else ''}mask {m + 1}: "
            pictures.append((picture, caption + _mask_text(last.prediction, m)))
        return pictures

    def _prompt_files(self) -> list[str]:
        """The JSON of the prompts (original pixels), or none without a foreground prompt."""
        numbered = self._numbered()
        if not numbered:
            return []
        background = tuple((p.serial, p.chosen) for p in self.prompts if not p.foreground)
        erase = None
        records = []
        for index, prompt in enumerate(numbered):
            key = (background, id(prompt.prediction))  # replaced when relabelled
            if prompt.records_key != key:
                if background and erase is None:
                    erase = self._erase_mask(full_size=True)
                prompt.records, prompt.records_key = self._full_size_records(prompt, erase), key
            for record in prompt.records:
                chosen = record["mask_index"] == prompt.chosen
                records.append({**record, "prompt_index": index, "chosen": chosen})
        info = web_files.result_info(self.loaded, self.file_name, "prompted", self.vocabulary)
        info["records"] = records
        background = [p.coords for p in self.prompts if not p.foreground]
        info["background_points"] = self.upscaler.points(np.reshape(background, (-1, 2))).tolist()
        return [web_files.write_result_json(self._prefix, "prompts", info)]

    def _full_size_records(self, prompt: _Prompt, erase: np.ndarray | None) -> list[dict]:
        """``output_files.prompt_records`` of a prompt's masks at the original size."""
        full = self.upscaler.prompt_prediction(prompt.prediction)
        is_point = prompt.kind == "point"
        return output_files.prompt_records(
            self._erased(prompt, full.masks, erase),
            full.iou_predictions,
            full.stability_scores,
            points=self.upscaler.points(prompt.coords[None]) if is_point else None,
            boxes=None if is_point else self.upscaler.boxes(prompt.coords[None]),
            labels=full.labels,
            scores=full.scores,
            class_names=full.class_names,
        )

    # ------------------------------------------------------------------ whole image
    @_one_at_a_time
    def segment_vocabulary(self, vocabulary_text: str, thing_text: str = "") -> VocabularyView:
        """Semantic and panoptic segmentation with the typed classes; the prompts' masks get
        labels of this vocabulary from now on.

        Raises:
            ValueError: no class, a thing class outside the vocabulary, or a model without
                open-vocabulary inference; before any computation.
        """
        entries = parse_vocabulary_text(vocabulary_text)
        things = parse_thing_classes(thing_text)
        thing_class_indices(entries, things)
        start = time.perf_counter()

        def job():
            semantic = self.predictor.predict_semantic()
            panoptic = self.predictor.predict_panoptic()
            result, labels = self.generator.result_for_current_image()
            for prompt in self.prompts:  # cheap: the prompts' logits, no decoder run
                found = self.predictor.classify_masks(prompt.prediction.low_res_logits[0])
                prompt.prediction = dataclasses.replace(
                    prompt.prediction,
                    labels=found.labels[None],
                    scores=found.scores[None],
                    class_names=found.class_names,
                )
            return semantic, panoptic, result, labels

        semantic, panoptic, result, labels = self._labelled(job, (entries, things))
        self.vocabulary, self.thing_classes = entries, things
        names = class_display_names(entries)
        legend = []
        for c, name in enumerate(names):
            count = sum(1 for s in panoptic.segments_info if s["category_id"] == c)
            share = float(np.mean(semantic.labels == c))
            legend.append(LegendRow(name, visualization.class_color(c), share, count))
        semantic_picture = visualization.draw_semantic(self.image, semantic.labels, names)
        panoptic_picture = visualization.draw_panoptic(
            self.image, panoptic.panoptic_seg, panoptic.segments_info, names
        )
        info = web_files.result_info(self.loaded, self.file_name, "semantic+panoptic", entries)
        info["records"] = self.upscaler.automatic_records(
            result, labels, min_region_area=self.generator.engine.min_region_area
        )
        files = web_files.write_vocabulary_files(
            self._prefix, info, self.upscaler, semantic, panoptic, len(names)
        )
        present = sum(1 for row in legend if row.semantic_share > 0)
        status = (
            f"{len(names)} classes: {present} in the semantic map, "
            f"{_count(len(panoptic.segments_info), 'panoptic segment')} "
            f"({time.perf_counter() - start:.2f} s, no new encoding)."
        )
        return VocabularyView(
            semantic_picture, panoptic_picture, legend, status, files, self._prompt_view(status)
        )

    @_one_at_a_time
    def segment_everything(self) -> EverythingView:
        """Automatic masks of the whole photo (labelled when a vocabulary was given)."""
        start = time.perf_counter()
        result, labels = self._labelled(self.generator.result_for_current_image)
        if self.vocabulary is None:
            labels = None  # another session's vocabulary may be on the model
        names = class_display_names(self.vocabulary) if self.vocabulary else None
        picture = visualization.draw_masks(
            self.image,
            result.masks.cpu().numpy(),
            class_ids=labels.labels if labels is not None else None,
            class_names=names,
        )
        info = web_files.result_info(self.loaded, self.file_name, "automatic", self.vocabulary)
        info["records"] = self.upscaler.automatic_records(
            result, labels, min_region_area=self.generator.engine.min_region_area
        )
        status = (
            f"Segment everything: {_count(len(result), 'mask')} "
            f"({time.perf_counter() - start:.2f} s, "
            "no new encoding)."
        )
        files = [web_files.write_result_json(self._prefix, "everything", info)]
        return EverythingView(picture, status, files)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _coords_text(coords: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:.0f}" for v in coords) + ")"


def _mask_text(prediction: PromptPrediction, m: int) -> str:
    """``"cat 45%, IoU 0.91"`` of mask ``m`` of a one-prompt prediction."""
    text = f"IoU {prediction.iou_predictions[0, m]:.2f}"
    if prediction.labels is not None:
        name = prediction.class_names[int(prediction.labels[0, m])]
        text = f"{name} {prediction.scores[0, m]:.0%}, {text}"
    return text
