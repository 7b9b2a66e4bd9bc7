"""Builds an open_clip model and loads its weights safely (no arbitrary unpickling).

open_clip 3.3's own ``create_model(pretrained=<file>)`` reads ``.bin``/``.pt`` files with
``torch.load(weights_only=True)`` but falls back to an unrestricted ``torch.load`` when that keyword
raises ``TypeError``, and its error messages do not say which file failed. So the model is always
built with ``pretrained=None`` and the state dict is read here: safetensors, or
``torch.load(weights_only=True)`` with no fallback.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator, Mapping

import torch

logger = logging.getLogger(__name__)

__all__ = [
    "clip_state_dict_shapes",
    "load_open_clip",
    "read_clip_state_dict",
    "without_random_init_warning",
]

# Suffixes that make a `pretrained` string a file path rather than an open_clip tag.
_WEIGHT_SUFFIXES = (".bin", ".safetensors", ".pt", ".pth")
# How many offending keys a load error lists before eliding the rest.
_MAX_KEYS_IN_ERROR = 8
# Seconds to wait for a TCP connection to the Hugging Face hub before calling it unreachable.
_HUB_PROBE_TIMEOUT_S = 5.0


def load_open_clip(
    model_name: str, pretrained: str = "", *, device: str | torch.device | None = None
) -> torch.nn.Module:
    """Builds the open_clip model ``model_name`` and loads ``pretrained`` weights into it.

    Args:
        model_name: an open_clip model config name (e.g. ``"convnext_large_d_320"``) or one packaged
            with uniovseg (e.g. ``"uniovseg_tiny_convnext"``; registered automatically).
            ``hf-hub:``/``local-dir:`` schemas are not supported: give a config name here and the
            weights file as ``pretrained``.
        pretrained: ``""`` for random weights; an open_clip pretrained tag of this model (e.g.
            ``"laion2b_s29b_b131k_ft_soup"``; taken from the local cache, else downloaded); or
            a local ``.safetensors``/``.bin``/``.pt``/``.pth`` file holding the model's state dict,
            possibly wrapped as ``{"state_dict": ...}`` with ``module.`` prefixes (open_clip
            training checkpoints).
        device: where to build the model; ``None`` uses torch's current default device, so a
            ``with torch.device("meta"):`` block builds it without allocating weights.

    Returns:
        The open_clip model (``open_clip.CLIP``) in float32, eval mode, on ``device``.

    Raises:
        ValueError: unknown model name or tag, weights of a tag that are neither cached nor
            downloadable (one line saying what to do), unreadable/corrupt file, a file holding
            pickled objects other than tensors, or a state dict that does not fit the model.
        FileNotFoundError: ``pretrained`` looks like a path but no such file exists.
    """
    import open_clip

    from uniovseg.model_zoo import register_open_clip_configs

    register_open_clip_configs()
    if ":" in model_name:
        raise ValueError(
            f"open_clip model name {model_name!r} uses a schema, which load_open_clip does not "
            "support; pass a model config name (see open_clip.list_models()) and the weights file "
            "as `pretrained`."
        )
    model_cfg = open_clip.get_model_config(model_name)
    if model_cfg is None:
        raise ValueError(
            f"Unknown open_clip model {model_name!r}. Use one of open_clip.list_models() (e.g. "
            "'convnext_large_d_320') or a JSON config in uniovseg/model_zoo/open_clip_configs/."
        )
    checkpoint_path, tag_cfg = _resolve_pretrained(model_name, pretrained)
    if device is None:
        device = torch.get_default_device()

    # Never let open_clip read weights itself (see module docstring); its "initialized randomly"
    # warning is misleading when weights follow, so it is filtered in that case only.
    quiet = without_random_init_warning() if checkpoint_path else contextlib.nullcontext()
    with quiet:
        model = open_clip.create_model(
            model_name,
            pretrained=None,
            device=device,
            force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
        )

    if checkpoint_path:
        state_dict = read_clip_state_dict(checkpoint_path)
        _load_into(model, state_dict, checkpoint_path, model_name)
        logger.info("Loaded open_clip %s weights from %s", model_name, checkpoint_path)
    return model.eval()


def read_clip_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Reads an open_clip state dict from a local file without unpickling arbitrary objects.

    Args:
        path: a ``.safetensors`` file, or a ``torch.save`` file (``.bin``/``.pt``/``.pth``) read
            with ``weights_only=True``. ``{"state_dict": {...}}`` wrappers and ``module.`` key
            prefixes (DDP) are removed.

    Returns:
        Parameter name -> tensor, on the CPU.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: the file is corrupt, holds non-tensor objects, or is not a state dict.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CLIP weights file {path!r} does not exist (or is not a file).")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            checkpoint = load_file(path, device="cpu")
        else:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    # A damaged file can fail in the zip reader, the unpickler or the header parser with many
    # exception types; all of them mean the same thing to the user.
    except Exception as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"Could not read CLIP weights from {path!r}: the file is corrupt, or it holds pickled "
            "objects other than tensors, which are refused because unpickling can run arbitrary "
            "code. Re-save it as .safetensors or with torch.save(model.state_dict()). "
            f"Reader error: {first_line}"
        ) from e

    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("state_dict"), Mapping):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, Mapping) or not checkpoint:
        raise ValueError(
            f"CLIP weights file {path!r} holds a {type(checkpoint).__name__}, not a non-empty "
            "state dict (parameter name -> tensor)."
        )
    bad = [k for k, v in checkpoint.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        raise ValueError(
            f"CLIP weights file {path!r} is not a state dict: entries {_elide(bad)} are not "
            "name -> tensor pairs."
        )
    return {k.removeprefix("module."): v for k, v in checkpoint.items()}


def clip_state_dict_shapes(model_name: str) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape of the open_clip model ``model_name``, without allocating it.

    The model is built on the ``meta`` device (no weights read, no memory allocated), so a
    checkpoint can be compared with it before anything is loaded.

    Raises:
        ValueError: unknown model name (see :func:`load_open_clip`).
    """
    # Built under a meta default device: create_model(device="meta") would initialise the
    # weights on the CPU first (seconds for convnext_large) and only then move them.
    # open_clip's "initialized randomly" warning would be misleading: no weights exist at all.
    with without_random_init_warning(), torch.device("meta"):
        model = load_open_clip(model_name, "")
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _resolve_pretrained(model_name: str, pretrained: str) -> tuple[str, dict]:
    """Turns ``pretrained`` into a local file path ("" for none) and the tag's config ({})."""
    if not pretrained:
        return "", {}
    if os.path.isfile(pretrained):
        return pretrained, {}
    if os.path.isdir(pretrained):
        raise ValueError(
            f"CLIP weights path {pretrained!r} is a directory; point to the weights file inside it."
        )

    from open_clip import pretrained as open_clip_pretrained

    tag_cfg = open_clip_pretrained.get_pretrained_cfg(model_name, pretrained)
    if tag_cfg:
        return _tag_weights_file(model_name, pretrained, tag_cfg), tag_cfg
    if pretrained.endswith(_WEIGHT_SUFFIXES) or os.sep in pretrained:
        raise FileNotFoundError(f"CLIP weights file {pretrained!r} does not exist.")
    tags = open_clip_pretrained.list_pretrained_tags_by_model(model_name)
    raise ValueError(
        f"{pretrained!r} is neither a weights file nor an open_clip pretrained tag of "
        f"{model_name!r} (known tags: {tags or 'none'}). Use a tag, a local "
        f"{'/'.join(_WEIGHT_SUFFIXES)} path, or '' for random weights."
    )


