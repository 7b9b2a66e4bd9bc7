"""Checkpoints that cannot run code when read and are never left half-written.

detectron2's ``DetectionCheckpointer`` unpickles ``.pkl`` files (arbitrary code runs while they
load), fvcore reads ``.pth`` files with ``torch.load`` without ``weights_only`` (so
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` turns the restricted unpickler off), a file that does not
exist fails on an ``assert``, and checkpoints are written in place: a run killed while saving
leaves a torn ``model_*.pth`` that ``--resume`` then cannot read. :class:`UniOVSegCheckpointer`
is the one checkpointer of uniovseg (training, evaluation, the predictor, benchmarks); it

- refuses pickle files (``.pkl``, ``.pickle``, ``.pyth``) with a message on how to convert them;
- reads ``.pth``/``.pt``/``.bin`` files with ``torch.load(weights_only=True)``, stated
  explicitly so that no environment variable can turn it off, and ``.safetensors`` files;
- writes each checkpoint and ``last_checkpoint`` to a temporary file in the same folder, then
  renames it over the target (``os.replace``), so a reader sees the old file or the new one;
- on resume, falls back from a torn checkpoint to the newest intact ``model_*.pth``;
- removes the temporary files that a save killed before its rename left behind;
- records which weights the last load left unused, missing or of the wrong shape
  (``incompatible_keys``), and :meth:`UniOVSegCheckpointer.check_loaded_weights` refuses them
  where evaluating a model with its trained weights silently dropped would be wrong (a stage-2
  checkpoint's adapter in a model built with alignment off, or a model with an adapter that the
  checkpoint does not hold).

:func:`read_checkpoint` is its reader, for tools that need the raw file content;
:func:`read_checkpoint_shapes` lists the weights a checkpoint holds without reading them.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import zipfile
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

import torch
from detectron2.checkpoint import DetectionCheckpointer

from uniovseg.atomic_files import atomic_write

__all__ = [
    "ALLOW_ANY_WEIGHT_MISMATCH",
    "CorruptCheckpointError",
    "UniOVSegCheckpointer",
    "UnsafeCheckpointError",
    "WeightMismatchError",
    "read_checkpoint",
    "read_checkpoint_shapes",
    "remove_stale_temporaries",
]

logger = logging.getLogger(__name__)

# Files that only Python's unrestricted unpickler reads (detectron2/Caffe2 model zoo, pycls).
PICKLE_SUFFIXES = (".pkl", ".pickle", ".pyth")
# The file in a save folder that names the latest checkpoint (fvcore's convention).
LAST_CHECKPOINT = "last_checkpoint"
# Periodic checkpoints of detectron2's PeriodicCheckpointer: model_0000999.pth, model_final.pth.
_PERIODIC_NAME = re.compile(r"^model_(\d+|final)\.pth$")
# Temporary files of _atomic_write for a checkpoint or last_checkpoint: .<name>.<pid>.tmp.
_TEMPORARY_NAME = re.compile(r"^\.(?:.+\.pth|" + LAST_CHECKPOINT + r")\.(\d+)\.tmp$")
# The first byte of a pickle of protocol 2 or later (the PROTO opcode).
_PICKLE_PROTO = b"\x80"
# In check_loaded_weights(allowed=...): every mismatch is allowed.
ALLOW_ANY_WEIGHT_MISMATCH = "*"
# State-dict prefix of the stage-2 multi-scale adapter (UniOVSeg.feature_adapter).
_ADAPTER_PREFIX = "feature_adapter."
# How many key groups a WeightMismatchError lists before eliding the rest.
_MAX_LISTED_GROUPS = 8


class UnsafeCheckpointError(ValueError):
    """The file holds pickled Python objects (refused: unpickling can run arbitrary code)."""


class CorruptCheckpointError(ValueError):
    """The file is truncated or damaged (e.g. a run was killed while writing it)."""


class WeightMismatchError(ValueError):
    """The checkpoint holds weights the model does not use, or lacks weights the model has."""


def _pickle_refusal(path: str) -> str:
    return (
        f"Refusing to load {path!r}: it is a Python pickle, and unpickling can run arbitrary "
        "code. If you trust the file, convert it once to a state dict of tensors, in .pth or "
        ".safetensors form, e.g.\n"
        "  python -c \"import pickle, torch; d = pickle.load(open('IN.pkl', 'rb')); "
        "d = d.get('model', d); torch.save({'model': {k: torch.as_tensor(v) for k, v in "
        "d.items()}}, 'OUT.pth')\"\n"
        "then point MODEL.WEIGHTS (or the weights argument) to OUT.pth."
    )


def _check_readable(path: str) -> None:
    """Refuses pickle files by name and paths that are not files."""
    if path.lower().endswith(PICKLE_SUFFIXES):
        raise UnsafeCheckpointError(_pickle_refusal(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint {path!r} does not exist (or is not a file).")


def read_checkpoint(path: str) -> Any:
    """Reads a checkpoint file without unpickling arbitrary Python objects.

    Args:
        path: A local ``.safetensors`` file, or a ``torch.save`` file (``.pth``/``.pt``/``.bin``)
            holding only tensors and plain containers/numbers/strings (a state dict, detectron2's
            ``{"model": ..., "optimizer": ..., "iteration": ...}``...).

    Returns:
        What ``torch.save`` stored, on the CPU; for ``.safetensors``, the flat
        ``name -> tensor`` dict.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        UnsafeCheckpointError: a pickle file (by suffix), or a file holding pickled objects that
            ``torch.load(weights_only=True)`` refuses.
        CorruptCheckpointError: the file is truncated, damaged or not a checkpoint.
    """
    _check_readable(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu")
        # The header parser and the reader fail with several exception types on a bad file.
        except Exception as e:
            raise CorruptCheckpointError(
                f"Could not read checkpoint {path!r}: the .safetensors file is truncated or "
                f"corrupt ({_first_line(e)})."
            ) from e
    return _load_torch_file(path)


def read_checkpoint_shapes(path: str) -> dict[str, tuple[int, ...]]:
    """The parameter names and shapes of the model weights in a checkpoint, read cheaply.

    Only the file's index is read: ``.safetensors`` headers, or a ``torch.save`` file memory-mapped
    (``torch.load(mmap=True, weights_only=True)``), so a 1.4 GB checkpoint costs milliseconds.
    Files in torch's legacy (pre-zip) format are read in full.

    Args:
        path: A local checkpoint, as for :func:`read_checkpoint`: a state dict or detectron2's
            ``{"model": state_dict, ...}``. A ``module.`` prefix on every key (DDP) is removed,
            as detectron2's checkpointer does when loading.

    Returns:
        Name -> shape of every tensor of the model state dict (non-tensor entries are left out).

    Raises:
        FileNotFoundError, UnsafeCheckpointError, CorruptCheckpointError: see
            :func:`read_checkpoint`.
    """
    _check_readable(path)
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        try:
            with safe_open(path, framework="pt", device="cpu") as f:
                state = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        except Exception as e:  # as in read_checkpoint: many exception types, one meaning
            raise CorruptCheckpointError(
                f"Could not read checkpoint {path!r}: the .safetensors file is truncated or "
                f"corrupt ({_first_line(e)})."
            ) from e
    else:
        loaded = _load_torch_file(path, mmap=zipfile.is_zipfile(path))  # mmap needs the zip format
        if isinstance(loaded, Mapping) and isinstance(loaded.get("model"), Mapping):
            loaded = loaded["model"]
        if not isinstance(loaded, Mapping):
            return {}
        state = {k: tuple(v.shape) for k, v in loaded.items() if torch.is_tensor(v)}
    if state and all(str(k).startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def _load_torch_file(path: str, *, mmap: bool = False) -> Any:
    """``torch.load(weights_only=True)`` with its failures sorted into refused and corrupt."""
    try:
        # weights_only=True explicitly: the default can be flipped by an environment variable.
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        if _is_pickled_data(path):
            raise UnsafeCheckpointError(
                f"Refusing to load {path!r}: torch.load(weights_only=True) found pickled Python "
                "objects other than tensors, and unpickling them can run arbitrary code. If you "
                "trust the file, re-save only its tensors, e.g. torch.save({'model': "
                "model.state_dict()}, 'model.pth') or safetensors.torch.save_file(state_dict, "
                f"'model.safetensors'). Reader error: {_first_line(e)}"
            ) from e
        raise CorruptCheckpointError(_corrupt_message(path, e)) from e
    # A damaged file fails in the zip reader or the unpickler with many exception types.
    except Exception as e:
        raise CorruptCheckpointError(_corrupt_message(path, e)) from e


def _is_pickled_data(path: str) -> bool:
    """Whether a file torch could not read is a pickle (zip from torch.save, or a raw pickle)
    rather than damaged bytes (a killed write can leave zeros or nothing)."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        return f.read(1) == _PICKLE_PROTO


