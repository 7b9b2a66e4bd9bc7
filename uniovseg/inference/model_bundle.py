"""Model bundles: one folder holding everything a trained Uni-OVSeg model needs, loaded by path
or Hugging Face hub id, never running code when read.

A bundle is a folder of four files::

    config.yaml            the full detectron2 config, self-contained (no _BASE_); MODEL.WEIGHTS
                           and MODEL.UNIOVSEG.CLIP.PRETRAINED are empty: every weight is below
    model.safetensors      the whole state dict, CLIP included (tied weights stored once)
    open_clip_config.json  {"model_name": ..., "model_cfg": {...}}: the CLIP architecture, so a
                           CLIP that open_clip does not ship (the quickstart's synthetic one)
                           rebuilds without uniovseg's registry of open_clip configs
    README.md              the model card

:func:`save_pretrained` writes one from a model or a predictor, :func:`save_state_dict_bundle`
from a state dict (the checkpoint converter), :func:`save_checkpoint_bundle` from a config and a
trained checkpoint (``tools/export_bundle.py``, the quickstart). The files are written in a
hidden folder beside the target, which is renamed into place: a crash leaves no half bundle.

:func:`load_pretrained` (behind ``UniOVSegPredictor.from_pretrained``) takes a local folder or a
hub repo id (see :mod:`uniovseg.inference.bundle_location`). It reads YAML with
``yaml.safe_load``, JSON and safetensors only: never pickle, never ``torch.load``. Nothing else
is read or downloaded: the config's ``MODEL.WEIGHTS`` and CLIP ``PRETRAINED`` are ignored, and an
open_clip config that would fetch weights or a tokenizer is refused.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence

import torch
import yaml

from uniovseg.atomic_files import atomic_folder, check_replaceable_folder
from uniovseg.checkpoint import WeightMismatchError, read_checkpoint_shapes

__all__ = [
    "BUNDLE_FILES",
    "CONFIG_FILE",
    "MODEL_CARD_FILE",
    "OPEN_CLIP_CONFIG_FILE",
    "WEIGHTS_FILE",
    "load_pretrained",
    "read_bundle_config",
    "save_checkpoint_bundle",
    "save_pretrained",
    "save_state_dict_bundle",
]

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "model.safetensors"
OPEN_CLIP_CONFIG_FILE = "open_clip_config.json"
MODEL_CARD_FILE = "README.md"
BUNDLE_FILES = (CONFIG_FILE, WEIGHTS_FILE, OPEN_CLIP_CONFIG_FILE, MODEL_CARD_FILE)
# The files a bundle cannot load without (the card is for people).
_REQUIRED_FILES = (CONFIG_FILE, WEIGHTS_FILE, OPEN_CLIP_CONFIG_FILE)
# State-dict prefixes of the parts that the config's layout check covers (CLIP and heads).
_LAYOUT_PREFIXES = ("backbone.", "sem_seg_head.")


# ---------------------------------------------------------------------- saving
def save_pretrained(
    model_or_predictor,
    directory: str,
    *,
    cfg=None,
    training_data: str | None = None,
    source: str | None = None,
) -> str:
    """Writes a model (or a predictor's model) as a bundle.

    Example::

        predictor = UniOVSegPredictor.from_config("tiny/stage1_tiny.yaml", weights="model.pth")
        save_pretrained(predictor, "bundles/tiny")   # a predictor carries its config
        save_pretrained(model, "bundles/mine", cfg=cfg)

    Args:
        model_or_predictor: A ``UniOVSeg`` model, or a ``UniOVSegPredictor``.
        directory: The bundle folder: new, empty, or an earlier bundle (replaced as a whole); a
            folder holding other files is refused.
        cfg: The config the model was built with; None: the predictor's ``cfg``.
        training_data: What the model was trained on, for the model card; None: the datasets
            named in the config.
        source: Where the weights come from, for the model card (optional).

    Returns:
        The bundle folder (absolute).

    Raises:
        ValueError: no config; the config does not describe the model (``WeightMismatchError``:
            names and shapes of the CLIP and the heads, checked on the meta device); an unknown
            open_clip model name.
        FileExistsError: ``directory`` is a file, or a folder with files that are not a bundle's.
    """
    model = getattr(model_or_predictor, "model", model_or_predictor)
    if cfg is None:
        cfg = getattr(model_or_predictor, "cfg", None)
    if cfg is None:
        raise ValueError(
            "save_pretrained needs the config the model was built with: pass cfg=... (a predictor "
            "from UniOVSegPredictor.from_config or from_pretrained carries it)"
        )
    if not isinstance(model, torch.nn.Module):
        raise ValueError(
            "save_pretrained takes a UniOVSeg model or a UniOVSegPredictor, got "
            f"{type(model_or_predictor).__name__}"
        )
    return save_state_dict_bundle(
        model.state_dict(), directory, cfg=cfg, training_data=training_data, source=source
    )


def save_state_dict_bundle(
    state_dict: Mapping[str, torch.Tensor],
    directory: str,
    *,
    cfg,
    training_data: str | None = None,
    source: str | None = None,
) -> str:
    """Writes a bundle from the whole model's state dict and its config (no model is built).

    Args:
        state_dict: Name -> tensor of the whole ``UniOVSeg`` model, CLIP included.
        directory, cfg, training_data, source: As in :func:`save_pretrained`.

    Returns:
        The bundle folder (absolute).

    Raises:
        See :func:`save_pretrained`.
    """
    from uniovseg.inference.bundle_clip_config import open_clip_bundle_config
    from uniovseg.inference.bundle_weights import write_weights
    from uniovseg.inference.model_card import model_card

    if not hasattr(cfg, "MODEL") or not hasattr(cfg.MODEL, "UNIOVSEG"):
        raise ValueError("cfg must be a uniovseg config (see uniovseg.config.load_config)")
    _check_layout(state_dict, cfg)
    clip_name = cfg.MODEL.UNIOVSEG.CLIP.MODEL_NAME
    open_clip_config = open_clip_bundle_config(clip_name)
    card = model_card(
        cfg,
        state_dict,
        clip_model_name=clip_name,
        clip_pretrained=os.path.basename(cfg.MODEL.UNIOVSEG.CLIP.PRETRAINED),
        training_data=training_data,
        source=source,
        files={
            CONFIG_FILE: "the full detectron2 config; `MODEL.WEIGHTS` and "
            "`MODEL.UNIOVSEG.CLIP.PRETRAINED` are empty because every weight is in "
            f"`{WEIGHTS_FILE}`",
            WEIGHTS_FILE: "the whole model, CLIP included, as safetensors",
            OPEN_CLIP_CONFIG_FILE: f"the open_clip model config of the CLIP (`{clip_name}`)",
        },
    )
    check_replaceable_folder(directory, known_files=BUNDLE_FILES, kind="a bundle")
    with atomic_folder(directory, durable=True) as folder:
        _write_text(os.path.join(folder, CONFIG_FILE), _bundle_config(cfg).dump())
        write_weights(os.path.join(folder, WEIGHTS_FILE), state_dict)
        _write_text(
            os.path.join(folder, OPEN_CLIP_CONFIG_FILE), json.dumps(open_clip_config, indent=2)
        )
        _write_text(os.path.join(folder, MODEL_CARD_FILE), card)
    target = os.path.abspath(directory)
    logger.info("Saved the model bundle %s", target)
    return target


def save_checkpoint_bundle(
    config_file: str,
    weights: str,
    directory: str,
    *,
    opts: Sequence[str] = (),
    training_data: str | None = None,
    source: str | None = None,
) -> str:
    """Builds the model of a config with a trained checkpoint and writes it as a bundle.

    Every weight of the model must come from the checkpoint, except CLIP's when the checkpoint
    holds none and ``MODEL.UNIOVSEG.CLIP.PRETRAINED`` provides them; checkpoint weights that the
    model does not use are refused too.

    Args:
        config_file: A config path or packaged config name (as ``UniOVSegPredictor.from_config``).
        weights: The trained checkpoint (``model_final.pth``, ``.safetensors``...).
        directory, training_data: As in :func:`save_pretrained`.
        opts: ``KEY VALUE`` config overrides (those the model was trained with).
        source: For the model card; None: the checkpoint's file name.

    Returns:
        The bundle folder (absolute).

    Raises:
        ValueError: as ``UniOVSegPredictor.from_config``; ``WeightMismatchError`` when the
            checkpoint does not cover the model.
    """
    from uniovseg.modeling.build import CLIP_CHECKPOINT_PREFIX, build_inference_model

    if not weights:
        raise ValueError("save_checkpoint_bundle needs the trained checkpoint (weights)")
    model, cfg = build_inference_model(config_file, weights, opts, device="cpu")
    stored = read_checkpoint_shapes(weights)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    clip_elsewhere = bool(cfg.MODEL.UNIOVSEG.CLIP.PRETRAINED) and not any(
        k.startswith(CLIP_CHECKPOINT_PREFIX) for k in stored
    )
    if clip_elsewhere:  # the model loaded CLIP from PRETRAINED; the bundle holds those weights
        expected = {k: v for k, v in expected.items() if not k.startswith(CLIP_CHECKPOINT_PREFIX)}
    problem = _first_mismatch(stored, expected)
    if problem:
        raise WeightMismatchError(
            f"The checkpoint {weights!r} does not fit the model of {config_file!r}: {problem}. "
            "Give the config (and overrides) the model was trained with."
        )
    if source is None:
        source = f"Exported from the checkpoint `{os.path.basename(weights)}`."
    return save_pretrained(model, directory, cfg=cfg, training_data=training_data, source=source)


def _check_layout(state_dict: Mapping[str, torch.Tensor], cfg) -> None:
    """Refuses a state dict that the config's model would not take (CLIP and heads, built on
    the meta device: nothing allocated; the adapter is checked when the bundle loads)."""
    from uniovseg.modeling.checkpoint_conversion import expected_layout

    found = {
        k: tuple(v.shape)
        for k, v in state_dict.items()
        if isinstance(k, str) and torch.is_tensor(v) and k.startswith(_LAYOUT_PREFIXES)
    }
    problem = _first_mismatch(found, expected_layout(cfg))
    if problem:
        raise WeightMismatchError(
            f"The weights do not fit the model that the config describes: {problem}. Pass the "
            "config the model was built with."
        )


def _write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text if text.endswith("\n") else text + "\n")


def _bundle_config(cfg):
    """The config as a bundle holds it, and as its model is built: weights from the bundle only."""
    stored = cfg.clone()
    stored.defrost()
    stored.MODEL.WEIGHTS = ""
    stored.MODEL.UNIOVSEG.CLIP.PRETRAINED = ""
    return stored


def _first_mismatch(
    stored: Mapping[str, Sequence[int]], expected: Mapping[str, Sequence[int]]
) -> str:
    """'' when names and shapes agree, else what differs: the count and the first offending key
    of each kind (another shape, missing, not in the model), in ``expected``'s order."""
    wrong = [k for k in expected if k in stored and tuple(stored[k]) != tuple(expected[k])]
    missing = [k for k in expected if k not in stored]
    unexpected = [k for k in stored if k not in expected]
    parts = []
    if wrong:
        k = wrong[0]
        parts.append(
            f"{len(wrong)} of another shape, the first {k!r}: {tuple(stored[k])} in the weights, "
            f"{tuple(expected[k])} in the model"
        )
    if missing:
        parts.append(f"{len(missing)} missing from the weights, the first {missing[0]!r}")
    if unexpected:
        parts.append(f"{len(unexpected)} not in the model, the first {unexpected[0]!r}")
    return "; ".join(parts)


