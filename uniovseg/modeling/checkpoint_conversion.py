"""Reading the authors' released stage-1 checkpoint and checking it against our model layout.

The release's state dict has three parts: ``backbone.clip_model.*`` (the whole open_clip model),
``sem_seg_head.pixel_decoder.*`` and ``sem_seg_head.predictor.*``. Our modules reproduce those
names and shapes exactly (``tests/test_checkpoint_conversion.py`` proves it against the
release's manifest of names and shapes), so the conversion is the identity on names; what it
adds is safe reading (through :func:`uniovseg.checkpoint.read_checkpoint`, the one checkpoint
reader), unwrapping, and a strict name/shape check with a readable report.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from ..checkpoint import read_checkpoint

__all__ = [
    "KEY_RENAMES",
    "RELEASE_HEAD_LAYOUT_SHA256",
    "RELEASE_LAYOUT_SHA256",
    "LayoutReport",
    "compare_layout",
    "convert_official_state_dict",
    "expected_layout",
    "extract_state_dict",
    "load_checkpoint",
    "layout_digest",
    "load_manifest",
    "save_detectron2_checkpoint",
    "shapes_of",
]

logger = logging.getLogger(__name__)

# (release prefix, our prefix) pairs applied in order to every key. Empty: the layouts are
# identical. Kept as the one place to add a rename should our module tree ever diverge.
KEY_RENAMES: tuple[tuple[str, str], ...] = ()

# layout_digest() of the release's stage1.pth: all 901 tensors, and the 358 under sem_seg_head.
# (computed from the release's manifest of names and shapes), so our layout can be checked
# without the checkpoint or its manifest.
RELEASE_LAYOUT_SHA256 = "2ce31e96888fe4226947309de6ef2a8caf0d87d04672b3dadcb28ecfa6dae2d4"
RELEASE_HEAD_LAYOUT_SHA256 = "ead40f0dcdde1b830182dee493d8492bca1740701e55b32b39fa6a9dcdad881c"

# Wrapper keys under which training frameworks store the model's state dict.
_WRAPPER_KEYS = ("model", "state_dict")


@dataclass
class LayoutReport:
    """Difference between a checkpoint's layout and the expected one.

    Attributes:
        missing: Expected names absent from the checkpoint.
        unexpected: Checkpoint names the model does not have.
        mismatched: (name, expected shape, checkpoint shape) for names present in both.
        num_checked: Number of expected names.
    """

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    num_checked: int = 0

    @property
    def ok(self) -> bool:
        """True when names and shapes match exactly."""
        return not (self.missing or self.unexpected or self.mismatched)

    def format(self, max_items: int = 20) -> str:
        """A human-readable summary listing up to ``max_items`` offending names per kind."""
        if self.ok:
            return f"OK: all {self.num_checked} names and shapes match."
        lines = [
            f"Layout mismatch: {len(self.missing)} missing, {len(self.unexpected)} unexpected, "
            f"{len(self.mismatched)} with a different shape (of {self.num_checked} expected)."
        ]
        for title, items in (
            ("Missing from the checkpoint", self.missing),
            ("Unexpected in the checkpoint", self.unexpected),
            (
                "Shape mismatches (name: expected vs checkpoint)",
                [f"{n}: {list(e)} vs {list(a)}" for n, e, a in self.mismatched],
            ),
        ):
            if items:
                lines.append(f"{title}:")
                lines += [f"  {item}" for item in items[:max_items]]
                if len(items) > max_items:
                    lines.append(f"  ... and {len(items) - max_items} more")
        return "\n".join(lines)


def extract_state_dict(
    checkpoint: object, *, source: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """Unwraps a loaded checkpoint into a flat ``name -> tensor`` state dict.

    Args:
        checkpoint: What ``torch.load`` returned: a state dict, or a dict holding it under
            ``"model"`` (detectron2) or ``"state_dict"``; other entries (optimizer, iteration)
            are ignored. A ``module.`` prefix (DistributedDataParallel) is removed.
        source: Name of the origin, for error messages.

    Returns:
        The state dict.

    Raises:
        ValueError: ``checkpoint`` is not a state dict of tensors.
    """
    for key in _WRAPPER_KEYS:
        if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get(key), Mapping):
            checkpoint = checkpoint[key]
            break
    if not isinstance(checkpoint, Mapping) or not checkpoint:
        raise ValueError(
            f"{source} holds a {type(checkpoint).__name__}, not a non-empty state dict "
            "(name -> tensor, possibly wrapped as {'model': ...})."
        )
    bad = [k for k, v in checkpoint.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        raise ValueError(f"{source} is not a state dict: entries {bad[:5]} are not name -> tensor.")
    return {k.removeprefix("module."): v for k, v in checkpoint.items()}


def load_checkpoint(path: str) -> dict[str, torch.Tensor]:
    """Reads a checkpoint with :func:`uniovseg.checkpoint.read_checkpoint` and unwraps it.

    Args:
        path: The checkpoint file (e.g. the release's ``stage1.pth``), a ``torch.save`` file
            read with ``weights_only=True`` or a ``.safetensors`` file.

    Returns:
        The state dict, on the CPU.

    Raises:
        FileNotFoundError: No such file.
        ValueError: The file is corrupt (``CorruptCheckpointError``), a pickle or holds pickled
            objects other than tensors (``UnsafeCheckpointError``: unpickling can run arbitrary
            code), or is not a state dict.
    """
    return extract_state_dict(read_checkpoint(path), source=repr(path))


def convert_official_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Maps the release's key layout to ours (see :data:`KEY_RENAMES`; currently identity).

    Args:
        state_dict: The release's state dict.

    Returns:
        A new dict with our names; tensors are shared, not copied.

    Raises:
        ValueError: Two keys map to the same name.
    """
    converted: dict[str, torch.Tensor] = {}
    for name, tensor in state_dict.items():
        new_name = name
        for old, new in KEY_RENAMES:
            if new_name.startswith(old):
                new_name = new + new_name[len(old) :]
        if new_name in converted:
            raise ValueError(f"Keys collide after renaming: {name!r} -> {new_name!r}.")
        converted[new_name] = tensor
    return converted


def shapes_of(tensors: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """``name -> tensor`` to ``name -> shape``."""
    return {name: tuple(t.shape) for name, t in tensors.items()}


def compare_layout(
    found: Mapping[str, Sequence[int]],
    expected: Mapping[str, Sequence[int]],
    *,
    prefixes: Sequence[str] = (),
) -> LayoutReport:
    """Compares names and shapes strictly.

    Args:
        found: Checkpoint ``name -> shape``.
        expected: Model ``name -> shape``.
        prefixes: When given, only names starting with one of them are compared (on both
            sides), e.g. ``("sem_seg_head.",)`` for a head-only checkpoint.

    Returns:
        A :class:`LayoutReport`.
    """

    def keep(name: str) -> bool:
        return not prefixes or name.startswith(tuple(prefixes))

    found = {k: tuple(v) for k, v in found.items() if keep(k)}
    expected = {k: tuple(v) for k, v in expected.items() if keep(k)}
    return LayoutReport(
        missing=[k for k in expected if k not in found],
        unexpected=[k for k in found if k not in expected],
        mismatched=[
            (k, expected[k], found[k]) for k in expected if k in found and found[k] != expected[k]
        ],
        num_checked=len(expected),
    )


def layout_digest(layout: Mapping[str, Sequence[int]]) -> str:
    """SHA-256 of the sorted ``name:d0,d1,...`` lines of a layout (order independent)."""
    lines = (
        f"{name}:{','.join(str(int(d)) for d in shape)}" for name, shape in sorted(layout.items())
    )
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def expected_layout(cfg, *, include_backbone: bool = True) -> dict[str, tuple[int, ...]]:
    """Names and shapes of our stage-1 model's state dict, built on the meta device.

    Nothing is allocated, so the 374 M-value release model is checked in about a second.

    Args:
        cfg: A config with :func:`uniovseg.config.add_uniovseg_config` applied.
        include_backbone: Also include the frozen CLIP (``backbone.clip_model.*``).

    Returns:
        ``name -> shape`` with the meta-architecture's prefixes (``backbone.``,
        ``sem_seg_head.``).
    """
    from .clip_backbone import CLIPConvNeXtBackbone
    from .segmentation_head import SegmentationHead

    # open_clip logs "Model initialized randomly" on the root logger: true but misleading here.
    with torch.device("meta"), _quiet_root_logger():
        backbone = CLIPConvNeXtBackbone(
            model_name=cfg.MODEL.UNIOVSEG.CLIP.MODEL_NAME,
            pretrained="",
            text_chunk_size=cfg.MODEL.UNIOVSEG.CLIP.TEXT_CHUNK_SIZE,
        )
        head = SegmentationHead(cfg, backbone.output_shape())
    layout = {f"sem_seg_head.{k}": tuple(v.shape) for k, v in head.state_dict().items()}
    if include_backbone:
        layout.update({f"backbone.{k}": tuple(v.shape) for k, v in backbone.state_dict().items()})
    return layout


def load_manifest(path: str) -> dict[str, tuple[int, ...]]:
    """Reads a JSON manifest ``{name: shape}`` (such as the release's state_dict_shapes.json)."""
    with open(path, encoding="utf-8") as f:
        manifest = json.load(f)
    if not isinstance(manifest, dict) or not all(isinstance(v, list) for v in manifest.values()):
        raise ValueError(f"{path!r} is not a JSON object of name -> shape list.")
    return {name: tuple(int(d) for d in shape) for name, shape in manifest.items()}


def save_detectron2_checkpoint(state_dict: Mapping[str, torch.Tensor], path: str) -> None:
    """Saves ``{"model": state_dict}``, which detectron2's ``DetectionCheckpointer`` loads
    (``MODEL.WEIGHTS``) without renaming heuristics."""
    torch.save({"model": dict(state_dict)}, path)
    logger.info("Saved %d tensors to %s", len(state_dict), path)


@contextlib.contextmanager
def _quiet_root_logger():
    """Temporarily raises the root logger's level to ERROR."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