def _corrupt_message(path: str, error: BaseException) -> str:
    return (
        f"Could not read checkpoint {path!r} with torch.load(weights_only=True): the file is "
        "truncated or corrupt (e.g. a run was killed while saving it), or it is not a "
        f"torch.save/.safetensors checkpoint. Reader error: {_first_line(error)}"
    )


def _key_groups(keys: Sequence[str]) -> str:
    """``a.b.w, a.b.v, a.c.w`` -> ``a.b.* (2), a.c.w``: keys grouped by their module path (the
    first two dotted parts), at most :data:`_MAX_LISTED_GROUPS` groups."""
    groups: dict[str, list[str]] = {}
    for key in keys:
        parts = key.split(".")
        groups.setdefault(".".join(parts[:2]) if len(parts) > 2 else key, []).append(key)
    listed = [
        members[0] if len(members) == 1 and members[0] == group else f"{group}.* ({len(members)})"
        for group, members in groups.items()
    ]
    more = len(listed) - _MAX_LISTED_GROUPS
    text = ", ".join(listed[:_MAX_LISTED_GROUPS])
    return text + (f" and {more} more groups" if more > 0 else "")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _temporary_path(path: str) -> str:
    """The temporary file :func:`_atomic_write` writes ``path`` through (hidden, without the
    ``.pth`` suffix so it is never taken for a checkpoint, named after the writing process)."""
    directory = os.path.dirname(path) or "."
    return os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")


