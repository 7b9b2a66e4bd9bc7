"""detectron2 trainer for uniovseg: our mappers, evaluators, optimizer and DDP settings.

Stage 2 (mask-text alignment) trains on caption batches (``INPUT.DATASET_MAPPER_NAME "caption"``,
``DATASETS.TRAIN`` = caption sets). To continue the stage-1 mask losses in the same run,
``MODEL.UNIOVSEG.ALIGNMENT.MASK_TRAIN_DATASETS`` names image-mask sets: a second train loader
(SA-1B mapper) is built for them and every iteration gets one caption batch and one
image-mask batch joined into one list (:class:`JointBatchLoader`); the model computes both losses
on it in one step. This is the simplest sound combination in detectron2: one optimizer step per
iteration, each loader keeps its own infinite, rank-sharded, resumable stream (an index stream,
:class:`~uniovseg.data.samplers.ResumableTrainingSampler` under a
:class:`~uniovseg.data.samplers.ResumableBatchSampler`, see :mod:`uniovseg.data.train_loader`;
or, for datasets in tar shards, a shard stream whose positions the checkpoint keeps, see
:mod:`uniovseg.data.stream_loader`) and each loss keeps its own batch size; alternating
iterations would instead make the learning-rate schedule and the logged losses alternate between
two objectives.
"""

from __future__ import annotations

import logging
import os
import warnings
import weakref
from collections import OrderedDict

import torch
from detectron2.data import (
    MetadataCatalog,
    build_detection_test_loader,
    get_detection_dataset_dicts,
)
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer
from detectron2.engine.defaults import create_ddp_model
from detectron2.engine.hooks import EvalHook, PeriodicCheckpointer, PeriodicWriter
from detectron2.evaluation import COCOPanopticEvaluator, DatasetEvaluators, SemSegEvaluator
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from uniovseg.checkpoint import UniOVSegCheckpointer
from uniovseg.data.datasets.shards import (
    SAMPLE_DECODERS,
    is_shard_dataset,
    shard_dataset_files,
    shard_list_fingerprint,
)
from uniovseg.data.stream_loader import build_stream_train_loader
from uniovseg.data.test_image_mapper import TestImageMapper
from uniovseg.data.train_loader import EntitySourceLog, build_resumable_train_loader
from uniovseg.engine.alignment_monitor import AlignmentMonitor
from uniovseg.engine.ddp import ddp_options
from uniovseg.engine.optimizer import build_optimizer
from uniovseg.engine.stream_checkpoint import StreamCheckpointHook

logger = logging.getLogger(__name__)

# Evaluators whose datasets are labelled with a vocabulary the model must classify into.
_OPEN_VOCAB_EVALUATORS = ("sem_seg", "coco_panoptic_seg")


def build_train_mapper(cfg):
    """The training mapper named by ``INPUT.DATASET_MAPPER_NAME``."""
    name = cfg.INPUT.DATASET_MAPPER_NAME
    if name == "sa1b":
        from uniovseg.data.sa1b_mapper import SA1BDatasetMapper

        return SA1BDatasetMapper(cfg)
    if name == "caption":
        from uniovseg.data.caption_mapper import CaptionDatasetMapper

        return CaptionDatasetMapper(cfg)
    raise ValueError(f"INPUT.DATASET_MAPPER_NAME={name!r} is not one of: 'sa1b', 'caption'")


class JointBatchLoader:
    """Joins one batch of each loader per iteration into a single list of examples.

    Args:
        loaders: Infinite iterables of ``list[dict]`` batches (detectron2 train loaders).
    """

    def __init__(self, *loaders) -> None:
        if len(loaders) < 2:
            raise ValueError("JointBatchLoader needs at least two loaders")
        self.loaders = loaders
        self.resumable_samplers = [
            sampler for loader in loaders for sampler in getattr(loader, "resumable_samplers", [])
        ]
        self.stream_loaders = [
            stream for loader in loaders for stream in getattr(loader, "stream_loaders", [])
        ]

    def __iter__(self):
        iterators = [iter(loader) for loader in self.loaders]
        while True:
            batch = []
            for iterator in iterators:
                batch.extend(next(iterator))
            yield batch


