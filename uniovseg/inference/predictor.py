"""``UniOVSegPredictor``: segment-anything's ``SamPredictor`` interface for Uni-OVSeg, plus
open-vocabulary labels, semantic and panoptic outputs.

A thin session over the model's inference core (``UniOVSeg.encode_image``, ``predict_prompts``,
``automatic_masks``, ``classify_masks``, ``open_vocab_outputs``): ``set_image`` encodes the
image once (frozen CLIP backbone, pixel decoder, prompt-decoder memory) and every later call
(prompted masks, automatic masks, labels, semantic and panoptic maps) reuses that encoding.
The predictor checks the user's inputs, maps prompts and masks between the original image and
the model's frame, and converts results to numpy.

Differences from ``SamPredictor`` that a SAM user should know:

* every point is its own prompt: ``point_coords`` [N, 2] gives N prompts and masks
  [N, M, H, W] (SAM combines N points into one prompt); one point gives [M, H, W] like SAM;
* point prompts are positive only: ``point_labels`` is accepted for compatibility and must be
  all 1 (the model has no negative-point path); points and boxes cannot be combined in one
  prompt, and mask prompts (``mask_input``) do not exist;
* points give M = 4 masks (granularities), boxes M = 1 (the single-mask token), whatever
  ``multimask_output`` says; ``multimask_output=False`` keeps each point's mask with the
  highest predicted IoU;
* ``iou_predictions`` are probabilities (sigmoid of the IoU head) and ``low_res_logits`` cover
  the padded S x S input at stride 4 (S = ``MODEL.UNIOVSEG.TEST.INPUT_SIZE``);
* :meth:`predict` keeps SAM's 3-tuple; :meth:`predict_with_labels` returns a
  :class:`PromptPrediction` that adds stability scores and, with a vocabulary, class labels.
"""

from __future__ import annotations

import functools
import logging
import threading
import warnings
import weakref
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from uniovseg.data.vocabulary import (
    class_display_names,
    resolve_vocabulary,
    thing_class_indices,
)
from uniovseg.inference.predictions import (
    UNLABELED,
    ConceptInstance,
    ConceptPrediction,
    ConceptResult,
    MaskLabels,
    PanopticPrediction,
    PromptPrediction,
    SemanticPrediction,
)
from uniovseg.inference.prompts import (
    ResizeLongestSide,
    check_point_labels,
    check_prompts_inside,
    prompt_rows,
    reject_mask_input,
    sam_prompt_arrays,
)
from uniovseg.modeling.automatic_mask_engine import (
    AutomaticMaskGenerationEngine,
    AutomaticMaskResult,
)
from uniovseg.modeling.concept_segmentation import parse_concepts

if TYPE_CHECKING:
    from uniovseg.modeling.image_encoding import ImageEncoding

__all__ = [
    "ConceptPrediction",
    "MaskLabels",
    "PanopticPrediction",
    "PromptPrediction",
    "SemanticPrediction",
    "UniOVSegPredictor",
    "thing_class_indices",
]

logger = logging.getLogger(__name__)

# Slack for prompts that went through a float rescale into the input frame, in input pixels.
_FRAME_TOLERANCE = 1e-3


# One lock per model, shared by all its predictors (``AutomaticMaskGenerator(model)`` wraps its
# own): the vocabulary and the text embeddings cached in the model are shared state, and the
# model's calls are not re-entrant. Weak keys: a lock lives as long as its model.
_MODEL_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_MODEL_LOCKS_GUARD = threading.Lock()


def _model_lock(model) -> threading.RLock:
    with _MODEL_LOCKS_GUARD:
        lock = _MODEL_LOCKS.get(model)
        if lock is None:
            lock = _MODEL_LOCKS[model] = threading.RLock()
        return lock


def _locked(method):
    """Runs a predictor method holding the lock of its model (see the Thread safety section)."""

    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)

    return locked


