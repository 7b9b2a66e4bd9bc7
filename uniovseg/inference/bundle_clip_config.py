"""A model bundle's ``open_clip_config.json``: the CLIP architecture travels with the weights.

The file is open_clip's own hub layout plus the name, ``{"model_name": NAME, "model_cfg":
{...}}``. open_clip builds models from configs registered by name; on loading, a name that
open_clip does not know (the synthetic CLIP of the quickstart, or any config packaged by another
uniovseg version) is registered from the bundle, and a name it knows must have the same config,
else the model built would not be the bundle's.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import shutil
import tempfile
import threading

__all__ = ["open_clip_bundle_config", "register_bundle_clip_config"]

logger = logging.getLogger(__name__)

# Names registered from a bundle become file names (open_clip keys configs by file stem).
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
# model_cfg entries that make open_clip or timm fetch weights or a tokenizer over the network.
_FETCHING_KEYS = (
    ("vision_cfg", "timm_model_pretrained"),
    ("text_cfg", "hf_model_name"),
    ("text_cfg", "hf_tokenizer_name"),
)

_lock = threading.Lock()
_registry_folder: str | None = None


def open_clip_bundle_config(model_name: str) -> dict:
    """``{"model_name": ..., "model_cfg": ...}`` of an open_clip model known by name.

    Raises:
        ValueError: open_clip knows no config of that name.
    """
    import open_clip

    from uniovseg.model_zoo import register_open_clip_configs

    register_open_clip_configs()
    model_cfg = open_clip.get_model_config(model_name)
    if model_cfg is None:
        raise ValueError(
            f"open_clip knows no model config {model_name!r} (MODEL.UNIOVSEG.CLIP.MODEL_NAME)"
        )
    return {"model_name": model_name, "model_cfg": model_cfg}


def register_bundle_clip_config(path: str, model_name: str) -> None:
    """Makes the open_clip config of a bundle known to open_clip under ``model_name``.

    Args:
        path: The bundle's ``open_clip_config.json``.
        model_name: ``MODEL.UNIOVSEG.CLIP.MODEL_NAME`` of the bundle's config.

    Raises:
        ValueError: not valid JSON or not an open_clip model config; another model name than
            the config's; a config that differs from the one open_clip has under that name
            (also one registered from another bundle in this process); a config that would fetch
            weights or a tokenizer (a bundle loads nothing besides its own files).
    """
    import open_clip

    from uniovseg.model_zoo import register_open_clip_configs

    model_cfg = _read(path, model_name)
    with _lock:
        register_open_clip_configs()  # first: a later rescan must not shadow the bundle's name
        known = open_clip.get_model_config(model_name)
        if known is None:
            _register(model_name, model_cfg)
        elif known != model_cfg:
            differing = sorted(
                k for k in set(known) | set(model_cfg) if known.get(k) != model_cfg.get(k)
            )
            raise ValueError(
                f"the bundle's open_clip config of {model_name!r} differs from the one open_clip "
                f"knows by that name (in {', '.join(differing)}): it would build another CLIP "
                "than the bundle's weights"
            )


def _read(path: str, model_name: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path!r} is not JSON: {e}") from None
    model_cfg = data.get("model_cfg") if isinstance(data, dict) else None
    if not isinstance(model_cfg, dict) or not all(
        isinstance(model_cfg.get(key), kind)
        for key, kind in (("embed_dim", int), ("vision_cfg", dict), ("text_cfg", dict))
    ):
        raise ValueError(
            f"{path!r} is not an open_clip model config: expected {{'model_name': ..., "
            "'model_cfg': {'embed_dim': int, 'vision_cfg': {...}, 'text_cfg': {...}}}"
        )
    if data.get("model_name") != model_name:
        raise ValueError(
            f"{path!r} describes the open_clip model {data.get('model_name')!r}, but the "
            f"bundle's config builds {model_name!r} (MODEL.UNIOVSEG.CLIP.MODEL_NAME)"
        )
    fetching = [f"{tower}.{key}" for tower, key in _FETCHING_KEYS if model_cfg[tower].get(key)]
    if fetching:
        raise ValueError(
            f"{path!r} asks open_clip to fetch weights or a tokenizer ({', '.join(fetching)}); a "
            "bundle holds every weight itself and loads nothing else, so it is refused"
        )
    return model_cfg


def _register(model_name: str, model_cfg: dict) -> None:
    """Registers ``model_cfg`` under ``model_name`` through open_clip's public
    ``add_model_config``, which reads ``NAME.json`` files: the file lives in a folder of this
    process, removed at exit (open_clip keeps the configs it has read)."""
    import open_clip

    global _registry_folder
    if not _PLAIN_NAME.fullmatch(model_name):
        raise ValueError(
            f"open_clip model name {model_name!r} is not a plain name (letters, digits, '_', "
            "'-', '.'), so it cannot be registered from a bundle"
        )
    if _registry_folder is None:
        _registry_folder = tempfile.mkdtemp(prefix="uniovseg-open-clip-configs-")
        atexit.register(shutil.rmtree, _registry_folder, True)
    path = os.path.join(_registry_folder, f"{model_name}.json")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(model_cfg, handle)
    open_clip.add_model_config(path)
    if open_clip.get_model_config(model_name) != model_cfg:
        raise ValueError(f"open_clip did not register the bundle's model config {model_name!r}")
    logger.info("Registered the open_clip model config %r of a model bundle", model_name)