def _resumable_loader(cfg, *, name: str = "train"):
    """The train loader over ``cfg.DATASETS.TRAIN``, resumable: a :class:`StreamLoader` for
    shard datasets (its position goes into the checkpoint, see
    :mod:`uniovseg.engine.stream_checkpoint`), else a map-style loader whose
    ``resumable_samplers`` skip the batches already trained on (see
    :mod:`uniovseg.data.train_loader`). ``name`` names a stream's state in the checkpoint."""
    # A fixed seed (SEED when set, else 0) so that a resumed run replays the same stream.
    seed = cfg.SEED if cfg.SEED >= 0 else 0
    names = list(cfg.DATASETS.TRAIN)
    streamed = [is_shard_dataset(n) for n in names]
    if any(streamed):
        if not all(streamed):
            raise ValueError(
                f"DATASETS.TRAIN {names} mixes shard datasets with folder/manifest datasets; "
                "train on one kind at a time (write the others as shards with "
                "tools/write_shards.py)"
            )
        return _stream_loader(cfg, names, seed=seed, name=name)
    return build_resumable_train_loader(
        get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=False),
        build_train_mapper(cfg),
        total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
        seed=seed,
        aspect_ratio_grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )


def _stream_loader(cfg, names: list[str], *, seed: int, name: str):
    """A :class:`StreamLoader` over the shards of the shard datasets ``names`` (one format)."""
    shards, shard_format = shard_dataset_files(names)
    # The shard formats are named after the mappers that read them.
    if shard_format != cfg.INPUT.DATASET_MAPPER_NAME:
        raise ValueError(
            f"DATASETS.TRAIN {names} are {shard_format!r} shards but INPUT.DATASET_MAPPER_NAME "
            f"is {cfg.INPUT.DATASET_MAPPER_NAME!r}; use the {shard_format!r} mapper for them"
        )
    world_size = comm.get_world_size()
    total = cfg.SOLVER.IMS_PER_BATCH
    if total <= 0 or total % world_size:
        raise ValueError(
            f"SOLVER.IMS_PER_BATCH={total} must be a positive multiple of the number of "
            f"processes ({world_size})"
        )
    return build_stream_train_loader(
        shards,
        decode=SAMPLE_DECODERS[shard_format],
        mapper=build_train_mapper(cfg),
        batch_size=total // world_size,
        seed=seed,
        buffer_size=cfg.DATALOADER.UNIOVSEG.SHUFFLE_BUFFER,
        rank=comm.get_rank(),
        world_size=world_size,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        name=name,
        fingerprint=shard_list_fingerprint(shards),
    )


def build_train_loader(cfg):
    """The train loader of ``DATASETS.TRAIN``, joined with an image-mask loader when
    ``MODEL.UNIOVSEG.ALIGNMENT.MASK_TRAIN_DATASETS`` is set (see the module docstring). Caption
    batches log where their entities came from (:class:`EntitySourceLog`)."""
    loader = _resumable_loader(cfg)
    if cfg.INPUT.DATASET_MAPPER_NAME == "caption":
        loader = EntitySourceLog(loader)
    alignment = cfg.MODEL.UNIOVSEG.ALIGNMENT
    if not alignment.MASK_TRAIN_DATASETS:
        return loader
    if not (alignment.ENABLED and alignment.TRAIN_MASK_BRANCH):
        raise ValueError(
            "MODEL.UNIOVSEG.ALIGNMENT.MASK_TRAIN_DATASETS continues the mask losses: it needs "
            "ALIGNMENT.ENABLED True and ALIGNMENT.TRAIN_MASK_BRANCH True"
        )
    if cfg.INPUT.DATASET_MAPPER_NAME != "caption":
        raise ValueError(
            "MODEL.UNIOVSEG.ALIGNMENT.MASK_TRAIN_DATASETS is joined to caption batches: set "
            f"INPUT.DATASET_MAPPER_NAME 'caption' (got {cfg.INPUT.DATASET_MAPPER_NAME!r})"
        )
    mask_cfg = cfg.clone()
    mask_cfg.defrost()
    mask_cfg.DATASETS.TRAIN = tuple(alignment.MASK_TRAIN_DATASETS)
    mask_cfg.SOLVER.IMS_PER_BATCH = alignment.MASK_IMS_PER_BATCH or cfg.SOLVER.IMS_PER_BATCH
    mask_cfg.INPUT.DATASET_MAPPER_NAME = "sa1b"
    mask_cfg.freeze()
    mask_loader = _resumable_loader(mask_cfg, name="mask_train")
    return JointBatchLoader(loader, mask_loader)


