"""A model bundle's ``model.safetensors``: the whole state dict, tied weights stored once, read
without unpickling anything.

safetensors refuses to hold one memory block under two names, so a tensor identical to an
earlier one (the same storage, offset, shape and strides: a tied weight) is stored once and its
other names are kept in the file's metadata as aliases; tensors that merely overlap in memory
(views of one buffer) are stored as copies. Reading restores every name.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import torch

from uniovseg.checkpoint import (
    CorruptCheckpointError,
    UnsafeCheckpointError,
    read_checkpoint,
    read_checkpoint_shapes,
)

__all__ = ["read_weight_shapes", "read_weights", "storable_tensors", "write_weights"]

# safetensors metadata (str -> str).
_FORMAT_KEY = "uniovseg_bundle_format"
_FORMAT_VERSION = "1"
# JSON {alias: stored name} of tied weights.
_ALIASES_KEY = "uniovseg_aliases"
# Bytes that start a torch.save zip or a raw pickle (protocol >= 2).
_PICKLE_STARTS = (b"PK\x03\x04", b"\x80")


def storable_tensors(
    state_dict: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors that safetensors accepts, and the aliases of tied weights.

    Args:
        state_dict: Name -> tensor (any device, not meta).

    Returns:
        ``(name -> contiguous CPU tensor, alias name -> stored name)``.

    Raises:
        ValueError: an entry that is not a tensor, or a tensor on the meta device.
    """
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    first_of: dict[tuple, str] = {}
    for name, tensor in state_dict.items():
        if not isinstance(name, str) or not torch.is_tensor(tensor):
            raise ValueError(f"not a state dict: entry {name!r} is not a name -> tensor pair")
        tensor = tensor.detach()
        if tensor.is_meta:
            raise ValueError(f"weight {name!r} is on the meta device (it has no values to save)")
        if tensor.numel():
            identity = (
                tensor.device,
                tensor.untyped_storage().data_ptr(),
                tensor.storage_offset(),
                tuple(tensor.shape),
                tuple(tensor.stride()),
                tensor.dtype,
            )
            if identity in first_of:
                aliases[name] = first_of[identity]
                continue
            first_of[identity] = name
        tensors[name] = tensor
    by_storage: dict[tuple, list[str]] = {}
    for name, tensor in tensors.items():
        if tensor.numel():
            by_storage.setdefault((tensor.device, tensor.untyped_storage().data_ptr()), []).append(
                name
            )
    for names in by_storage.values():
        if len(names) > 1:  # overlapping views of one buffer: each gets its own copy
            for name in names:
                tensors[name] = tensors[name].clone()
    return {k: v.to("cpu").contiguous() for k, v in tensors.items()}, aliases


def write_weights(path: str, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Saves ``state_dict`` as safetensors, tied weights once (see :func:`storable_tensors`)."""
    from safetensors.torch import save_file

    tensors, aliases = storable_tensors(state_dict)
    metadata = {"format": "pt", _FORMAT_KEY: _FORMAT_VERSION}
    if aliases:
        metadata[_ALIASES_KEY] = json.dumps(aliases, sort_keys=True)
    save_file(tensors, path, metadata=metadata)


def read_weight_shapes(path: str) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """Names and shapes of every weight (aliases included) from the file's header only.

    Returns:
        ``(name -> shape, alias -> stored name)``.

    Raises:
        FileNotFoundError: no such file.
        UnsafeCheckpointError: a pickle or ``torch.save`` file (refused: unpickling runs code).
        CorruptCheckpointError: not a safetensors file, or damaged, or bad aliases.
        ValueError: a bundle format this version does not read.
    """
    from safetensors import safe_open

    with open(path, "rb") as handle:
        start = handle.read(9)
    if start.startswith(_PICKLE_STARTS):
        raise UnsafeCheckpointError(
            f"Refusing to load {path!r}: it is a pickle (or a torch.save file), not safetensors. "
            "A bundle's weights are read as safetensors only, because unpickling can run "
            "arbitrary code; re-save weights you trust with save_pretrained."
        )
    # safetensors: an 8-byte header length, then the JSON header.
    if len(start) < 9 or start[8:9] != b"{":
        raise CorruptCheckpointError(
            f"{path!r} is not a safetensors file (truncated, damaged or of another format)"
        )
    shapes = read_checkpoint_shapes(path)
    try:
        with safe_open(path, framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
    except Exception as e:  # the header parser fails with several types on a bad file
        raise CorruptCheckpointError(f"cannot read the metadata of {path!r}: {e}") from None
    # A safetensors state dict written by other tools has no format key: read as format 1.
    version = metadata.get(_FORMAT_KEY, _FORMAT_VERSION)
    if version != _FORMAT_VERSION:
        raise ValueError(
            f"{path!r} is a bundle of format {version!r}; this uniovseg reads format "
            f"{_FORMAT_VERSION!r} (update uniovseg)"
        )
    try:
        aliases = json.loads(metadata.get(_ALIASES_KEY, "{}"))
    except json.JSONDecodeError as e:
        raise CorruptCheckpointError(
            f"the tied-weight aliases of {path!r} are not JSON: {e}"
        ) from None
    if not isinstance(aliases, dict) or not all(
        isinstance(alias, str) and isinstance(name, str) and name in shapes and alias not in shapes
        for alias, name in aliases.items()
    ):
        raise CorruptCheckpointError(
            f"the tied-weight aliases of {path!r} do not name stored tensors: {aliases!r}"
        )
    shapes.update({alias: shapes[name] for alias, name in aliases.items()})
    return shapes, aliases


def read_weights(
    path: str, aliases: Mapping[str, str], device: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """Every weight of the file on ``device``; each alias is the same tensor as its stored name
    (check the file first with :func:`read_weight_shapes`, which also gives ``aliases``).

    Raises:
        CorruptCheckpointError: the file cannot be read.
    """
    if not path.endswith(".safetensors"):  # read_checkpoint picks the format by extension
        raise ValueError(f"bundle weights are a .safetensors file, got {path!r}")
    state = read_checkpoint(path)
    if torch.device(device).type != "cpu":
        state = {name: tensor.to(device) for name, tensor in state.items()}
    for alias, name in aliases.items():
        state[alias] = state[name]
    return state