def _tag_weights_file(model_name: str, tag: str, tag_cfg: dict) -> str:
    """The local file of an open_clip tag: from the caches if there, else downloaded.

    The caches are read first because the hub client, when the network is down, retries for about
    a minute before it looks into its own cache. A hub that cannot be reached fails at once.

    Raises:
        ValueError: not cached and not downloadable; one line that says what to do.
    """
    from open_clip import pretrained as open_clip_pretrained

    cached = _cached_tag_file(tag_cfg)
    if cached:
        logger.info("open_clip weights %s/%s found in the cache: %s", model_name, tag, cached)
        return cached
    remedy = (
        "download the weights file where there is network access and set "
        "MODEL.UNIOVSEG.CLIP.PRETRAINED (the `pretrained` argument) to its local path, or set "
        "MODEL.WEIGHTS to a checkpoint that holds the CLIP weights (then none are downloaded)"
    )
    reason = _hub_unreachable_reason() if tag_cfg.get("hf_hub") else None
    if reason is not None:
        raise ValueError(
            f"Cannot get the open_clip weights {model_name!r}/{tag!r}: they are not in the local "
            f"cache and {reason}. To fix it, {remedy}."
        )
    try:
        path = open_clip_pretrained.download_pretrained(tag_cfg)
    except Exception as e:  # hub/network errors come in many types; all mean "no file"
        logger.debug("open_clip download of %s/%s failed", model_name, tag, exc_info=True)
        raise ValueError(
            f"Could not download the open_clip weights {model_name!r}/{tag!r} "
            f"({_first_line(e)}). To fix it, {remedy}."
        ) from None  # the hub's own traceback adds nothing the message does not say
    if not path or not os.path.isfile(path):
        raise ValueError(
            f"open_clip returned no weights file for {model_name!r}/{tag!r}. To fix it, {remedy}."
        )
    return path