def build_test_mapper(cfg, dataset_name: str):
    """The test mapper for a dataset, chosen by its evaluator type."""
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    if evaluator_type == "promptable":
        from uniovseg.data.promptable_eval_mapper import PromptableEvalMapper

        return PromptableEvalMapper(cfg)
    # The model resizes and pads test images itself (longest side to TEST.INPUT_SIZE).
    return TestImageMapper()


def build_evaluator(cfg, dataset_name: str, output_folder: str | None = None):
    """Evaluators by the dataset's ``evaluator_type``: sem_seg (mIoU), coco_panoptic_seg (PQ),
    promptable (1-point / 1-box IoU).

    Their files (semantic predictions, panoptic predictions.json) go to ``output_folder``,
    default ``OUTPUT_DIR/inference/<dataset>`` (without one, detectron2's panoptic evaluator
    writes to a temporary folder that it deletes).
    """
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    evaluators = []
    if evaluator_type == "sem_seg":
        evaluators.append(SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder))
    elif evaluator_type == "coco_panoptic_seg":
        evaluators.append(COCOPanopticEvaluator(dataset_name, output_folder))
    elif evaluator_type == "promptable":
        from uniovseg.evaluation.promptable_evaluator import PromptableEvaluator

        evaluators.append(PromptableEvaluator(dataset_name))
    if not evaluators:
        raise ValueError(
            f"dataset {dataset_name!r} has evaluator_type={evaluator_type!r}; supported: "
            "'sem_seg', 'coco_panoptic_seg', 'promptable'"
        )
    return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)


def dataset_vocabularies(cfg) -> dict[str, str]:
    """``MODEL.UNIOVSEG.OPEN_VOCAB.DATASET_VOCABULARIES`` as ``{dataset: vocabulary}``.

    Raises:
        ValueError: an entry is not ``DATASET=VOCABULARY``, or names a dataset twice.
    """
    vocabularies: dict[str, str] = {}
    for entry in cfg.MODEL.UNIOVSEG.OPEN_VOCAB.DATASET_VOCABULARIES:
        dataset, sep, vocabulary = str(entry).partition("=")
        dataset, vocabulary = dataset.strip(), vocabulary.strip()
        if not sep or not dataset or not vocabulary or dataset in vocabularies:
            raise ValueError(
                f"MODEL.UNIOVSEG.OPEN_VOCAB.DATASET_VOCABULARIES entry {entry!r}: expected one "
                "'DATASET=VOCABULARY' per dataset, e.g. 'ade20k_150_sem_seg_val=ade20k_150_raw'"
            )
        vocabularies[dataset] = vocabulary
    return vocabularies


def with_vocabulary(metadata, vocabulary: str):
    """A copy of a dataset's metadata whose ``vocabulary`` is ``vocabulary`` (a packaged name or
    a file); its class count must be the dataset's (``stuff_classes``), which the evaluators
    and the label maps use.

    Raises:
        ValueError: the vocabulary does not exist or has another number of classes.
    """
    from detectron2.data.catalog import Metadata

    from uniovseg.data.vocabulary import load_vocabulary

    entries = load_vocabulary(vocabulary)
    values = metadata.as_dict()
    num_classes = len(values.get("stuff_classes", ()))
    if len(entries) != num_classes:
        raise ValueError(
            f"vocabulary {vocabulary!r} has {len(entries)} classes but dataset {metadata.name!r} "
            f"has {num_classes}: MODEL.UNIOVSEG.OPEN_VOCAB.DATASET_VOCABULARIES must keep the "
            "dataset's classes and order"
        )
    logger.info("%s: classifying with vocabulary %r", metadata.name, vocabulary)
    values["vocabulary"] = vocabulary
    return Metadata(**values)