# ---------------------------------------------------------------------- loading
def read_bundle_config(path: str, opts: Sequence[str] = ()):
    """Reads a bundle's ``config.yaml`` safely (``yaml.safe_load``; no ``_BASE_``).

    Args:
        path: The file.
        opts: ``KEY VALUE`` overrides applied after it.

    Returns:
        The config, not frozen.

    Raises:
        ValueError: not plain YAML (Python tags are refused, never run); a ``_BASE_`` (a bundle
            config is self-contained, and reading other files is not the bundle's business);
            keys this uniovseg does not know; not a UniOVSeg config.
    """
    from uniovseg.config import load_config

    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except yaml.YAMLError as e:
        raise ValueError(
            f"cannot read the bundle config {path!r}: it is not plain YAML (Python tags such as "
            f"!!python/object are refused because they can run code): {e}"
        ) from None
    except UnicodeDecodeError as e:
        raise ValueError(f"the bundle config {path!r} is not UTF-8 text ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"the bundle config {path!r} is not a YAML mapping of config keys")
    if "_BASE_" in data:
        raise ValueError(
            f"the bundle config {path!r} has a _BASE_ ({data['_BASE_']!r}), which bundles refuse: "
            "a bundle's config.yaml is the whole config (save_pretrained writes it so)"
        )
    try:
        cfg = load_config(path, opts)
    except KeyError as e:
        raise ValueError(
            f"the bundle config {path!r} (or opts) has a key this version of uniovseg does not "
            f"know: {e}. Was the bundle written by another version?"
        ) from None
    if cfg.MODEL.META_ARCHITECTURE != "UniOVSeg":
        raise ValueError(
            f"the bundle config {path!r} builds {cfg.MODEL.META_ARCHITECTURE!r}, not UniOVSeg"
        )
    return cfg


def load_pretrained(
    name_or_path: str | os.PathLike,
    *,
    device: str | None = None,
    opts: Sequence[str] = (),
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
):
    """Builds the model of a bundle, with its weights, in eval mode.

    Args:
        name_or_path: The bundle folder, or a hub repo id (``"org/name"``) when no such folder
            exists; ``revision``, ``cache_dir``, ``local_files_only``, ``token``: see
            :func:`uniovseg.inference.bundle_location.resolve_bundle`.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``; None: the config's ``MODEL.DEVICE`` when
            it is available here, else the CPU.
        opts: ``KEY VALUE`` overrides of the bundle's config (test-time settings such as
            ``MODEL.UNIOVSEG.AUTOMATIC.POINTS_PER_SIDE``; architecture changes do not fit the
            weights and are refused).

    Returns:
        ``(model, cfg)``: the model, and the bundle's config (frozen, with the device used).

    Raises:
        FileNotFoundError: no such bundle, or a file it needs is missing.
        ValueError: a refused or broken file (``UnsafeCheckpointError`` for a pickle,
            ``CorruptCheckpointError``), an invalid config or open_clip config, or a config
            whose model does not fit the weights (``WeightMismatchError``, naming the first
            offending key).
    """
    from detectron2.modeling import build_model

    import uniovseg.modeling  # noqa: F401  (registers the meta-architecture and backbone)
    from uniovseg.inference.bundle_clip_config import register_bundle_clip_config
    from uniovseg.inference.bundle_location import resolve_bundle
    from uniovseg.inference.bundle_weights import read_weight_shapes, read_weights
    from uniovseg.modeling.open_clip_loading import without_random_init_warning

    folder = resolve_bundle(
        name_or_path,
        BUNDLE_FILES,
        revision=revision,
        cache_dir=cache_dir,
        local_files_only=local_files_only,
        token=token,
    )
    files = _bundle_files(folder)
    cfg = read_bundle_config(files[CONFIG_FILE], opts)
    cfg.MODEL.DEVICE = _choose_device(device, cfg.MODEL.DEVICE)
    cfg.freeze()
    stored, aliases = read_weight_shapes(files[WEIGHTS_FILE])
    register_bundle_clip_config(files[OPEN_CLIP_CONFIG_FILE], cfg.MODEL.UNIOVSEG.CLIP.MODEL_NAME)

    build_cfg = _bundle_config(cfg)  # a bundle's MODEL.WEIGHTS and CLIP PRETRAINED are not read
    build_cfg.freeze()
    with without_random_init_warning():  # every weight is loaded right after
        model = build_model(build_cfg)
    problem = _first_mismatch(stored, {k: v.shape for k, v in model.state_dict().items()})
    if problem:
        raise WeightMismatchError(
            f"The weights of the bundle {folder!r} do not fit the model its {CONFIG_FILE} "
            f"builds: {problem}. The config and {WEIGHTS_FILE} come from different models (or "
            "opts changed the architecture)."
        )
    state = read_weights(files[WEIGHTS_FILE], aliases, cfg.MODEL.DEVICE)
    model.load_state_dict(state, strict=True)
    logger.info("Loaded the model bundle %s (%d weights)", folder, len(state))
    return model.eval(), cfg


def _bundle_files(folder: str) -> dict[str, str]:
    """The paths of the files a bundle needs; FileNotFoundError naming those missing."""
    paths = {name: os.path.join(folder, name) for name in _REQUIRED_FILES}
    missing = [name for name, path in paths.items() if not os.path.isfile(path)]
    if missing:
        present = sorted(os.listdir(folder))
        hint = ""
        if WEIGHTS_FILE in missing and any(p.endswith((".pth", ".pt", ".bin")) for p in present):
            hint = (
                f" torch.save files are not read: a bundle's weights are its {WEIGHTS_FILE} "
                "(write one with save_pretrained or tools/export_bundle.py)."
            )
        raise FileNotFoundError(
            f"{folder!r} is not a complete model bundle: {', '.join(missing)} missing (it holds "
            f"{', '.join(present) or 'nothing'}).{hint}"
        )
    return paths


def _choose_device(device: str | None, configured: str) -> str:
    if device is None:
        configured = str(configured)
        if configured.startswith("cuda") and not torch.cuda.is_available():
            logger.info("The bundle's config asks for %s; CUDA is not available: CPU", configured)
            return "cpu"
        return configured
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"device {device!r} was requested but CUDA is not available here; use device='cpu'"
        )
    return str(device)