@dataclass
class _ImageSession:
    """One image of :meth:`UniOVSegPredictor.set_image`; owned by the thread that set it.

    Attributes:
        encoding: The model's encoding of the image (features and frame).
        automatic_cache: ``(engine key, AutomaticMaskResult)`` of the last automatic masks.
        region_cache: ``(AutomaticMaskResult, region embeddings [K, D])`` of the last masks
            that concept queries classified (later queries reuse them).
    """

    encoding: ImageEncoding
    automatic_cache: tuple | None = None
    region_cache: tuple | None = None


def _image_attribute(name: str, doc: str) -> property:
    """A read-only property: ``name`` of the calling thread's image frame, None without one."""

    def get(self):
        state = self._current()
        return None if state is None else getattr(state.encoding.frame, name)

    return property(get, doc=doc)


class UniOVSegPredictor:
    """Prompted, automatic and open-vocabulary segmentation of one image at a time.

    Example::

        predictor = UniOVSegPredictor.from_config(
            "stage2/uniovseg_convnext_large_stage2.yaml", weights="model_final.pth"
        )
        predictor.set_image(image)                       # uint8 [H, W, 3] RGB, features once
        masks, ious, _ = predictor.predict(point_coords=np.array([[120, 80]]))  # [4, H, W]
        predictor.set_vocabulary("cat; dog, puppy; sky")
        out = predictor.predict_with_labels(boxes=np.array([[10, 20, 200, 180]]))
        semantic = predictor.predict_semantic()          # labels [H, W], class_names

    Thread safety:
        One predictor can serve many threads, and no call ever returns the results of an image
        that another thread set. The current image is per thread: :meth:`set_image` changes
        only the image used by the calling thread's later calls, so ``predictor.set_image(a)``
        then ``predictor.predict(...)`` running in several threads at once cannot mix images,
        and a thread that has set no image gets a ``ValueError``. Every public method holds a
        re-entrant lock shared by all predictors of the same model: the model runs one call at
        a time, and each call sees one image and one vocabulary. The vocabulary belongs to the
        model: :meth:`set_vocabulary` applies to the later calls of every thread, and each
        labelled result carries the class names it was computed with. An image belongs to a
        thread, not to a request: where one request's ``set_image`` and ``predict`` may run on
        different threads (a thread pool running each call as its own task), call them from
        one function, best inside ``with predictor.session(image):``, which also frees the
        features when the block ends (``AutomaticMaskGenerator.generate(image)`` does this).
        Calls are serialized; for parallel throughput use one predictor and model per worker.
    """

    def __init__(self, model) -> None:
        """
        Args:
            model: A :class:`~uniovseg.modeling.meta_arch.UniOVSeg` (its device is used). It
                should be in eval mode; a model in training mode is switched to eval with a
                warning.
        """
        for needed in (
            "encode_image",
            "predict_prompts",
            "automatic_masks",
            "classify_masks",
            "open_vocab_outputs",
            "inference_precision",
        ):
            if not hasattr(model, needed):
                raise ValueError(
                    f"UniOVSegPredictor needs a UniOVSeg model (no {needed!r} on "
                    f"{type(model).__name__}); build one with UniOVSegPredictor.from_config()"
                )
        if model.training:
            warnings.warn(
                "UniOVSegPredictor got a model in training mode; switching it to eval()",
                stacklevel=2,
            )
            model.eval()
        self.model = model
        self.cfg = None
        self.transform = ResizeLongestSide(model.test_input_size)
        if model.test_resize["resize_mode"] != "longest_side":
            raise ValueError(
                "UniOVSegPredictor maps prompts with the longest-side test resize; set "
                "MODEL.UNIOVSEG.TEST.RESIZE_MODE 'longest_side'"
            )
        self._lock = _model_lock(model)
        self._local = threading.local()  # .image: the calling thread's _ImageSession or None

    @classmethod
    def from_config(
        cls,
        config_file: str,
        weights: str = "",
        opts: Sequence[str] = (),
        device: str | None = None,
    ) -> UniOVSegPredictor:
        """Builds the model of a config file and loads its weights.

        The arguments are those of :func:`uniovseg.modeling.build.build_inference_model`
        (``config_file`` a path or a packaged config name; ``weights`` overriding
        ``MODEL.WEIGHTS``; ``opts`` as ``KEY VALUE`` overrides; ``device`` "cpu"/"cuda[:N]").

        Raises:
            FileNotFoundError: ``config_file`` is neither a file nor a packaged config.
            ValueError: the weights file does not exist (checked before anything is built) or is
                refused; CLIP weights that can be neither found nor downloaded; bad ``opts``.
        """
        from uniovseg.modeling.build import build_inference_model

        model, cfg = build_inference_model(config_file, weights, opts, device)
        predictor = cls(model)
        predictor.cfg = cfg
        return predictor

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        *,
        device: str | None = None,
        revision: str | None = None,
        cache_dir: str | None = None,
        local_files_only: bool = False,
        opts: Sequence[str] = (),
        token: str | bool | None = None,
    ) -> UniOVSegPredictor:
        """Loads a model bundle (see :mod:`uniovseg.inference.model_bundle`): a local folder, or
        a Hugging Face hub repo id.

        Example::

            predictor = UniOVSegPredictor.from_pretrained("bundles/stage2")
            predictor = UniOVSegPredictor.from_pretrained("org/uniovseg-stage2", device="cuda")

        Only YAML, JSON and safetensors are read: nothing is unpickled or downloaded besides the
        bundle's own files.

        Args:
            name_or_path: The bundle folder, or a hub repo id (``"org/name"``) when no such
                folder exists.
            device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``; None: the bundle config's device when
                available here, else the CPU.
            revision: Hub branch, tag or commit (default ``main``).
            cache_dir: Hub cache folder (default: huggingface_hub's).
            local_files_only: Use the hub cache only, never the network (``HF_HUB_OFFLINE=1``
                does the same).
            opts: ``KEY VALUE`` overrides of test-time settings of the bundle's config.
            token: Hub token for private repos.

        Raises:
            FileNotFoundError: no such folder and a repo that is neither cached nor
                downloadable; a bundle file missing.
            ValueError: a refused file (a pickle as weights, Python tags or ``_BASE_`` in the
                config), a damaged one, or a config that does not fit the weights (the message
                names the first offending key).
        """
        from uniovseg.inference.model_bundle import load_pretrained

        model, cfg = load_pretrained(
            name_or_path,
            device=device,
            opts=opts,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            token=token,
        )
        predictor = cls(model)
        predictor.cfg = cfg
        return predictor

    def save_pretrained(
        self, directory: str, *, training_data: str | None = None, source: str | None = None
    ) -> str:
        """Writes the model as a bundle that :meth:`from_pretrained` loads (see
        :func:`uniovseg.inference.model_bundle.save_pretrained`).

        Args:
            directory: The bundle folder (new, empty, or an earlier bundle, which is replaced).
            training_data, source: What the model was trained on and where its weights come
                from, for the model card.

        Returns:
            The bundle folder (absolute).
        """
        from uniovseg.inference.model_bundle import save_pretrained

        return save_pretrained(self, directory, training_data=training_data, source=source)

    # ------------------------------------------------------------------ image
    @property
    def device(self) -> torch.device:
        return self.model.device

    def _current(self) -> _ImageSession | None:
        """The calling thread's image features, or None."""
        return getattr(self._local, "image", None)

    @property
    def is_image_set(self) -> bool:
        """Whether the calling thread has set an image."""
        return self._current() is not None

    original_size = _image_attribute("original_size", "(H0, W0) of the thread's image, or None.")
    input_size = _image_attribute("valid_size", "(h, w) of its resized region, or None.")
    padded_size = _image_attribute("padded_size", "(S, S) of its padded input, or None.")

    @property
    def encoding(self) -> ImageEncoding | None:
        """The model's encoding of the calling thread's image, or None."""
        state = self._current()
        return None if state is None else state.encoding

    def reset_image(self) -> None:
        """Forgets the calling thread's image and frees its features."""
        self._local.image = None

    @_locked
    @torch.no_grad()
    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Computes the image's features (CLIP backbone + pixel decoder), once, and makes it
        the calling thread's current image.

        Args:
            image: uint8 [H, W, 3] array (``image_io.to_rgb_uint8`` converts grayscale, RGBA,
                16-bit... arrays; ``image_io.read_image`` reads files).
            image_format: ``"RGB"`` or ``"BGR"`` (OpenCV's channel order).
        """
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        if not isinstance(image, np.ndarray):
            raise ValueError(f"set_image expects a numpy array, got {type(image).__name__}")
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"set_image expects a uint8 [H, W, 3] array, got {image.dtype} {image.shape}; "
                "convert it with uniovseg.inference.image_io.to_rgb_uint8(array)"
            )
        if image.shape[0] < 1 or image.shape[1] < 1:
            raise ValueError(f"the image is empty: {image.shape}")
        if image_format == "BGR":
            image = image[..., ::-1]
        # Forget the previous image first: if this call fails, later calls must not use it.
        self.reset_image()
        # A private copy: read-only arrays (e.g. from PIL) cannot back a tensor safely.
        tensor = torch.from_numpy(np.array(image, dtype=np.uint8, order="C")).permute(2, 0, 1)
        encoding = self.model.encode_image(tensor)
        original = (int(image.shape[0]), int(image.shape[1]))
        # The public transform and the model must agree on the resized size.
        assert encoding.frame.valid_size == self.transform.input_size(original), original
        self._local.image = _ImageSession(encoding)

    @contextmanager
    def session(self, image: np.ndarray, image_format: str = "RGB") -> Iterator[UniOVSegPredictor]:
        """Makes ``image`` the calling thread's image inside a ``with`` block.

        Example::

            with predictor.session(image):
                masks, ious, _ = predictor.predict(point_coords=points)

        When the block ends, the thread's previous image (or none) comes back and the block's
        features are freed. Other threads are never affected (see Thread safety).

        Args:
            image, image_format: As in :meth:`set_image`.
        """
        previous = self._current()
        try:
            self.set_image(image, image_format)
            yield self
        finally:
            self._local.image = previous

    def _require_image(self) -> _ImageSession:
        state = self._current()
        if state is None:
            raise ValueError(
                "no image is set in this thread: call predictor.set_image(image) first (each "
                "thread has its own image, see UniOVSegPredictor's 'Thread safety')"
            )
        return state

    # ------------------------------------------------------------------ vocabulary
    @property
    @_locked
    def has_vocabulary(self) -> bool:
        open_vocab = self.model.open_vocab
        return open_vocab is not None and open_vocab.text_classifier.num_classes > 0

    @property
    @_locked
    def vocabulary(self) -> list[str]:
        """Class entries (comma-separated synonyms) of the current vocabulary, or []."""
        return self.model.open_vocab.text_classifier.vocabulary if self.has_vocabulary else []

    @property
    @_locked
    def class_names(self) -> list[str]:
        """Display names (first synonyms) of the current vocabulary, or []."""
        return class_display_names(self.vocabulary)

    @_locked
    def set_vocabulary(
        self, vocabulary: str | Sequence[str], thing_classes: Collection[int | str] = ()
    ) -> list[str]:
        """Sets the classes used by labels, semantic and panoptic outputs, for every thread.

        Args:
            vocabulary: A list of class entries (``["cat", "dog, puppy"]``), an inline string
                (``"cat; dog, puppy; sky"``: ``;`` between classes, ``,`` between synonyms), a
                packaged name (``"ade20k_150"``) or a file with one class per line.
            thing_classes: Classes that panoptic output splits into instances, as indices or
                names (any synonym, case-insensitive); the others are stuff (one segment per
                class). Default: none.

        Returns:
            The normalised class entries.
        """
        if self.model.open_vocab is None:
            raise ValueError("this model was built without open-vocabulary inference")
        from uniovseg.data.vocabulary import resolve_vocabulary

        entries = resolve_vocabulary(vocabulary)
        self.model.set_vocabulary(
            entries, thing_classes=thing_class_indices(entries, thing_classes)
        )
        return list(entries)

    def _require_vocabulary(self) -> None:
        if not self.has_vocabulary:
            raise ValueError(
                "no vocabulary is set: call predictor.set_vocabulary('cat; dog, puppy; sky') "
                "(or a packaged name such as 'ade20k_150') first"
            )

    # ------------------------------------------------------------------ prompts
    @_locked
    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        *,
        boxes: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for point or box prompts in original-image pixels (SamPredictor.predict).

        Args:
            point_coords: float [N, 2] (x, y) points, one prompt each (or [2] for one point).
            point_labels: [N] labels, all 1 (positive); None means all positive. Other values
                raise ValueError: the model has no negative points.
            box: One XYXY box, [4] or [1, 4] (SAM's single box).
            mask_input: Unsupported; must be None.
            multimask_output: Points: True returns the M = 4 granularities, False the one with
                the highest predicted IoU. Boxes always give one mask.
            return_logits: Return float32 logits (threshold 0) instead of bool masks.
            boxes: float [N, 4] XYXY boxes, one prompt each (never squeezed).

        Returns:
            ``(masks [N, M, H0, W0], iou_predictions [N, M], low_res_logits [N, M, S/4, S/4])``
            as numpy; N is dropped for one point (``point_coords`` with one row) or ``box``.

        Raises:
            ValueError: no image set, malformed prompts, points and boxes together, negative
                labels, a mask prompt, or prompts outside the image; before any computation.
        """
        out = self.predict_with_labels(
            point_coords,
            point_labels,
            box,
            mask_input,
            multimask_output,
            return_logits,
            boxes=boxes,
            with_labels=False,
        )
        return out.masks, out.iou_predictions, out.low_res_logits

    @_locked
    def predict_with_labels(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        *,
        boxes: np.ndarray | None = None,
        with_labels: bool = True,
        squeeze: bool = True,
    ) -> PromptPrediction:
        """:meth:`predict` plus stability scores and, when a vocabulary is set (and
        ``with_labels``), the class label and probability of every mask.

        Args:
            squeeze: Drop the leading N for a single prompt as :meth:`predict` does; False
                always returns [N, M, ...] arrays.

        Returns:
            A :class:`PromptPrediction` of numpy arrays.
        """
        state = self._require_image()
        prompt_type, prompts, single = sam_prompt_arrays(point_coords, point_labels, box, boxes)
        reject_mask_input(mask_input)
        check_prompts_inside(
            self.original_size,
            points=prompts if prompt_type == "point" else None,
            boxes=prompts if prompt_type == "box" else None,
        )
        if prompt_type == "point":
            input_prompts = self.transform.apply_coords(prompts, self.original_size)
        else:
            input_prompts = self.transform.apply_boxes(prompts, self.original_size)
        outputs = self._predict(
            state,
            prompt_type,
            torch.as_tensor(input_prompts, device=self.device),
            multimask_output=multimask_output,
            return_logits=return_logits,
            with_labels=with_labels and self.has_vocabulary,
        )
        arrays = {k: (v.cpu().numpy() if torch.is_tensor(v) else v) for k, v in outputs.items()}
        if single and squeeze:
            arrays = {k: (v[0] if isinstance(v, np.ndarray) else v) for k, v in arrays.items()}
        return PromptPrediction(
            masks=arrays["masks"],
            iou_predictions=arrays["iou_predictions"],
            low_res_logits=arrays["low_res_logits"],
            stability_scores=arrays["stability_scores"],
            labels=arrays.get("labels"),
            scores=arrays.get("scores"),
            class_names=self.class_names if "labels" in arrays else [],
        )

    @_locked
    def predict_torch(
        self,
        point_coords: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`predict` on tensors already in the input frame (SamPredictor.predict_torch).

        Map original-image prompts with ``predictor.transform.apply_coords_torch`` /
        ``apply_boxes_torch`` first.

        Args:
            point_coords: float [N, 2] or [N, 1, 2] (x, y) input-frame points, one prompt each.
            point_labels: [N] or [N, 1], all 1; or None.
            boxes: float [N, 4] or [N, 1, 4] XYXY input-frame boxes, one prompt each.
            mask_input: Unsupported; must be None.
            multimask_output, return_logits: As in :meth:`predict`.

        Returns:
            ``(masks [N, M, H0, W0] bool (or float logits), iou_predictions [N, M],
            low_res_logits [N, M, S/4, S/4])`` on the model's device; never squeezed.
        """
        state = self._require_image()
        reject_mask_input(mask_input)
        if (point_coords is None) == (boxes is None):
            raise ValueError(
                "give either point_coords or boxes: each Uni-OVSeg prompt is one point or one box"
            )
        if point_coords is not None:
            prompt_type, width, prompts = "point", 2, point_coords
            check_point_labels(point_labels, prompt_rows(point_coords, 2, "point_coords"))
        else:
            prompt_type, width, prompts = "box", 4, boxes
        if not torch.is_tensor(prompts):
            raise ValueError(f"predict_torch expects tensors, got {type(prompts).__name__}")
        name = "point_coords" if prompt_type == "point" else "boxes"
        prompt_rows(prompts, width, name)
        prompts = prompts.reshape(-1, width).to(self.device, torch.float32)
        check_prompts_inside(
            self.input_size,
            points=prompts.cpu().numpy() if prompt_type == "point" else None,
            boxes=prompts.cpu().numpy() if prompt_type == "box" else None,
            frame="input frame (the image resized by predictor.transform)",
            tolerance=_FRAME_TOLERANCE,
        )
        out = self._predict(
            state,
            prompt_type,
            prompts,
            multimask_output=multimask_output,
            return_logits=return_logits,
            with_labels=False,
        )
        return out["masks"], out["iou_predictions"], out["low_res_logits"]

    @torch.no_grad()
    def _predict(
        self,
        state: _ImageSession,
        prompt_type: str,
        prompts: torch.Tensor,
        *,
        multimask_output: bool,
        return_logits: bool,
        with_labels: bool,
    ) -> dict[str, torch.Tensor]:
        """Validated input-frame prompts [N, 2|4] -> tensors [N, M, ...] (see PromptPrediction)."""
        lowres, iou_logits = self.model.predict_prompts(
            state.encoding, prompts, prompt_type=prompt_type
        )
        lowres, iou_probs = lowres.float(), iou_logits.float().sigmoid()
        if prompt_type == "point" and not multimask_output and lowres.shape[1] > 1:
            best = iou_probs.argmax(dim=1)
            rows = torch.arange(lowres.shape[0], device=lowres.device)
            lowres, iou_probs = lowres[rows, best][:, None], iou_probs[rows, best][:, None]
        num, num_outputs = lowres.shape[:2]
        masks, stability = self.model.masks_at_original_size(
            state.encoding,
            lowres.flatten(0, 1),
            return_logits=return_logits,
            prompt_boxes=prompts.repeat_interleave(num_outputs, dim=0)
            if prompt_type == "box"
            else None,
        )
        outputs = {
            "masks": masks.reshape(num, num_outputs, *self.original_size),
            "iou_predictions": iou_probs,
            "low_res_logits": lowres,
            "stability_scores": stability.reshape(num, num_outputs),
        }
        if with_labels:
            labels, scores = self._classify(state, lowres.flatten(0, 1))
            outputs["labels"] = labels.reshape(num, num_outputs)
            outputs["scores"] = scores.reshape(num, num_outputs)
        return outputs

    # ------------------------------------------------------------------ labels
    @_locked
    @torch.no_grad()
    def classify_masks(self, mask_logits_lowres: torch.Tensor) -> MaskLabels:
        """Open-vocabulary labels of masks of the current image.

        Args:
            mask_logits_lowres: [K, h, w] logits over the padded input frame, e.g.
                ``AutomaticMaskResult.mask_logits_lowres`` or ``low_res_logits`` flattened.

        Returns:
            :class:`MaskLabels` (numpy).
        """
        state = self._require_image()
        self._require_vocabulary()
        lowres = torch.as_tensor(mask_logits_lowres, device=self.device)
        labels, scores = self._classify(state, lowres)
        return MaskLabels(labels.cpu().numpy(), scores.cpu().numpy(), self.class_names)

    def _classify(self, state: _ImageSession, lowres: torch.Tensor):
        """[K, h, w] logits -> (labels long [K], scores float [K])."""
        if lowres.dim() != 3:
            raise ValueError(f"mask logits must be [K, h, w], got {tuple(lowres.shape)}")
        if lowres.shape[0] == 0:
            empty = torch.zeros(0, device=self.device)
            return empty.long(), empty
        with self.model.inference_precision():
            classification = self.model.classify_masks(state.encoding, lowres)
        scores, labels = classification.probs.max(dim=1)
        return labels, scores

    # ------------------------------------------------------------------ automatic
    @_locked
    @torch.no_grad()
    def generate_automatic_masks(
        self, engine: AutomaticMaskGenerationEngine | None = None
    ) -> AutomaticMaskResult:
        """Point-grid automatic masks of the current image (cached per engine settings).

        Args:
            engine: The grid, thresholds and NMS; None: the model's
                (``MODEL.UNIOVSEG.AUTOMATIC.*``).

        Returns:
            An :class:`AutomaticMaskResult` (tensors on the model's device).
        """
        return self._automatic_masks(self._require_image(), engine)

    def _automatic_masks(
        self, state: _ImageSession, engine: AutomaticMaskGenerationEngine | None
    ) -> AutomaticMaskResult:
        engine = engine if engine is not None else self.model.mask_generator
        key = (id(engine), tuple(sorted(vars(engine).items())))
        if state.automatic_cache is not None and state.automatic_cache[0] == key:
            return state.automatic_cache[1]
        result = self.model.automatic_masks(state.encoding, engine)
        state.automatic_cache = (key, result)
        return result

    def _open_vocab_output(self, engine, output: str):
        """One open-vocabulary output of the current image's automatic masks, or None when
        there is no mask."""
        state = self._require_image()
        self._require_vocabulary()
        result = self._automatic_masks(state, engine)
        if len(result) == 0:
            return None
        with self.model.inference_precision():
            return self.model.open_vocab_outputs(state.encoding, result, outputs=(output,))[output]

    @_locked
    @torch.no_grad()
    def predict_semantic(
        self, engine: AutomaticMaskGenerationEngine | None = None
    ) -> SemanticPrediction:
        """Semantic segmentation with the current vocabulary (Mask2Former's semantic inference
        over the automatic masks, with ``MODEL.UNIOVSEG.OPEN_VOCAB`` settings).

        Returns:
            :class:`SemanticPrediction`: ``labels`` int64 [H0, W0] class indices (-1 everywhere
            when no automatic mask was found) and ``class_names``.
        """
        labels = self._open_vocab_output(engine, "semantic_labels")
        if labels is None:
            labels = torch.full(self.original_size, UNLABELED, dtype=torch.long)
        return SemanticPrediction(labels.cpu().numpy(), self.class_names)

    @_locked
    @torch.no_grad()
    def predict_panoptic(
        self, engine: AutomaticMaskGenerationEngine | None = None
    ) -> PanopticPrediction:
        """Panoptic segmentation with the current vocabulary and thing classes (see
        :meth:`set_vocabulary`), Mask2Former's assembly with ``MODEL.UNIOVSEG.OPEN_VOCAB``
        thresholds.

        Returns:
            :class:`PanopticPrediction`: ``panoptic_seg`` int32 [H0, W0] (0 = no segment) and
            ``segments_info`` (``id``, ``category_id``, ``category``, ``isthing``, ``score``).
        """
        panoptic = self._open_vocab_output(engine, "panoptic_seg")
        if panoptic is None:
            return PanopticPrediction(np.zeros(self.original_size, dtype=np.int32), [])
        panoptic_seg, segments_info = panoptic
        names = self.class_names
        segments = [{**s, "category": names[s["category_id"]]} for s in segments_info]
        return PanopticPrediction(panoptic_seg.cpu().numpy().astype(np.int32), segments)

    # ------------------------------------------------------------------ concept prompts
    @_locked
    @torch.no_grad()
    def segment_concepts(
        self,
        concepts: str | Sequence[str],
        *,
        background: str | Sequence[str] | None = None,
        score_threshold: float | None = None,
        engine: AutomaticMaskGenerationEngine | None = None,
    ) -> ConceptPrediction:
        """Every instance of each phrase in the current image, or "none found".

        The image's automatic masks and their region embeddings are computed once per image
        (on the first query) and reused by every later query; each query then only embeds
        its phrases (the background's text embeddings are cached too). Each phrase is scored
        on its own against the background vocabulary and rejected below the calibrated
        threshold (:mod:`uniovseg.modeling.concept_segmentation`; ``MODEL.UNIOVSEG.CONCEPTS``).

        Example::

            predictor.set_image(image)
            out = predictor.segment_concepts("red car; dog")
            for concept in out:
                print(concept.phrase, concept.found, [i.score for i in concept.instances])
            dog_pixels = out.union_mask("dog")

        Args:
            concepts: ``"red car; dog"`` (``;`` between phrases, ``,`` between synonyms of one
                phrase) or a list of phrases.
            background: Replaces ``CONCEPTS.BACKGROUND_VOCABULARY`` for this query (a packaged
                name, a file, an inline list or a list of entries).
            score_threshold: Replaces ``CONCEPTS.SCORE_THRESH``; 0 returns every
                de-duplicated mask with its score (a ranking, e.g. for evaluation).
            engine: The automatic masks' grid, thresholds and NMS; None: the model's.

        Returns:
            A :class:`ConceptPrediction`: per phrase its instances (mask, box, score) at the
            original size, ``found`` False when it has none.

        Raises:
            ValueError: no image set, a model without open-vocabulary inference, an empty or
                malformed query; before any computation.
        """
        phrases = parse_concepts(concepts)
        state = self._require_image()
        open_vocab = self.model.open_vocab
        if open_vocab is None:
            raise ValueError("this model was built without open-vocabulary inference")
        segmenter = open_vocab.concepts
        background = segmenter.background if background is None else resolve_vocabulary(background)
        result = self._automatic_masks(state, engine)
        region_embeds = self._automatic_region_embeds(state, result)
        probs = segmenter.phrase_probs(
            region_embeds, phrases, open_vocab.text_classifier, background
        )
        found = segmenter.select(result, probs, score_threshold=score_threshold)
        masks = result.masks.cpu().numpy()
        boxes = result.boxes.float().cpu().numpy()
        answers = [
            ConceptResult(
                phrase=phrase,
                instances=[
                    ConceptInstance(masks[k], boxes[k], float(score), int(k))
                    for k, score in zip(
                        instances.mask_indices.tolist(), instances.scores.tolist(), strict=True
                    )
                ],
            )
            for phrase, instances in zip(phrases, found, strict=True)
        ]
        return ConceptPrediction(
            concepts=answers,
            image_size=self.original_size,
            score_threshold=(
                segmenter.score_threshold if score_threshold is None else float(score_threshold)
            ),
            background=list(background),
        )

    def _automatic_region_embeds(
        self, state: _ImageSession, result: AutomaticMaskResult
    ) -> torch.Tensor:
        """Region embeddings [K, D] of the image's automatic masks ``result`` (cached: the
        session's last result, by identity)."""
        if state.region_cache is not None and state.region_cache[0] is result:
            return state.region_cache[1]
        with self.model.inference_precision():
            embeds = self.model.mask_logit_embeddings(state.encoding, result.mask_logits_lowres)
        state.region_cache = (result, embeds)
        return embeds
