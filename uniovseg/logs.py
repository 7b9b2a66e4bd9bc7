"""The one logging set-up of uniovseg's entry points (train_net, tools/, datasets/prepare_*.py).

Library modules only call ``logging.getLogger(__name__)``; entry points call :func:`setup_logging`
once, before they import torch or detectron2. It is quiet by default:

- ``uniovseg`` (and ``detectron2``, whose trainer reports progress) log at INFO, DEBUG with
  ``verbose``;
- third-party libraries log warnings only: open_clip logs its "Loaded built-in ... config" /
  "Instantiating model architecture" lines through the *root* logger, so the root logger stays at
  WARNING, and ``open_clip``, ``timm``, ``fvcore``, ``iopath`` and ``huggingface_hub`` are set to
  WARNING in case they use named loggers (in a run with ``output_dir``, fvcore's checkpointer
  still logs which weights it loads and where it saves);
- fvcore's and detectron2's import-time ``torch.jit.script`` FutureWarning (a deprecation inside
  those libraries, nothing a user can act on) is filtered, in this process and, through
  ``PYTHONWARNINGS``, in the processes it starts (``--num-gpus N``, spawned data workers).

With ``output_dir`` (training and evaluation), detectron2's per-rank log file is kept:
``<output_dir>/log.txt`` on rank 0, ``log.txt.rank<R>`` on the others, holding the ``uniovseg`` and
``detectron2`` records; only rank 0 prints to the terminal.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

__all__ = ["QUIET_LOGGERS", "setup_logging", "silence_known_warnings"]

# Libraries whose INFO lines are noise in our commands (WARNING and above still show).
QUIET_LOGGERS = ("open_clip", "timm", "fvcore", "iopath", "huggingface_hub")
# Start of the FutureWarning that torch >= 2.9 gives for every torch.jit.script call made when
# fvcore and detectron2 are imported.
_JIT_SCRIPT_WARNING = "`torch.jit.script` is deprecated"
# Same filter in the -W / PYTHONWARNINGS syntax (action:message:category).
_JIT_SCRIPT_OPTION = f"ignore:{_JIT_SCRIPT_WARNING}:FutureWarning"
_FORMAT = "[%(asctime)s %(name)s %(levelname)s] %(message)s"
_DATE_FORMAT = "%m/%d %H:%M:%S"
# Marks the terminal handler added to the root logger, so that a second call replaces it.
_HANDLER_NAME = "uniovseg.logs"


def silence_known_warnings(*, child_processes: bool = True) -> None:
    """Filters the ``torch.jit.script`` FutureWarning that importing fvcore/detectron2 gives.

    Args:
        child_processes: Also add the filter to ``PYTHONWARNINGS``, which Python processes
            started from this one (detectron2's launcher spawns one per GPU) read at start-up,
            before they import detectron2.
    """
    warnings.filterwarnings(
        "ignore", message=_JIT_SCRIPT_WARNING.replace(".", r"\."), category=FutureWarning
    )
    if child_processes:
        options = [o for o in os.environ.get("PYTHONWARNINGS", "").split(",") if o]
        if _JIT_SCRIPT_OPTION not in options:
            os.environ["PYTHONWARNINGS"] = ",".join([*options, _JIT_SCRIPT_OPTION])


def setup_logging(
    output_dir: str | None = None,
    *,
    verbose: bool = False,
    distributed_rank: int = 0,
    stream=None,
    force: bool = False,
) -> logging.Logger:
    """Configures logging for a uniovseg command; call it once, first thing in ``main``.

    Like :func:`logging.basicConfig`, it leaves the root logger alone when something else (a
    host application, pytest) already gave it a handler, unless ``force``; the per-run log file
    of ``output_dir`` is set up in every case.

    Args:
        output_dir: Folder of detectron2's per-rank log file (``log.txt``); None: terminal only
            (and detectron2 is not imported here).
        verbose: DEBUG for uniovseg and INFO for the libraries that are quiet by default.
        distributed_rank: Rank of this process; only rank 0 prints INFO lines to the terminal
            (the others print warnings and write everything to their own log file).
        stream: Terminal stream (default ``sys.stderr``, read at call time).
        force: Configure the root logger even when it already has other handlers.

    Returns:
        The ``uniovseg`` logger.
    """
    root = logging.getLogger()
    configured_elsewhere = any(h.get_name() != _HANDLER_NAME for h in root.handlers)
    level = logging.DEBUG if verbose else logging.INFO
    if force or not configured_elsewhere:
        silence_known_warnings()
        for handler in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
            root.removeHandler(handler)
        terminal = logging.StreamHandler(sys.stderr if stream is None else stream)
        terminal.set_name(_HANDLER_NAME)
        terminal.setFormatter(logging.Formatter(_FORMAT, datefmt=_DATE_FORMAT))
        terminal.setLevel(logging.NOTSET if distributed_rank == 0 else logging.WARNING)
        root.addHandler(terminal)
        # The root level gates what open_clip logs through logging.info(); named loggers set
        # their own level below, and their records reach the terminal handler by propagation.
        root.setLevel(logging.INFO if verbose else logging.WARNING)
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
        for name in ("uniovseg", "detectron2"):
            logging.getLogger(name).setLevel(level)
    else:
        silence_known_warnings(child_processes=False)
    if output_dir is not None:
        from detectron2.utils.logger import setup_logger

        for name in ("uniovseg", "detectron2"):
            # detectron2's handlers (terminal on rank 0, per-rank file), unless its
            # default_setup already added them; it sets DEBUG and stops propagation, so the
            # level is set after it.
            if not logging.getLogger(name).handlers:
                setup_logger(output_dir, distributed_rank=distributed_rank, name=name)
            logging.getLogger(name).setLevel(level)
        if force or not configured_elsewhere:
            # A run's log keeps which checkpoint was loaded and where each one was saved.
            logging.getLogger("fvcore.common.checkpoint").setLevel(logging.INFO)
    return logging.getLogger("uniovseg")