def _process_is_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (True when it cannot be told)."""
    if os.name != "posix":
        return True  # os.kill(pid, 0) would terminate the process on Windows
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists but belongs to another user
        return True
    return True


def remove_stale_temporaries(directory: str) -> list[str]:
    """Removes the temporary files of saves killed before their rename from ``directory``.

    Only the names :func:`_atomic_write` gives to the temporary file of a checkpoint or of
    ``last_checkpoint`` (``.model_0000999.pth.<pid>.tmp``, ``.last_checkpoint.<pid>.tmp``) are
    considered, and only those whose writer is gone: no process with that pid runs on this
    machine, or the pid is this process's own (it is not saving while it cleans, and a restarted
    container often reuses the pid of the killed run).

    Returns:
        The removed paths.
    """
    if not directory or not os.path.isdir(directory):
        return []
    removed = []
    for name in sorted(os.listdir(directory)):
        match = _TEMPORARY_NAME.match(name)
        if not match:
            continue
        pid = int(match.group(1))
        if pid != os.getpid() and _process_is_alive(pid):
            continue
        path = os.path.join(directory, name)
        try:
            os.remove(path)
        except FileNotFoundError:  # removed meanwhile by another cleaner
            continue
        removed.append(path)
    if removed:
        logger.info(
            "Removed %d temporary file(s) left by interrupted checkpoint saves in %s: %s",
            len(removed),
            directory,
            ", ".join(os.path.basename(p) for p in removed),
        )
    return removed


def _atomic_write(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """Writes ``path`` through its hidden temporary file, durably (fsync of the file and of the
    rename), so ``path`` is always either its old content or the complete new one."""
    with atomic_write(path, temporary=_temporary_path(path), durable=True) as handle:
        write(handle)


class UniOVSegCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` that loads safely, saves atomically and resumes past torn files.

    Same constructor and methods as detectron2's. ``save_dir`` must be a local folder (writes go
    through ``os.replace``). After :meth:`resume_or_load`, ``resumed_from`` is the checkpoint
    the run resumed from ("" when it started over).
    """

    def __init__(self, model, save_dir: str = "", *, save_to_disk=None, **checkpointables):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.resumed_from = ""
        # None until resume_or_load(resume=True) ran; then whether it resumed (see has_checkpoint).
        self._resumed: bool | None = None
        # The save folder already rid of stale temporary files ("" if none yet).
        self._cleaned_dir = ""
        # What the last load() of model weights left out (detectron2's _IncompatibleKeys:
        # missing_keys, unexpected_keys, incorrect_shapes); None before any weights are loaded.
        self.incompatible_keys = None
        self.loaded_from = ""

    # ------------------------------------------------------------------ loading
    def load(self, path: str, *args, **kwargs) -> dict[str, Any]:
        """As detectron2's, but a missing local file raises FileNotFoundError, not an assert.

        Raises:
            FileNotFoundError: ``path`` is neither a local file nor a URL.
            UnsafeCheckpointError, CorruptCheckpointError: see :func:`read_checkpoint`.
        """
        if path and "://" not in path and not os.path.isfile(path.split("?", 1)[0]):
            raise FileNotFoundError(
                f"Checkpoint {path!r} does not exist (or is not a file); check MODEL.WEIGHTS."
            )
        self.incompatible_keys = None
        self.loaded_from = ""
        try:
            loaded = super().load(path, *args, **kwargs)
        finally:
            # detectron2 resets this only on success; a refused file would break the next load.
            self._parsed_url_during_load = None
        if self.incompatible_keys is not None:
            self.loaded_from = path
        return loaded

    def _load_model(self, checkpoint: dict[str, Any]):
        incompatible = super()._load_model(checkpoint)
        self.incompatible_keys = incompatible
        return incompatible

    def check_loaded_weights(
        self, *, allowed: Sequence[str] = (), provided: Sequence[str] = ()
    ) -> None:
        """Refuses a load that left trained weights unused or model weights uninitialised.

        detectron2 only logs these (a stage-2 checkpoint evaluated with a config that builds no
        adapter would silently give the baseline's numbers). Call it after :meth:`load` or
        :meth:`resume_or_load`, where every weight of the model must come from the checkpoint
        (evaluation); training from other weights (stage 2 from stage 1) must not call it.

        Args:
            allowed: State-dict key prefixes whose mismatches are accepted on purpose (e.g.
                ``["feature_adapter."]``: evaluate the baseline with a stage-2 checkpoint);
                :data:`ALLOW_ANY_WEIGHT_MISMATCH` (``"*"``) accepts every mismatch.
            provided: Key prefixes of weights that the model got elsewhere, so that the
                checkpoint may lack them (e.g. ``backbone.clip_model.`` when CLIP was loaded from
                its pretrained weights); weights under them that the checkpoint does hold must
                still fit.

        Raises:
            WeightMismatchError: the checkpoint holds weights that the model does not use
                (unexpected keys, or a shape that differs from the model's), or the model has
                weights that the checkpoint does not hold. The message names them, grouped by
                module, and the config key that accepts them.
            ValueError: no model weights were loaded yet.
        """
        if self.incompatible_keys is None:
            raise ValueError("check_loaded_weights() needs a load() of model weights first")
        if ALLOW_ANY_WEIGHT_MISMATCH in allowed:
            return
        allowed = tuple(allowed)

        def kept(keys, excused=()):
            return [k for k in keys if not k.startswith(allowed + tuple(excused))]

        incompatible = self.incompatible_keys
        unused = kept(incompatible.unexpected_keys)
        wrong_shape = [
            (k, tuple(a), tuple(b)) for k, a, b in incompatible.incorrect_shapes if kept([k])
        ]
        # detectron2 drops a wrongly shaped weight before loading: it is also "missing".
        reshaped = {k for k, _, _ in incompatible.incorrect_shapes}
        missing = [k for k in kept(incompatible.missing_keys, provided) if k not in reshaped]
        if not (unused or wrong_shape or missing):
            return
        lines = [f"The weights of {self.loaded_from!r} do not fit the model built by the config:"]
        if unused:
            lines.append(
                f"- unused, the model has no such weights: {_key_groups(unused)}. Trained weights "
                "would be silently ignored."
            )
        if wrong_shape:
            listed = ", ".join(f"{k} {a} vs {b}" for k, a, b in wrong_shape[:_MAX_LISTED_GROUPS])
            lines.append(f"- of another shape (checkpoint vs model): {listed}.")
        if missing:
            lines.append(
                f"- missing from the checkpoint (they would keep their random initial values): "
                f"{_key_groups(missing)}."
            )
        if any(k.startswith(_ADAPTER_PREFIX) for k in unused):
            lines.append(
                "The checkpoint holds a stage-2 feature adapter but the config builds none "
                "(MODEL.UNIOVSEG.ALIGNMENT.ENABLED False): evaluate it with alignment on "
                "(configs/eval/benchmarks.yaml), or, for the paper's baseline on purpose, with "
                "configs/eval/benchmarks_baseline.yaml."
            )
        if any(k.startswith(_ADAPTER_PREFIX) for k in missing):
            lines.append(
                "The config builds the stage-2 feature adapter (MODEL.UNIOVSEG.ALIGNMENT.ENABLED "
                "True) but the checkpoint has none (a stage-1 or converted release checkpoint?): "
                "give the stage-2 checkpoint, or evaluate the baseline with "
                "configs/eval/benchmarks_baseline.yaml."
            )
        lines.append(
            "To evaluate anyway, accept the mismatch explicitly (after the flags): "
            "MODEL.UNIOVSEG.TEST.ALLOWED_WEIGHT_MISMATCH \"['feature_adapter.']\" (state-dict key "
            "prefixes), or \"['*']\" for any mismatch."
        )
        raise WeightMismatchError("\n".join(lines))

    def _load_file(self, filename: str) -> dict[str, Any]:
        if filename.lower().endswith(PICKLE_SUFFIXES):
            raise UnsafeCheckpointError(_pickle_refusal(filename))
        return super()._load_file(filename)  # the rest goes through _torch_load

    def _torch_load(self, f: str) -> Any:
        loaded = read_checkpoint(f)
        if not isinstance(loaded, Mapping):
            raise ValueError(
                f"Checkpoint {f!r} holds a {type(loaded).__name__}, not a state dict or a "
                "{'model': state_dict, ...} dict."
            )
        return loaded

    # ------------------------------------------------------------------ saving
    def save(self, name: str, **kwargs: Any) -> None:
        """Saves ``{save_dir}/{name}.pth`` atomically, then tags it in ``last_checkpoint``."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        self._remove_stale_temporaries()
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", save_file)
        _atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, LAST_CHECKPOINT)
        _atomic_write(path, lambda f: f.write(last_filename_basename.encode("utf-8")))

    # ------------------------------------------------------------------ resuming
    def has_checkpoint(self) -> bool:
        """Whether the save folder holds a checkpoint to resume from.

        Before :meth:`resume_or_load` with ``resume=True``: a checkpoint named by
        ``last_checkpoint`` or any ``model_*.pth`` exists. After it: it did resume (False when
        every checkpoint was torn and the run started over), which is what detectron2's
        ``DefaultTrainer.resume_or_load`` asks to set the start iteration.
        """
        if self._resumed is not None:
            return self._resumed
        return bool(self._resume_candidates())

    def get_checkpoint_file(self) -> str:
        """The checkpoint a resume tries first ("" if none; it may turn out to be torn)."""
        candidates = self._resume_candidates()
        return candidates[0] if candidates else ""

    def resume_or_load(self, path: str, *, resume: bool = True) -> dict[str, Any]:
        """Resumes from the newest intact checkpoint of ``save_dir``, else loads ``path``.

        With ``resume``, the checkpoint named by ``last_checkpoint`` is tried first, then the
        other ``model_*.pth`` newest first; a torn one (:class:`CorruptCheckpointError`) is
        skipped with a warning. A refused one (:class:`UnsafeCheckpointError`) stops the run:
        someone put it there. When none is intact, or without ``resume``, only the model
        weights are loaded from ``path`` ("": none) and training starts at iteration 0.

        Returns:
            What :meth:`load` returns.
        """
        self.resumed_from = ""
        self._remove_stale_temporaries()
        if resume:
            self._resumed = False
            candidates = self._resume_candidates()
            for candidate in candidates:
                try:
                    checkpoint = self.load(candidate)
                except CorruptCheckpointError as e:
                    logger.warning(
                        "Cannot resume from %s, trying an older checkpoint: %s", candidate, e
                    )
                    continue
                self._resumed = True
                self.resumed_from = candidate
                return checkpoint
            if candidates:
                logger.warning(
                    "No intact checkpoint in %s (tried %s): starting over from MODEL.WEIGHTS %r",
                    self.save_dir,
                    ", ".join(os.path.basename(c) for c in candidates),
                    path,
                )
        return self.load(path, checkpointables=[])

    def _remove_stale_temporaries(self) -> None:
        """Once per save folder, on the process that saves (the main one): see
        :func:`remove_stale_temporaries`."""
        if not self.save_dir or not self.save_to_disk or self._cleaned_dir == self.save_dir:
            return
        remove_stale_temporaries(self.save_dir)
        self._cleaned_dir = self.save_dir

    def _resume_candidates(self) -> list[str]:
        """Existing checkpoints to resume from, in order: the one ``last_checkpoint`` names, then
        ``model_final.pth`` and ``model_<iteration>.pth``, newest first."""
        if not self.save_dir or not os.path.isdir(self.save_dir):
            return []
        tagged = ""
        tag_file = os.path.join(self.save_dir, LAST_CHECKPOINT)
        if os.path.isfile(tag_file):
            with open(tag_file, encoding="utf-8", errors="replace") as f:
                name = f.read().strip()
            if not name:
                logger.warning("%s is empty; looking for the newest checkpoint instead", tag_file)
            elif not os.path.isfile(os.path.join(self.save_dir, name)):
                logger.warning(
                    "%s names %r, which does not exist; looking for the newest checkpoint instead",
                    tag_file,
                    name,
                )
            else:
                tagged = os.path.join(self.save_dir, name)
        periodic = []
        for name in os.listdir(self.save_dir):
            match = _PERIODIC_NAME.match(name)
            path = os.path.join(self.save_dir, name)
            if match and os.path.isfile(path):
                iteration = float("inf") if match.group(1) == "final" else int(match.group(1))
                periodic.append((iteration, os.path.getmtime(path), path))
        newest_first = [path for *_, path in sorted(periodic, reverse=True)]
        return ([tagged] if tagged else []) + [p for p in newest_first if p != tagged]