def _cached_tag_file(tag_cfg: dict) -> str:
    """The already downloaded file of a tag in the Hugging Face or open_clip URL cache, or ""."""
    if tag_cfg.get("file"):
        return tag_cfg["file"] if os.path.isfile(tag_cfg["file"]) else ""
    hub = tag_cfg.get("hf_hub", "")
    if hub:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            return ""
        from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

        repo_id, filename = os.path.split(hub)
        filename = filename or HF_WEIGHTS_NAME
        # open_clip prefers the .safetensors twin of a .bin/.pth file when the hub has one.
        stem, suffix = os.path.splitext(filename)
        names = [filename]
        if filename == HF_WEIGHTS_NAME:
            names.insert(0, HF_SAFE_WEIGHTS_NAME)
        elif suffix in (".bin", ".pth"):
            names.insert(0, stem + ".safetensors")
        for name in names:
            found = try_to_load_from_cache(repo_id, name)
            if isinstance(found, str) and os.path.isfile(found):
                return found
        return ""
    url = tag_cfg.get("url", "")
    # open_clip's own URL cache (download_pretrained_from_url's default folder).
    path = os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(url)) if url else ""
    return path if path and os.path.isfile(path) else ""


def _hub_unreachable_reason() -> str | None:
    """Why the Hugging Face hub cannot be reached from here (None: it can, or cannot be told)."""
    from urllib.parse import urlsplit
    from urllib.request import getproxies

    try:
        from huggingface_hub import constants
    except ImportError:
        return "the huggingface_hub package is not installed"
    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    if getproxies().get("https"):
        return None  # only the proxy knows; let the hub client try
    endpoint = urlsplit(constants.ENDPOINT)
    host = endpoint.hostname or ""
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=_HUB_PROBE_TIMEOUT_S).close()
    except OSError as e:
        return f"the hub {host}:{port} cannot be reached ({_first_line(e)})"
    return None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _load_into(
    model: torch.nn.Module, state_dict: dict[str, torch.Tensor], path: str, model_name: str
) -> None:
    """Strictly loads ``state_dict`` into ``model``; a mismatch raises a ValueError naming it."""
    expected = model.state_dict()
    # Older open_clip checkpoints store logit_scale as a 1-element tensor, newer as a scalar.
    for name in ("logit_scale", "logit_bias"):
        if name in state_dict and name in expected:
            if state_dict[name].numel() == expected[name].numel() == 1:
                state_dict[name] = state_dict[name].reshape(expected[name].shape)
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong_shape = [
        f"{k} {tuple(v.shape)} != {tuple(expected[k].shape)}"
        for k, v in state_dict.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if missing or unexpected or wrong_shape:
        raise ValueError(
            f"CLIP weights {path!r} do not fit open_clip model {model_name!r}: "
            f"missing {_elide(missing)}, unexpected {_elide(unexpected)}, "
            f"wrong shape {_elide(wrong_shape)}. Check MODEL.UNIOVSEG.CLIP.MODEL_NAME."
        )
    on_meta = any(t.is_meta for t in expected.values())
    model.load_state_dict(state_dict, strict=True, assign=on_meta)


def _elide(items: list) -> str:
    shown = ", ".join(str(i) for i in items[:_MAX_KEYS_IN_ERROR])
    extra = len(items) - _MAX_KEYS_IN_ERROR
    return f"[{shown}{f', ... ({extra} more)' if extra > 0 else ''}]"


@contextlib.contextmanager
def without_random_init_warning() -> Iterator[None]:
    """Drops open_clip's "No pretrained weights loaded ... initialized randomly" log record inside
    the block: for callers that build a CLIP with ``pretrained=""`` and load every weight right
    after (a checkpoint, a model bundle), where that warning would mislead."""
    log_filter = _DropRandomInitWarning()
    root = logging.getLogger()
    root.addFilter(log_filter)
    try:
        yield
    finally:
        root.removeFilter(log_filter)


class _DropRandomInitWarning(logging.Filter):
    """Drops open_clip's 'No pretrained weights loaded' record (weights are loaded afterwards)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No pretrained weights loaded")
