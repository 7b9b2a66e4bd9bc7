"""Promptable-segmentation views of labelled datasets.

The promptable benchmark (1-point / 1-box oracle IoU) needs instance masks, which panoptic and
COCO-instance datasets already have; a "view" registers the same dataset dicts under another name
whose evaluator type is ``promptable`` (so ``PromptableEvalMapper`` derives the prompts from
each ground-truth mask and ``PromptableEvaluator`` scores the predicted masks).
"""

from __future__ import annotations

from detectron2.data import DatasetCatalog, MetadataCatalog

_COPIED_METADATA = ("panoptic_root", "panoptic_json", "json_file", "image_root", "label_divisor")


def register_promptable_view(name: str, source_name: str) -> None:
    """Registers ``name`` as a lazy, promptable-evaluation view of dataset ``source_name``.

    Reads no file: the source's loader runs when the view is first used. Metadata of the source
    that locates its files is copied then too.
    """
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)

    def load() -> list[dict]:
        dicts = DatasetCatalog.get(source_name)
        source = MetadataCatalog.get(source_name)
        target = MetadataCatalog.get(name)
        for key in _COPIED_METADATA:
            if source.get(key, None) is not None and target.get(key, None) is None:
                target.set(**{key: source.get(key)})
        return dicts

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(evaluator_type="promptable", source_dataset=source_name)
