"""The Uni-OVSeg meta-architecture: preprocess -> frozen CLIP -> pixel decoder -> prompt decoder
-> losses (training) or post-processing (inference).

It follows detectron2's contract: ``model(list[dict]) -> dict of losses`` in training and
``list[dict]`` of per-image outputs at inference. The input dict keys depend on the mapper:

* training (``SA1BDatasetMapper``): ``image`` uint8 [3, S, S] RGB (already padded), ``gt_masks``,
  ``point_coords``, ``box_prompts``;
* stage-2 training (``CaptionDatasetMapper``, with ``MODEL.UNIOVSEG.ALIGNMENT.ENABLED``):
  ``image`` uint8 [3, S, S], ``image_size``, ``entities``: the mask-text alignment loss
  (:class:`~uniovseg.modeling.alignment.MaskTextAligner`); a batch may mix both kinds;
* promptable evaluation (``PromptableEvalMapper``): the same geometry plus ``image_size``;
  the output is ``{"prompt_eval": {"point_masks", "point_iou", "box_masks"}}``;
* anything else (e.g. detectron2's ``DatasetMapper`` or a demo): ``image`` uint8 [3, H, W] at any
  size, optional ``height``/``width``; automatic mask generation from a point grid, output
  ``{"automatic_masks": AutomaticMaskResult, "instances": Instances}`` at (height, width), plus,
  when a vocabulary is set (``set_vocabulary`` / ``set_dataset_metadata``), ``sem_seg`` and/or
  ``panoptic_seg`` in detectron2's formats and ``instances.pred_classes``
  (:class:`~uniovseg.modeling.open_vocab_inference.OpenVocabInference`). One backbone pass serves
  mask generation and classification.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.structures import Boxes, Instances
from torch import nn

# A module import, not `from ... import Class`: the engine imports uniovseg.modeling.* helpers,
# and uniovseg.modeling's __init__ imports this file, so the engine may be half-initialised here.
from uniovseg.inference import automatic_mask_generator as amg
from uniovseg.modeling import region_embedding
from uniovseg.modeling.alignment import MaskTextAligner
from uniovseg.modeling.criterion import PromptMaskCriterion
from uniovseg.modeling.feature_adapter import MultiScaleFeatureAdapter
from uniovseg.modeling.mask_decoder import DecoderMemory
from uniovseg.modeling.open_vocab_inference import OpenVocabInference
from uniovseg.modeling.pixel_decoder import PixelDecoderOutput
from uniovseg.modeling.segmentation_head import SegmentationHead

__all__ = ["UniOVSeg"]

_PROMPT_TYPES = ("point", "box")
# MODEL.UNIOVSEG.TEST.AUTOCAST values -> torch.autocast dtypes ("": float32, no autocast).
_AUTOCAST_DTYPES = {"": None, "bf16": torch.bfloat16, "fp16": torch.float16}


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
        mask_generator: amg.AutomaticMaskGenerationEngine,
        pixel_mean: tuple[float, float, float],
        pixel_std: tuple[float, float, float],
        train_prompt_types: tuple[str, ...] = _PROMPT_TYPES,
        test_input_size: int = 1024,
        prompts_per_chunk: int = 100,
        feature_adapter: MultiScaleFeatureAdapter | None = None,
        aligner: MaskTextAligner | None = None,
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
            test_input_size: Side S of the square padded test input; the longest image side is
                resized to S (the release's geometry: never cropped).
            prompts_per_chunk: Prompts decoded per call at inference (bounds memory only).
            feature_adapter: Multi-scale LoRA adapter for region embeddings (stage 2); None is
                the baseline (raw CLIP mask pooling).
            aligner: Stage-2 loss on caption batches (needs ``feature_adapter``).
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
        self.prompts_per_chunk = int(prompts_per_chunk)
        if inference_autocast not in _AUTOCAST_DTYPES:
            raise ValueError(
                f"MODEL.UNIOVSEG.TEST.AUTOCAST={inference_autocast!r}: use one of "
                f"{sorted(_AUTOCAST_DTYPES)} ('' is float32)"
            )
        self.inference_autocast = inference_autocast
        if aligner is not None and feature_adapter is None:
            raise ValueError("mask-text alignment trains the feature adapter: pass one")
        self.feature_adapter = feature_adapter
        self.aligner = aligner
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
            stage2 = {
                "feature_adapter": MultiScaleFeatureAdapter(cfg, dense_channels),
                "aligner": MaskTextAligner(cfg),
                "train_mask_branch": alignment.TRAIN_MASK_BRANCH,
            }
        return {
            **stage2,
            "backbone": backbone,
            "sem_seg_head": SegmentationHead(cfg, backbone.output_shape()),
            "criterion": PromptMaskCriterion(cfg),
            "mask_generator": amg.AutomaticMaskGenerationEngine(cfg),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "train_prompt_types": tuple(cfg.MODEL.UNIOVSEG.TRAIN_PROMPT_TYPES),
            "test_input_size": cfg.MODEL.UNIOVSEG.TEST.INPUT_SIZE,
            "prompts_per_chunk": cfg.MODEL.UNIOVSEG.TEST.PROMPTS_PER_CHUNK,
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

    # ------------------------------------------------------------------ shared steps
    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """uint8/float [3, H, W] RGB in 0-255 -> normalised float [3, H, W] on the model's
        device."""
        return (image.to(self.device, torch.float32) - self.pixel_mean) / self.pixel_std

    def encode_images(self, images: torch.Tensor) -> PixelDecoderOutput:
        """Normalised [B, 3, S, S] -> pixel-decoder features (one backbone pass)."""
        return self.sem_seg_head.forward_features(self.backbone(images))

    def prepare_prompt_decoding(self, pixel_features: PixelDecoderOutput) -> DecoderMemory:
        """Pixel features -> the decoder's prompt-independent memory; pass it to
        :meth:`decode_prompts` when decoding many chunks of prompts on the same images."""
        return self.sem_seg_head.prepare_prompt_memory(pixel_features)

    def decode_prompts(
        self,
        pixel_features: PixelDecoderOutput | DecoderMemory,
        prompts: torch.Tensor,
        *,
        prompt_type: str,
        input_size: tuple[int, int],
        prompt_valid: torch.Tensor | None = None,
        return_aux: bool = False,
    ):
        """Points [B, P, 2] or boxes [B, P, 4] (input-frame pixels) -> MaskDecoderOutput."""
        prompt_encoder = self.sem_seg_head.predictor.prompt_encoder
        if prompt_type == "point":
            boxes = prompt_encoder.points_to_boxes(prompts, input_size)
        else:
            boxes = prompts
        return self.sem_seg_head.forward_prompts(
            pixel_features,
            boxes,
            prompt_type=prompt_type,
            image_size=input_size,
            prompt_valid=prompt_valid,
            return_aux=return_aux,
        )

    def _num_outputs(self, prompt_type: str) -> int:
        """Masks per prompt: the multi-mask tokens for points, the single-mask token for boxes."""
        if prompt_type == "point":
            return self.sem_seg_head.predictor.prompt_encoder.num_multimask_outputs
        return 1

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

    def mask_losses(self, batched_inputs: list[dict]) -> dict[str, torch.Tensor]:
        """SA1BDatasetMapper outputs -> stage-1 losses (promptable mask generation)."""
        if not self.train_mask_branch:
            raise ValueError(
                "got image-mask training examples but the mask branch is frozen: set "
                "MODEL.UNIOVSEG.ALIGNMENT.TRAIN_MASK_BRANCH True to continue the mask losses"
            )
        images = torch.stack([self.normalize(x["image"]) for x in batched_inputs])
        input_size = tuple(images.shape[-2:])
        targets = [
            {
                "gt_masks": x["gt_masks"].to(self.device),
                "point_coords": x["point_coords"].to(self.device, torch.float32),
                "box_prompts": x["box_prompts"].to(self.device, torch.float32).reshape(-1, 4),
            }
            for x in batched_inputs
        ]
        pixel_features = self.encode_images(images)
        outputs = {}
        for prompt_type, key, width in [("point", "point_coords", 2), ("box", "box_prompts", 4)]:
            if prompt_type not in self.train_prompt_types:
                continue
            prompts, valid = pad_prompt_rows([t[key] for t in targets], width)
            if prompts.shape[1] == 0:
                continue  # no prompt of this type in the batch (e.g. images without masks)
            outputs[prompt_type] = self.decode_prompts(
                pixel_features,
                prompts,
                prompt_type=prompt_type,
                input_size=input_size,
                prompt_valid=valid,
                return_aux=True,
            )
        losses = self.criterion(outputs, targets)
        if not losses:
            # Nothing to supervise in this batch: a zero that still reaches every trainable
            # parameter keeps DDP's gradient all-reduce in step across processes.
            zero = sum(p.sum() * 0.0 for p in self.sem_seg_head.parameters())
            losses = {"loss_mask_bce_point": zero}
        return losses

    def alignment_losses(self, batched_inputs: list[dict]) -> dict[str, torch.Tensor]:
        """CaptionDatasetMapper outputs -> ``{"loss_align"}`` (paper Eq. 8, see
        :class:`~uniovseg.modeling.alignment.MaskTextAligner`)."""
        if self.aligner is None:
            raise ValueError(
                "got caption training examples but mask-text alignment is off: set "
                "MODEL.UNIOVSEG.ALIGNMENT.ENABLED True (see configs/stage2/)"
            )
        images = torch.stack([self.normalize(x["image"]) for x in batched_inputs])
        input_size = tuple(images.shape[-2:])
        features = self.backbone(images)
        with torch.no_grad():  # masks and adapter inputs: the alignment loss trains the adapter
            pixel_features = self.sem_seg_head.forward_features(features)

        def decode_points(features_b: PixelDecoderOutput, point_coords: torch.Tensor):
            out = self.decode_prompts(
                features_b, point_coords, prompt_type="point", input_size=input_size
            )
            return out.mask_logits, out.iou_logits

        return self.aligner(
            backbone=self.backbone,
            images=images,
            clip_dense=features["clip_vis_dense"],
            pixel_features=pixel_features,
            valid_sizes=[tuple(x.get("image_size", input_size)) for x in batched_inputs],
            entities=[list(x["entities"]) for x in batched_inputs],
            decode_points=decode_points,
            adapter=self.feature_adapter,
        )

    def region_embeddings(
        self,
        clip_dense: torch.Tensor,
        pixel_features: PixelDecoderOutput,
        masks: torch.Tensor,
        *,
        use_adapter: bool = True,
    ) -> torch.Tensor:
        """Normalised CLIP-space embeddings of one image's masks, for open-vocabulary
        classification: ``r'_i`` (paper App. A) when the model has a feature adapter, else the
        baseline ``r_i`` (Eq. 5, raw CLIP mask pooling).

        Args:
            clip_dense: [1, C, h, w] (or [C, h, w]) ``clip_vis_dense`` of the padded input.
            pixel_features: The pixel decoder's output for the same input (batch of 1).
            masks: [K, H, W] soft (or 0/1) masks in [0, 1] over the same padded input frame,
                any resolution (e.g. ``AutomaticMaskResult.mask_logits_lowres.sigmoid()``).
            use_adapter: False gives the baseline even when an adapter exists.

        Returns:
            [K, D] L2-normalised region embeddings.
        """
        if clip_dense.dim() == 3:
            clip_dense = clip_dense[None]
        adapter = self.feature_adapter if use_adapter else None
        return region_embedding.embed_regions(
            self.backbone,
            clip_dense,
            masks[None].to(clip_dense.dtype),
            adapter=adapter,
            adapter_features=(
                adapter.select_features(pixel_features) if adapter is not None else None
            ),
        )[0]

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def inference(self, batched_inputs: list[dict]) -> list[dict]:
        results = []
        with self.inference_precision():
            for x in batched_inputs:
                if "point_coords" in x or "box_prompts" in x:
                    results.append({"prompt_eval": self.predict_prompts_for_evaluation(x)})
                else:
                    results.append(self.generate_automatic_masks(x))
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

    def _pad_to_input(self, image: torch.Tensor) -> torch.Tensor:
        """Normalised [3, h, w] -> [1, 3, S, S], zero (= mean colour) padding bottom/right."""
        size = self.test_input_size
        height, width = image.shape[-2:]
        if height > size or width > size:
            raise ValueError(
                f"image of {height}x{width} does not fit the {size}x{size} input; resize it first"
            )
        return F.pad(image, (0, size - width, 0, size - height))[None]

    def resize_for_test(self, image: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """uint8 [3, H, W] -> (normalised padded [1, 3, S, S], valid (h, w)): the longest side
        becomes S (the release's geometry)."""
        height, width = image.shape[-2:]
        scale = self.test_input_size / max(height, width)
        valid = (max(1, round(height * scale)), max(1, round(width * scale)))
        resized = F.interpolate(
            image.to(self.device, torch.float32)[None],
            size=valid,
            mode="bilinear",
            align_corners=False,
            antialias=scale < 1.0,
        )[0]
        return self._pad_to_input(self.normalize(resized)), valid

    def generate_automatic_masks(self, x: dict) -> dict:
        """One image dict -> {"automatic_masks": AutomaticMaskResult, "instances": Instances}."""
        image = x["image"]
        original_size = (
            int(x.get("height", image.shape[-2])),
            int(x.get("width", image.shape[-1])),
        )
        images, valid_size = self.resize_for_test(image)
        input_size = tuple(images.shape[-2:])
        features = self.backbone(images)
        pixel_features = self.sem_seg_head.forward_features(features)
        decoder_memory = self.prepare_prompt_decoding(pixel_features)

        def predict(point_coords: torch.Tensor):
            out = self.decode_prompts(
                decoder_memory, point_coords, prompt_type="point", input_size=input_size
            )
            return out.mask_logits, out.iou_logits

        classify = self.open_vocab is not None and self.open_vocab.enabled
        result = self.mask_generator.generate(
            predict,
            valid_size=valid_size,
            input_size=input_size,
            original_size=original_size,
            device=self.device,
            # Semantic/panoptic assembly needs the soft masks at the original size: the
            # generator has them in hand when it thresholds the kept masks.
            return_mask_probs=classify,
        )
        output = {"automatic_masks": result, "instances": automatic_result_to_instances(result)}
        if classify:
            region_embeds = self.region_embeddings(
                features["clip_vis_dense"], pixel_features, result.mask_logits_lowres.sigmoid()
            )
            # Classification and assembly in float32 whatever the inference precision: class
            # scores are compared across thousands of pixels and masks.
            with torch.autocast(device_type=self.device.type, enabled=False):
                output.update(
                    self.open_vocab(
                        result, region_embeds.float(), valid_size=valid_size, input_size=input_size
                    )
                )
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
        images = self._pad_to_input(self.normalize(x["image"]))
        input_size = tuple(images.shape[-2:])
        valid_h, valid_w = x["image_size"]
        decoder_memory = self.prepare_prompt_decoding(self.encode_images(images))
        outputs = {}
        for prompt_type, key in [("point", "point_coords"), ("box", "box_prompts")]:
            prompts = x[key].to(self.device, torch.float32)
            masks, scores = [], []
            for start in range(0, len(prompts), self.prompts_per_chunk):
                chunk = prompts[start : start + self.prompts_per_chunk][None]
                out = self.decode_prompts(
                    decoder_memory, chunk, prompt_type=prompt_type, input_size=input_size
                )
                logits = F.interpolate(
                    out.mask_logits[0], size=input_size, mode="bilinear", align_corners=False
                )
                masks.append(logits[..., :valid_h, :valid_w] > 0)
                scores.append(out.iou_logits[0].sigmoid())
            num_outputs = self._num_outputs(prompt_type)
            outputs[f"{prompt_type}_masks"] = (
                torch.cat(masks)
                if masks
                else torch.zeros(0, num_outputs, valid_h, valid_w, dtype=torch.bool)
            )
            outputs[f"{prompt_type}_iou"] = (
                torch.cat(scores) if scores else torch.zeros(0, num_outputs)
            )
        return {
            "point_masks": outputs["point_masks"],
            "point_iou": outputs["point_iou"],
            "box_masks": outputs["box_masks"],
        }


def automatic_result_to_instances(result: amg.AutomaticMaskResult) -> Instances:
    """AutomaticMaskResult -> detectron2 Instances (pred_masks, pred_boxes, scores) for
    visualisation and detectron2 tooling."""
    instances = Instances(result.original_size)
    instances.pred_masks = result.masks
    instances.pred_boxes = Boxes(result.boxes)
    instances.scores = result.iou_scores
    return instances