class Trainer(DefaultTrainer):
    """DefaultTrainer with uniovseg's data, optimizer and evaluators.

    ``__init__`` follows DefaultTrainer's line by line except for the DDP wrapper and the AMP
    choice, for which DefaultTrainer has no hook: (1) it falls back from AMP to fp32 on machines
    without CUDA (detectron2's AMPTrainer requires CUDA); (2) it gives DDP the options of
    :func:`uniovseg.engine.ddp.ddp_options`: unused-parameter search only for configs that need
    it, gradients as bucket views, and ``device_ids=None`` for a CPU (gloo) model, which DDP
    refuses with detectron2's ``device_ids=[local_rank]``. Check it against
    ``DefaultTrainer.__init__`` when detectron2 is upgraded.
    """

    def __init__(self, cfg):  # noqa: D107 - documented on the class
        super(DefaultTrainer, self).__init__()
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(model, **ddp_options(cfg, model))
        use_amp = cfg.SOLVER.AMP.ENABLED
        if use_amp and not torch.cuda.is_available():
            warnings.warn(
                "SOLVER.AMP.ENABLED is ignored without CUDA: training in float32", stacklevel=2
            )
            use_amp = False
        self._trainer = (AMPTrainer if use_amp else SimpleTrainer)(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        # Safe loading, atomic saves, resume past torn checkpoints (uniovseg/checkpoint.py).
        self.checkpointer = UniOVSegCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def resume_or_load(self, resume: bool = True) -> None:
        """As DefaultTrainer's, then moves the data stream past what the resumed run consumed:
        map-style loaders skip ``start_iter`` batches; shard streams got their positions from
        the checkpoint while it loaded (:class:`StreamCheckpointHook`)."""
        super().resume_or_load(resume=resume)
        for sampler in getattr(self._trainer.data_loader, "resumable_samplers", []):
            sampler.skip_batches(self.start_iter)

    def build_hooks(self):
        """detectron2's hooks, plus :class:`StreamCheckpointHook` when the data comes from
        shards (the stream positions for the checkpoint), and the stage-2 alignment monitor when
        ``MODEL.UNIOVSEG.ALIGNMENT.MONITOR.DATASET`` names a dataset. The monitor goes before
        the writers (the last hooks), so that its scalars are written in the same iteration."""
        hooks = super().build_hooks()
        streams = getattr(self._trainer.data_loader, "stream_loaders", [])
        if streams:
            # Before the checkpointer (main process) and the evaluation (every rank), so that
            # the positions it gathers on every rank are in the checkpoint of this iteration.
            index = next(
                (i for i, h in enumerate(hooks) if isinstance(h, (PeriodicCheckpointer, EvalHook))),
                len(hooks),
            )
            log = self.cfg.DATALOADER.UNIOVSEG.SAMPLE_LOG
            hooks.insert(
                index,
                StreamCheckpointHook(
                    streams,
                    checkpoint_period=self.cfg.SOLVER.CHECKPOINT_PERIOD,
                    sample_log_dir=os.path.join(self.cfg.OUTPUT_DIR, "sample_log") if log else None,
                ),
            )
        alignment = self.cfg.MODEL.UNIOVSEG.ALIGNMENT
        if alignment.ENABLED and alignment.MONITOR.DATASET:
            writer_index = next(
                (i for i, h in enumerate(hooks) if isinstance(h, PeriodicWriter)), len(hooks)
            )
            hooks.insert(writer_index, AlignmentMonitor(self.cfg))
        return hooks

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def build_train_loader(cls, cfg):
        return build_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(
            cfg, dataset_name, mapper=build_test_mapper(cfg, dataset_name)
        )

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """Evaluates on each of ``cfg.DATASETS.TEST``, giving the model each dataset's vocabulary
        and thing classes first (open-vocabulary: the classes change per benchmark).

        Returns:
            {dataset name: {task: {metric: value}}}, one entry per dataset.
        """
        if evaluators is not None and len(evaluators) != len(cfg.DATASETS.TEST):
            raise ValueError(
                f"{len(evaluators)} evaluators for {len(cfg.DATASETS.TEST)} test datasets"
            )
        unwrapped = model.module if hasattr(model, "module") else model
        vocabularies = dataset_vocabularies(cfg)
        results = OrderedDict()
        for index, dataset_name in enumerate(cfg.DATASETS.TEST):
            metadata = MetadataCatalog.get(dataset_name)
            if metadata.get("evaluator_type", None) in _OPEN_VOCAB_EVALUATORS:
                if dataset_name in vocabularies:
                    metadata = with_vocabulary(metadata, vocabularies[dataset_name])
                unwrapped.set_dataset_metadata(metadata)
            single = cfg.clone()
            single.defrost()
            single.DATASETS.TEST = (dataset_name,)
            chosen = None if evaluators is None else [evaluators[index]]
            results[dataset_name] = super().test(single, model, evaluators=chosen)
        return results
