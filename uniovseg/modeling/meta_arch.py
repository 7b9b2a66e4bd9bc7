"""The Uni-OVSeg meta-architecture: preprocess -> frozen CLIP -> pixel decoder -> prompt decoder
-> losses (training) or post-processing (inference).

It follows detectron2's contract: ``model(list[dict]) -> dict of losses`` in training and
``list[dict]`` of per-image outputs at inference. The input dict keys depend on the mapper:

* training (``SA1BDatasetMapper``): ``image`` uint8 [3, S, S] RGB (already padded), ``gt_masks``,
  ``point_coords``, ``box_prompts``;
* stage-2 training (``CaptionDatasetMapper``, with ``MODEL.UNIOVSEG.ALIGNMENT.ENABLED``):
  ``image`` uint8 [3, S, S], ``image_size``, ``entities``: the mask-text alignment loss
  (:class:`~uniovseg.modeling.alignment.MaskTextAligner`); a batch may mix both kinds;
* promptable evaluation (``PromptableEvalMapper``): ``image`` uint8 [3, H, W] at its original
  size (the model preprocesses it as any test image), ``image_size`` (the valid region the
  ground truth was resized to), ``point_coords``, ``box_prompts``; the output is
  ``{"prompt_eval": {"point_masks", "point_iou", "box_masks"}}``;
* anything else (e.g. detectron2's ``DatasetMapper`` or a demo): ``image`` uint8 [3, H, W] at any
  size, optional ``height``/``width``; automatic mask generation from a point grid, output
  ``{"automatic_masks": AutomaticMaskResult, "instances": Instances}`` at (height, width), plus,
  when a vocabulary is set (``set_vocabulary`` / ``set_dataset_metadata``), ``sem_seg`` and/or
  ``panoptic_seg`` in detectron2's formats and ``instances.pred_classes``
  (:class:`~uniovseg.modeling.open_vocab_inference.OpenVocabInference`). One backbone pass serves
  mask generation and classification.

**The inference core.** Every caller (``forward``, the predictor and automatic mask generator of
:mod:`uniovseg.inference`, stage-2 mask generation and the benchmarks) runs the same steps of
this class, each once: :meth:`UniOVSeg.encode` (backbone, pixel decoder and the prompt
decoder's memory, into an :class:`~uniovseg.modeling.image_encoding.ImageEncoding`),
:meth:`UniOVSeg.decode_prompts` / :meth:`UniOVSeg.predict_prompts` (points or boxes -> masks),
:meth:`UniOVSeg.automatic_masks` (the point grid), :meth:`UniOVSeg.region_embeddings` and
:meth:`UniOVSeg.open_vocab_outputs` (classification and assembly). Each step runs as a named
stage (:mod:`uniovseg.modeling.inference_stages`: a ``torch.profiler.record_function`` scope
that the benchmarks time).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.structures import Boxes, Instances
from torch import nn

from uniovseg.modeling import region_embedding
from uniovseg.modeling.alignment import MaskTextAligner
from uniovseg.modeling.automatic_mask_engine import (
    AutomaticMaskGenerationEngine,
    AutomaticMaskResult,
)
from uniovseg.modeling.criterion import PromptMaskCriterion
from uniovseg.modeling.entity_embedding import EntityEmbedder
from uniovseg.modeling.feature_adapter import MultiScaleFeatureAdapter
from uniovseg.modeling.image_encoding import ImageEncoding
from uniovseg.modeling.image_frame import ImageFrame, inference_frame
from uniovseg.modeling.image_preprocessing import RELEASE_PAD_VALUE, resize_and_pad
from uniovseg.modeling.inference_stages import stage
from uniovseg.modeling.mask_decoder import MaskDecoderOutput
from uniovseg.modeling.mask_postprocessing import stability_score, suppress_outside_boxes
from uniovseg.modeling.open_vocab_inference import OpenVocabInference
from uniovseg.modeling.open_vocab_postprocessing import resize_mask_logits
from uniovseg.modeling.segmentation_head import SegmentationHead
from uniovseg.modeling.text_classifier import RegionClassification

__all__ = ["UniOVSeg", "automatic_result_to_instances"]

logger = logging.getLogger(__name__)

_PROMPT_TYPES = ("point", "box")
# MODEL.UNIOVSEG.TEST.AUTOCAST values -> torch.autocast dtypes ("": float32, no autocast).
_AUTOCAST_DTYPES = {"": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# Masks brought to the original size at a time (bounds float copies to this x H0 x W0).
_RESIZE_CHUNK = 16


def pad_prompt_rows(rows: list[torch.Tensor], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stacks per-image prompt tensors of different lengths.

    Args:
        rows: B tensors [P_b, width].
        width: 2 for points, 4 for boxes.

    Returns:
        (prompts [B, P_max, width] with zero padding, valid bool [B, P_max]).
    """
    num = max((len(r) for r in rows), default=0)
    device = rows[0].device if rows else torch.device("cpu")
    prompts = torch.zeros(len(rows), num, width, device=device)
    valid = torch.zeros(len(rows), num, dtype=torch.bool, device=device)
    for b, r in enumerate(rows):
        prompts[b, : len(r)] = r
        valid[b, : len(r)] = True
    return prompts, valid


@META_ARCH_REGISTRY.register()
class UniOVSeg(nn.Module):
    """Promptable multi-granularity mask generation on a frozen CLIP (stage 1 of Uni-OVSeg) and,
    with a feature adapter, mask-text alignment from captions (stage 2)."""

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        sem_seg_head: SegmentationHead,
        criterion: PromptMaskCriterion,
        mask_generator: AutomaticMaskGenerationEngine,
        pixel_mean: tuple[float, float, float],
        pixel_std: tuple[float, float, float],
        train_prompt_types: tuple[str, ...] = _PROMPT_TYPES,
        test_input_size: int = 1024,
        test_resize_mode: str = "longest_side",
        test_min_size: int = 800,
        test_max_size: int = 1333,
        pad_value: float = RELEASE_PAD_VALUE,
        prompts_per_chunk: int = 100,
        box_masks_inside_box: bool = False,
        feature_adapter: MultiScaleFeatureAdapter | None = None,
        aligner: MaskTextAligner | None = None,
        alignment_mask_generator: AutomaticMaskGenerationEngine | None = None,
        alignment_max_masks: int = 100,
        ensemble_sizes: Sequence[int] = (),
        entity_embedder: EntityEmbedder | None = None,
        train_mask_branch: bool = True,
        open_vocab: OpenVocabInference | None = None,
        inference_autocast: str = "",
    ) -> None:
        """
        Args:
            backbone: The frozen CLIP backbone (attribute name gives ``backbone.clip_model.*``).
            sem_seg_head: Pixel decoder + prompt decoder (``sem_seg_head.*`` in checkpoints).
            criterion: Stage-1 losses.
            mask_generator: Point-grid automatic mask generation engine.
            pixel_mean, pixel_std: Per-channel RGB statistics in 0-255 units (CLIP's).
            train_prompt_types: Prompt types trained on each batch ("point", "box").
            test_input_size: Side S of the square padded test input (never cropped).
            test_resize_mode: How test images are resized into it (``TEST.RESIZE_MODE``, see
                :func:`~uniovseg.modeling.image_encoding.inference_frame`): ``"longest_side"``
                (the release's geometry) or ``"shortest_edge"``.
            test_min_size, test_max_size: The ``"shortest_edge"`` sizes
                (``INPUT.MIN_SIZE_TEST``, ``INPUT.MAX_SIZE_TEST``).
            pad_value: Grey level (0-255) of the padding around test images, in pixel space
                before normalisation (``INPUT.UNIOVSEG.PAD_VALUE``, also the training mappers';
                the release: 128).
            prompts_per_chunk: Prompts decoded per call at inference (bounds memory only).
            box_masks_inside_box: A box prompt's returned masks are turned off outside its box
                (``TEST.BOX_MASKS_INSIDE_BOX``; not in the release: False). Low-resolution logits
                are returned as predicted.
            feature_adapter: Multi-scale LoRA adapter for region embeddings (stage 2); None is
                the baseline (raw CLIP mask pooling).
            aligner: Stage-2 loss on caption batches (needs ``feature_adapter`` and the three
                arguments below).
            alignment_mask_generator: Point-grid masks of caption images (stage 2).
            alignment_max_masks: At most this many of them per image (highest predicted IoU);
                0 = all.
            ensemble_sizes: Input sides of the multi-scale ensemble of the alignment cost
                (Eq. 7); empty = only the training input size.
            entity_embedder: Caption entity phrases -> text embeddings (the aligner's targets).
            train_mask_branch: False freezes the pixel and prompt decoders (stage 2 default).
            open_vocab: Classification of automatic masks with a vocabulary (semantic and
                panoptic outputs); None: class-agnostic masks only.
            inference_autocast: ``""`` (float32), ``"bf16"`` or ``"fp16"``: ``torch.autocast``
                around inference (see ``MODEL.UNIOVSEG.TEST.AUTOCAST``).
        """
        super().__init__()
        unknown = set(train_prompt_types) - set(_PROMPT_TYPES)
        if unknown or not train_prompt_types:
            raise ValueError(
                f"MODEL.UNIOVSEG.TRAIN_PROMPT_TYPES={list(train_prompt_types)}: use a non-empty "
                f"subset of {list(_PROMPT_TYPES)}"
            )
        divisibility = backbone.size_divisibility
        if test_input_size % divisibility:
            raise ValueError(
                f"MODEL.UNIOVSEG.TEST.INPUT_SIZE={test_input_size} must be a multiple of "
                f"{divisibility} (the backbone's stride)"
            )
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.criterion = criterion
        self.mask_generator = mask_generator
        self.train_prompt_types = tuple(train_prompt_types)
        self.test_input_size = int(test_input_size)
        self.test_resize = {
            "input_size": self.test_input_size,
            "resize_mode": test_resize_mode,
            "min_size": int(test_min_size),
            "max_size": int(test_max_size),
        }
        inference_frame((1, 1), **self.test_resize)  # validates the resize settings now
        if not 0.0 <= pad_value <= 255.0:
            raise ValueError(
                f"INPUT.UNIOVSEG.PAD_VALUE={pad_value} must be a grey level in [0, 255]"
            )
        self.pad_value = float(pad_value)
        # Said once at build: the test resolution decides what evaluation numbers mean (e.g.
        # Cityscapes runs at 512 x 1024 under "longest_side" 1024).
        logger.info("test images: %s", self.describe_test_resize())
        self.prompts_per_chunk = int(prompts_per_chunk)
        self.box_masks_inside_box = bool(box_masks_inside_box)
        if inference_autocast not in _AUTOCAST_DTYPES:
            raise ValueError(
                f"MODEL.UNIOVSEG.TEST.AUTOCAST={inference_autocast!r}: use one of "
                f"{sorted(_AUTOCAST_DTYPES)} ('' is float32)"
            )
        self.inference_autocast = inference_autocast
        if aligner is not None and (
            feature_adapter is None or alignment_mask_generator is None or entity_embedder is None
        ):
            raise ValueError(
                "mask-text alignment trains the feature adapter on point-grid masks and entity "
                "embeddings: pass feature_adapter, alignment_mask_generator and entity_embedder"
            )
        if alignment_max_masks < 0:
            raise ValueError(
                f"ALIGNMENT.MASKS.MAX_MASKS must be >= 0, got {alignment_max_masks} (0 keeps all)"
            )
        self.feature_adapter = feature_adapter
        self.aligner = aligner
        self.alignment_mask_generator = alignment_mask_generator
        self.alignment_max_masks = int(alignment_max_masks)
        self.ensemble_sizes = tuple(int(s) for s in ensemble_sizes)
        self.entity_embedder = entity_embedder
        self.train_mask_branch = bool(train_mask_branch)
        # A plain object, not a module: it holds no parameters (text embeddings are a cache).
        self.open_vocab = open_vocab
        if not self.train_mask_branch:
            self.sem_seg_head.requires_grad_(False)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg) -> dict:
        backbone = build_backbone(cfg)
        alignment = cfg.MODEL.UNIOVSEG.ALIGNMENT
        stage2 = {}
        if alignment.ENABLED:
            dense_channels = backbone.output_shape()["clip_vis_dense"].channels
            engine_args = AutomaticMaskGenerationEngine.from_config(cfg)
            engine_args.update(
                points_per_side=alignment.MASKS.POINTS_PER_SIDE,
                pred_iou_thresh=alignment.MASKS.PRED_IOU_THRESH,
                stability_score_thresh=alignment.MASKS.STABILITY_SCORE_THRESH,
                min_region_area=0,
            )
            stage2 = {
                "feature_adapter": MultiScaleFeatureAdapter(cfg, dense_channels),
                "aligner": MaskTextAligner(cfg),
                "alignment_mask_generator": AutomaticMaskGenerationEngine(**engine_args),
                "alignment_max_masks": alignment.MASKS.MAX_MASKS,
                "ensemble_sizes": tuple(alignment.ENSEMBLE_SIZES),
                # The classifier's templates: entity targets and class embeddings made alike.
                "entity_embedder": EntityEmbedder(
                    templates=cfg.MODEL.UNIOVSEG.OPEN_VOCAB.TEMPLATES,
                    cache_size=alignment.TEXT_CACHE_SIZE,
                ),
                "train_mask_branch": alignment.TRAIN_MASK_BRANCH,
            }
        min_size = cfg.INPUT.MIN_SIZE_TEST
        return {
            **stage2,
            "backbone": backbone,
            "sem_seg_head": SegmentationHead(cfg, backbone.output_shape()),
            "criterion": PromptMaskCriterion(cfg),
            "mask_generator": AutomaticMaskGenerationEngine(cfg),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "train_prompt_types": tuple(cfg.MODEL.UNIOVSEG.TRAIN_PROMPT_TYPES),
            "test_input_size": cfg.MODEL.UNIOVSEG.TEST.INPUT_SIZE,
            "test_resize_mode": cfg.MODEL.UNIOVSEG.TEST.RESIZE_MODE,
            "test_min_size": min_size if isinstance(min_size, int) else min_size[0],
            "test_max_size": cfg.INPUT.MAX_SIZE_TEST,
            "pad_value": cfg.INPUT.UNIOVSEG.PAD_VALUE,
            "prompts_per_chunk": cfg.MODEL.UNIOVSEG.TEST.PROMPTS_PER_CHUNK,
            "box_masks_inside_box": cfg.MODEL.UNIOVSEG.TEST.BOX_MASKS_INSIDE_BOX,
            "inference_autocast": cfg.MODEL.UNIOVSEG.TEST.AUTOCAST,
            "open_vocab": OpenVocabInference(cfg, text_encoder=backbone),
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def set_vocabulary(self, vocabulary, *, thing_classes=()) -> None:
        """Classes for open-vocabulary output: a packaged name (e.g. "ade20k_150"), a file, an
        inline "cat; dog, puppy; sky" string or a list; ``thing_classes`` are the indices that
        panoptic output keeps as separate instances."""
        self._require_open_vocab().set_vocabulary(vocabulary, thing_classes=thing_classes)

    def set_dataset_metadata(self, metadata) -> None:
        """Vocabulary, thing classes and needed outputs from a dataset's metadata."""
        self._require_open_vocab().set_metadata(metadata)

    def _require_open_vocab(self) -> OpenVocabInference:
        if self.open_vocab is None:
            raise ValueError("this model was built without open-vocabulary inference")
        return self.open_vocab

    @property
    def has_vocabulary(self) -> bool:
        """Whether open-vocabulary classification is possible (a vocabulary is set)."""
        return self.open_vocab is not None and self.open_vocab.text_classifier.num_classes > 0

    def num_mask_outputs(self, prompt_type: str) -> int:
        """Masks per prompt: the multi-mask tokens for points, the single-mask token for boxes."""
        if prompt_type == "point":
            return self.sem_seg_head.predictor.prompt_encoder.num_multimask_outputs
        return 1

    # ------------------------------------------------------------------ the inference core
    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """uint8/float [3, H, W] RGB in 0-255 -> normalised float [3, H, W] on the model's
        device."""
        return (image.to(self.device, torch.float32) - self.pixel_mean) / self.pixel_std

    def describe_test_resize(self) -> str:
        """The configured test geometry in words, e.g. for logs."""
        r = self.test_resize
        size = f"{r['input_size']} x {r['input_size']}"
        if r["resize_mode"] == "longest_side":
            resize = f"longest side resized to {r['input_size']}"
        else:
            resize = f"shortest side resized to {r['min_size']} (longest <= {r['max_size']})"
        return (
            f"{resize} (uint8, PIL bilinear), padded bottom/right to {size} with grey "
            f"{self.pad_value:g} before normalisation"
        )

    def inference_frame(self, original_size: tuple[int, int]) -> ImageFrame:
        """The frame of an image of ``original_size`` under the configured test resize."""
        return inference_frame(original_size, **self.test_resize)

    def preprocess_image(
        self, image: torch.Tensor, original_size: tuple[int, int] | None = None
    ) -> tuple[torch.Tensor, ImageFrame]:
        """The test preprocessing, the one path of every inference entry point: uint8 [3, H, W]
        RGB -> (normalised padded [1, 3, S, S] on the model's device, frame).

        The release's steps, in its order (:mod:`uniovseg.modeling.image_preprocessing`):
        resize the uint8 image as detectron2's ``ResizeTransform`` (PIL bilinear), pad it
        bottom/right with ``pad_value`` grey in pixel space, then normalise.

        Args:
            image: The image, any size, uint8.
            original_size: (H0, W0) that outputs should have; default (H, W) of ``image``.
        """
        with stage("preprocess"):
            frame = self.inference_frame(tuple(image.shape[-2:]))
            padded = resize_and_pad(image, frame, pad_value=self.pad_value)
            if original_size is not None:
                frame = frame._replace(original_size=(int(original_size[0]), int(original_size[1])))
            return self.normalize(padded)[None], frame

    def encode(self, images: torch.Tensor, frames: Sequence[ImageFrame]) -> ImageEncoding:
        """Normalised padded [B, 3, S, S] -> the image-dependent computation, once: dense CLIP
        map, pixel-decoder features and the prompt decoder's memory (differentiable; callers
        choose ``no_grad`` and precision)."""
        if len(frames) != images.shape[0]:
            raise ValueError(f"{len(frames)} frames for {images.shape[0]} images")
        with stage("backbone"):
            features = self.backbone(images)
        with stage("pixel_decoder"):
            pixel_features = self.sem_seg_head.forward_features(features)
        with stage("mask_decoder"):
            decoder_memory = self.sem_seg_head.prepare_prompt_memory(pixel_features)
        return ImageEncoding(
            clip_dense=features["clip_vis_dense"],
            pixel_features=pixel_features,
            decoder_memory=decoder_memory,
            frames=tuple(frames),
        )

    @torch.no_grad()
    def encode_image(
        self, image: torch.Tensor, original_size: tuple[int, int] | None = None
    ) -> ImageEncoding:
        """Test resize and :meth:`encode` of one uint8 [3, H, W] RGB image, in the inference
        precision."""
        images, frame = self.preprocess_image(image, original_size)
        with self.inference_precision():
            return self.encode(images, [frame])

    def decode_prompts(
        self,
        encoding: ImageEncoding,
        prompts: torch.Tensor,
        *,
        prompt_type: str,
        prompt_valid: torch.Tensor | None = None,
        return_aux: bool = False,
    ) -> MaskDecoderOutput:
        """Points [B, P, 2] or boxes [B, P, 4] (padded-frame pixels) -> MaskDecoderOutput:
        ``mask_logits`` [B, P, M, S/4, S/4] over the padded frame, ``iou_logits`` [B, P, M]."""
        input_size = encoding.padded_size
        with stage("mask_decoder"):
            if prompt_type == "point":
                prompt_encoder = self.sem_seg_head.predictor.prompt_encoder
                prompts = prompt_encoder.points_to_boxes(prompts, input_size)
            return self.sem_seg_head.forward_prompts(
                encoding.decoder_memory,
                prompts,
                prompt_type=prompt_type,
                image_size=input_size,
                prompt_valid=prompt_valid,
                return_aux=return_aux,
            )

    @torch.no_grad()
    def predict_prompts(
        self, encoding: ImageEncoding, prompts: torch.Tensor, *, prompt_type: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One image's prompts [N, 2|4] (padded-frame pixels) -> (mask logits [N, M, S/4, S/4],
        IoU logits [N, M]), decoded ``prompts_per_chunk`` at a time (memory bound only) in the
        inference precision; N may be 0."""
        logits, ious = [], []
        for start in range(0, prompts.shape[0], self.prompts_per_chunk):
            with self.inference_precision():
                out = self.decode_prompts(
                    encoding, prompts[start : start + self.prompts_per_chunk][None],
                    prompt_type=prompt_type,
                )  # fmt: skip
            logits.append(out.mask_logits[0])
            ious.append(out.iou_logits[0])
        if logits:
            return torch.cat(logits), torch.cat(ious)
        num_outputs = self.num_mask_outputs(prompt_type)
        lowres_size = encoding.decoder_memory.mask_features.shape[-2:]
        empty = torch.zeros((0, num_outputs, *lowres_size), device=self.device)
        return empty, torch.zeros((0, num_outputs), device=self.device)

    @torch.no_grad()
    def automatic_masks(
        self,
        encoding: ImageEncoding,
        engine: AutomaticMaskGenerationEngine | None = None,
        *,
        output_size: tuple[int, int] | None = None,
        return_mask_probs: bool = False,
    ) -> AutomaticMaskResult:
        """The point grid of one image through the prompt decoder, filtered and de-duplicated.

        Args:
            encoding: A single-image encoding.
            engine: Grid, thresholds and NMS; None: the model's (``MODEL.UNIOVSEG.AUTOMATIC``).
            output_size: Size of the returned masks; default the frame's original size.
            return_mask_probs: Also return the kept masks' probabilities at that size.
        """
        engine = engine if engine is not None else self.mask_generator
        frame = encoding.frame

        def predict(point_coords: torch.Tensor):
            with self.inference_precision():
                out = self.decode_prompts(encoding, point_coords, prompt_type="point")
            return out.mask_logits, out.iou_logits

        with stage("mask_postprocess"):
            if output_size is not None:
                frame = frame._replace(original_size=tuple(output_size))
            return engine.generate(
                predict, frame, device=self.device, return_mask_probs=return_mask_probs
            )

    @torch.no_grad()
    def masks_at_original_size(
        self,
        encoding: ImageEncoding,
        mask_logits_lowres: torch.Tensor,
        *,
        return_logits: bool = False,
        prompt_boxes: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One image's low-res mask logits [K, h, w] over its padded frame -> (masks
        [K, H0, W0] bool, or float logits with ``return_logits``, and their stability scores
        [K] with the automatic engine's band) at the original size. ``prompt_boxes`` [K, 4]
        (padded-frame pixels): the box prompt of each mask, applied when the model has
        ``box_masks_inside_box``."""
        frame = encoding.frame
        if prompt_boxes is not None and self.box_masks_inside_box:
            (height, width), (valid_h, valid_w) = frame.original_size, frame.valid_size
            scale = prompt_boxes.new_tensor([width / valid_w, height / valid_h] * 2)
            original_boxes = prompt_boxes.float() * scale
        else:
            original_boxes = None
        engine = self.mask_generator
        num = mask_logits_lowres.shape[0]
        dtype = torch.float32 if return_logits else torch.bool
        masks = torch.zeros((num, *frame.original_size), dtype=dtype, device=self.device)
        stability = torch.zeros(num, device=self.device)
        with stage("mask_resize"):
            for start in range(0, num, _RESIZE_CHUNK):
                logits = resize_mask_logits(
                    mask_logits_lowres[start : start + _RESIZE_CHUNK],
                    valid_size=frame.valid_size,
                    output_size=frame.original_size,
                    padded_size=frame.padded_size,
                )
                if original_boxes is not None:
                    boxes = original_boxes[start : start + _RESIZE_CHUNK]
                    logits = suppress_outside_boxes(logits, boxes)
                stability[start : start + _RESIZE_CHUNK] = stability_score(
                    logits, engine.stability_score_offset, engine.stability_score_center
                )
                masks[start : start + _RESIZE_CHUNK] = logits if return_logits else logits > 0
        return masks, stability

    def region_embeddings(
        self, encoding: ImageEncoding, masks: torch.Tensor, *, use_adapter: bool = True
    ) -> torch.Tensor:
        """Normalised CLIP-space embeddings of one image's masks, for open-vocabulary
        classification: ``r'_i`` (paper App. A) when the model has a feature adapter, else the
        baseline ``r_i`` (Eq. 5, raw CLIP mask pooling).

        Args:
            encoding: A single-image encoding.
            masks: [K, H, W] soft (or 0/1) masks in [0, 1] over its padded frame, any
                resolution (e.g. ``AutomaticMaskResult.mask_logits_lowres.sigmoid()``).
            use_adapter: False gives the baseline even when an adapter exists.

        Returns:
            [K, D] L2-normalised region embeddings.
        """
        adapter = self.feature_adapter if use_adapter else None
        clip_dense = encoding.clip_dense
        with stage("region_embedding"):
            return region_embedding.embed_regions(
                self.backbone,
                clip_dense,
                masks[None].to(clip_dense.dtype),
                adapter=adapter,
                adapter_features=(
                    adapter.select_features(encoding.pixel_features)
                    if adapter is not None
                    else None
                ),
            )[0]

    @torch.no_grad()
    def mask_logit_embeddings(
        self, encoding: ImageEncoding, mask_logits_lowres: torch.Tensor
    ) -> torch.Tensor:
        """:meth:`region_embeddings` [K, D] of masks given as logits [K, h, w] over the padded
        frame (their probabilities pool the CLIP features)."""
        return self.region_embeddings(encoding, mask_logits_lowres.float().sigmoid())

    def classify_masks(
        self, encoding: ImageEncoding, mask_logits_lowres: torch.Tensor
    ) -> RegionClassification:
        """Open-vocabulary class probabilities of one image's masks.

        Args:
            encoding: A single-image encoding.
            mask_logits_lowres: [K, h, w] mask logits over its padded frame.

        Returns:
            A :class:`~uniovseg.modeling.text_classifier.RegionClassification` ([K, C], float32).
        """
        region_embeds = self.mask_logit_embeddings(encoding, mask_logits_lowres)
        # Classification in float32 whatever the inference precision: class scores are
        # compared across thousands of pixels and masks.
        with torch.autocast(device_type=self.device.type, enabled=False):
            with stage("classification"):
                return self._require_open_vocab().text_classifier.predict(region_embeds.float())

    @torch.no_grad()
    def open_vocab_outputs(
        self,
        encoding: ImageEncoding,
        result: AutomaticMaskResult,
        outputs: Sequence[str] | None = None,
    ) -> dict:
        """Classification of one image's automatic masks and their assembly at the original
        size: the outputs of :meth:`OpenVocabInference.__call__` (``mask_class_probs``,
        ``sem_seg``, ``semantic_labels``, ``panoptic_seg``; ``outputs`` picks them, default
        the configured ones)."""
        classification = self.classify_masks(encoding, result.mask_logits_lowres)
        with torch.autocast(device_type=self.device.type, enabled=False):
            return self.open_vocab(result, classification, frame=encoding.frame, outputs=outputs)

    # ------------------------------------------------------------------ training
    def forward(self, batched_inputs: list[dict]):
        if self.training:
            return self.forward_train(batched_inputs)
        return self.inference(batched_inputs)

    def forward_train(self, batched_inputs: list[dict]) -> dict[str, torch.Tensor]:
        """Training examples -> dict of weighted losses (sum them): mask losses for image-mask
        examples (``gt_masks``), the alignment loss for caption examples (``entities``)."""
        caption_inputs = [x for x in batched_inputs if "entities" in x]
        mask_inputs = [x for x in batched_inputs if "entities" not in x]
        losses = {}
        if mask_inputs:
            losses.update(self.mask_losses(mask_inputs))
        if caption_inputs:
            losses.update(self.alignment_losses(caption_inputs))
        return losses

    def _training_inputs(self, batched_inputs: list[dict]) -> tuple[torch.Tensor, list]:
        """Padded training images (the mapper resized them) -> (normalised [B, 3, S, S], their
        frames); the valid region is ``image_size`` when the mapper gives it."""
        images = torch.stack([self.normalize(x["image"]) for x in batched_inputs])
        padded = (int(images.shape[-2]), int(images.shape[-1]))
        frames = []
        for x in batched_inputs:
            valid = tuple(int(v) for v in x.get("image_size", padded))
            frames.append(ImageFrame(valid, valid, padded))
        return images, frames

    def mask_losses(self, batched_inputs: list[dict]) -> dict[str, torch.Tensor]:
        """SA1BDatasetMapper outputs -> stage-1 losses (promptable mask generation)."""
        if not self.train_mask_branch:
            raise ValueError(
                "got image-mask training examples but the mask branch is frozen: set "
                "MODEL.UNIOVSEG.ALIGNMENT.TRAIN_MASK_BRANCH True to continue the mask losses"
            )
        targets = [
            {
                "gt_masks": x["gt_masks"].to(self.device),
                "point_coords": x["point_coords"].to(self.device, torch.float32),
                "box_prompts": x["box_prompts"].to(self.device, torch.float32).reshape(-1, 4),
            }
            for x in batched_inputs
        ]
        encoding = self.encode(*self._training_inputs(batched_inputs))
        outputs = {}
        for prompt_type, key, width in [("point", "point_coords", 2), ("box", "box_prompts", 4)]:
            if prompt_type not in self.train_prompt_types:
                continue
            prompts, valid = pad_prompt_rows([t[key] for t in targets], width)
            if prompts.shape[1] == 0:
                continue  # no prompt of this type in the batch (e.g. images without masks)
            outputs[prompt_type] = self.decode_prompts(
                encoding, prompts, prompt_type=prompt_type, prompt_valid=valid, return_aux=True
            )
        losses = self.criterion(outputs, targets)
        if not losses:
            # Nothing to supervise in this batch: a zero that still reaches every trainable
            # parameter keeps DDP's gradient all-reduce in step across processes.
            zero = sum(p.sum() * 0.0 for p in self.sem_seg_head.parameters())
            losses = {"loss_mask_bce_point": zero}
        return losses

    def alignment_losses(self, batched_inputs: list[dict]) -> dict[str, torch.Tensor]:
        """CaptionDatasetMapper outputs -> ``{"loss_align"}`` (paper Eq. 8).

        The model computes what the criterion needs (Mask2Former's ``SetCriterion`` shape):
        each image's point-grid masks, their region embeddings at every ensemble input size
        (Eq. 7, frozen) and their adapted embeddings ``r'_i`` (trained), and the entities'
        text embeddings; :class:`~uniovseg.modeling.alignment.MaskTextAligner` matches and
        returns the loss.
        """
        if self.aligner is None:
            raise ValueError(
                "got caption training examples but mask-text alignment is off: set "
                "MODEL.UNIOVSEG.ALIGNMENT.ENABLED True (see configs/stage2/)"
            )
        # Masks and adapter inputs: the alignment loss trains the adapter only.
        with torch.no_grad():
            images, frames = self._training_inputs(batched_inputs)
            encoding = self.encode(images, frames)
            masks = [self._alignment_masks(encoding.select(b)) for b in range(len(encoding))]
        entities = [list(x["entities"]) for x in batched_inputs]
        flat = [e for ents in entities for e in ents]
        phrase_embeds = dict(zip(flat, self.entity_embedder(self.backbone, flat), strict=True))
        input_size = encoding.padded_size[-1]
        sizes = self.ensemble_sizes or (input_size,)
        has_work = any(len(m) and len(e) for m, e in zip(masks, entities, strict=True))
        dense_maps = (
            region_embedding.clip_dense_at_sizes(
                self.backbone, images, sizes, known={input_size: encoding.clip_dense}
            )
            if has_work
            else []
        )
        outputs, targets = [], []
        for b, (masks_b, entities_b) in enumerate(zip(masks, entities, strict=True)):
            output = {"num_masks": len(masks_b)}
            if len(masks_b) and len(entities_b):
                with torch.no_grad():
                    output["ensemble_region_embeds"] = torch.cat(
                        [
                            region_embedding.embed_regions(
                                self.backbone, dense[b : b + 1], masks_b[None]
                            )
                            for dense in dense_maps
                        ]
                    )  # [S, K, D]
                output["region_embeds"] = self.region_embeddings(encoding.select(b), masks_b)
            outputs.append(output)
            targets.append(
                {
                    "entities": entities_b,
                    "entity_embeds": (
                        torch.stack([phrase_embeds[e] for e in entities_b])
                        if entities_b
                        else torch.zeros(0, self.backbone.embed_dim, device=self.device)
                    ),
                }
            )
        losses = self.aligner(outputs, targets, logit_scale=self.backbone.logit_scale)
        if not losses:
            # No pair in the batch: an exact zero that still reaches every adapter parameter,
            # so DDP's gradient all-reduce stays in step across processes.
            zero = sum(p.sum() * 0.0 for p in self.feature_adapter.parameters())
            losses = {name: zero for name in self.aligner.loss_names}
        return losses

    @torch.no_grad()
    def _alignment_masks(self, encoding: ImageEncoding) -> torch.Tensor:
        """One caption image's point-grid masks, float {0, 1} [K, h, w] at the decoder's mask
        stride over the padded frame (K <= ``alignment_max_masks``, may be 0)."""
        frame = encoding.frame
        stride = frame.padded_size[0] / encoding.pixel_features.mask_features.shape[-2]
        # Only the low-res logits are used: ask for masks at that resolution so the engine
        # does not build full-size copies.
        lowres_valid = (
            max(1, round(frame.valid_size[0] / stride)),
            max(1, round(frame.valid_size[1] / stride)),
        )
        result = self.automatic_masks(
            encoding, self.alignment_mask_generator, output_size=lowres_valid
        )
        logits = result.mask_logits_lowres
        if self.alignment_max_masks:
            logits = logits[: self.alignment_max_masks]  # sorted by decreasing predicted IoU
        return (logits > 0).to(encoding.pixel_features.mask_features.dtype)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def inference(self, batched_inputs: list[dict]) -> list[dict]:
        results = []
        with self.inference_precision():
            for x in batched_inputs:
                if "point_coords" in x or "box_prompts" in x:
                    results.append({"prompt_eval": self.predict_prompts_for_evaluation(x)})
                else:
                    results.append(self.segment_image(x))
        return results

    def inference_precision(self) -> AbstractContextManager:
        """``torch.autocast`` in the configured inference dtype, or a no-op for float32.

        Matrix products and convolutions then run in bf16/fp16; the post-processing casts mask
        and IoU logits to float32 before thresholds, stability scores and NMS.
        """
        if not self.inference_autocast:
            return nullcontext()
        dtype = _AUTOCAST_DTYPES[self.inference_autocast]
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def segment_image(self, x: dict) -> dict:
        """One image dict -> {"automatic_masks": AutomaticMaskResult, "instances": Instances},
        plus the open-vocabulary outputs when a vocabulary is set."""
        image = x["image"]
        original_size = (
            int(x.get("height", image.shape[-2])),
            int(x.get("width", image.shape[-1])),
        )
        encoding = self.encode_image(image, original_size)
        classify = self.open_vocab is not None and self.open_vocab.enabled
        # Semantic/panoptic assembly needs the soft masks at the original size: the generator
        # has them in hand when it thresholds the kept masks.
        result = self.automatic_masks(encoding, return_mask_probs=classify)
        output = {"automatic_masks": result, "instances": automatic_result_to_instances(result)}
        if classify:
            output.update(self.open_vocab_outputs(encoding, result))
            class_probs = output["mask_class_probs"]
            output["instances"].pred_classes = class_probs.argmax(dim=1)
            output["instances"].class_scores = class_probs.max(dim=1).values
        return output

    def predict_prompts_for_evaluation(self, x: dict) -> dict[str, torch.Tensor]:
        """PromptableEvalMapper output -> masks in the resized valid frame.

        Returns:
            ``point_masks`` bool [G, M, h, w], ``point_iou`` float [G, M] (sigmoid),
            ``box_masks`` bool [G, 1, h, w], where (h, w) = ``x["image_size"]``.
        """
        image = x["image"]
        original = (int(x.get("height", image.shape[-2])), int(x.get("width", image.shape[-1])))
        # The predictor's preprocessing, not a second one: the mapper only resizes the
        # ground truth, into the frame that this call computes again.
        images, frame = self.preprocess_image(image, original)
        if frame.valid_size != tuple(x["image_size"]):
            raise ValueError(
                f"the mapper resized the ground truth to {tuple(x['image_size'])} but the model "
                f"resizes this image to {frame.valid_size}: build the mapper and the model from "
                "the same config (MODEL.UNIOVSEG.TEST.*, INPUT.MIN/MAX_SIZE_TEST)"
            )
        padded = frame.padded_size
        valid_h, valid_w = frame.valid_size
        encoding = self.encode(images, [frame])  # inference() holds the inference precision
        outputs = {}
        for prompt_type, key in [("point", "point_coords"), ("box", "box_prompts")]:
            prompts = x[key].to(self.device, torch.float32)
            mask_logits, iou_logits = self.predict_prompts(
                encoding, prompts, prompt_type=prompt_type
            )
            masks = []
            for start in range(0, len(prompts), self.prompts_per_chunk):
                chunk = slice(start, start + self.prompts_per_chunk)
                logits = F.interpolate(
                    mask_logits[chunk], size=padded, mode="bilinear", align_corners=False
                )[..., :valid_h, :valid_w]
                if prompt_type == "box" and self.box_masks_inside_box:
                    # The valid frame is the padded frame's top-left corner: same pixels.
                    logits = suppress_outside_boxes(logits, prompts[chunk])
                masks.append(logits > 0)
            num_outputs = self.num_mask_outputs(prompt_type)
            outputs[f"{prompt_type}_masks"] = (
                torch.cat(masks)
                if masks
                else torch.zeros(0, num_outputs, valid_h, valid_w, dtype=torch.bool)
            )
            outputs[f"{prompt_type}_iou"] = iou_logits.sigmoid()
        return {
            "point_masks": outputs["point_masks"],
            "point_iou": outputs["point_iou"],
            "box_masks": outputs["box_masks"],
        }


def automatic_result_to_instances(result: AutomaticMaskResult) -> Instances:
    """AutomaticMaskResult -> detectron2 Instances (pred_masks, pred_boxes, scores) for
    visualisation and detectron2 tooling."""
    instances = Instances(result.original_size)
    instances.pred_masks = result.masks
    instances.pred_boxes = Boxes(result.boxes)
    instances.scores = result.iou_scores
    return instances
