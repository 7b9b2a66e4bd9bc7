"""Puts the positions of the shard streams into the checkpoint, and optionally logs every sample.

The checkpoint is written by the main process only, but each rank knows only its own loader
workers' positions (:class:`uniovseg.data.stream_loader.StreamLoader`). At every iteration where
detectron2's ``PeriodicCheckpointer`` saves (``(iter + 1) % SOLVER.CHECKPOINT_PERIOD == 0`` and
the last iteration) :class:`StreamCheckpointHook` gathers them from every rank before the
checkpointer runs; its ``state_dict`` then lands in the checkpoint under
``trainer/hooks/StreamCheckpointHook`` (plain ints and strings: readable with
``torch.load(weights_only=True)``). On ``--resume`` detectron2 hands it back to
:meth:`StreamCheckpointHook.load_state_dict` on every rank, which starts each loader worker
after the last sample it delivered before the checkpoint.

With ``DATALOADER.UNIOVSEG.SAMPLE_LOG`` every rank appends one JSON line per iteration to
``OUTPUT_DIR/sample_log/rank<R>.jsonl``: ``{"iter": i, "loader": name, "samples": [[name,
epoch], ...]}``. A resumed run appends the iterations after its checkpoint again; the last line
of an iteration is the one that the final model trained on.
"""

from __future__ import annotations

import json
import logging
import os

from detectron2.engine import HookBase
from detectron2.utils import comm

__all__ = ["StreamCheckpointHook"]

logger = logging.getLogger(__name__)


class StreamCheckpointHook(HookBase):
    """Gathers the stream loaders' positions for the checkpoint; restores them on resume.

    Args:
        loaders: The run's :class:`~uniovseg.data.stream_loader.StreamLoader` objects (unique
            names).
        checkpoint_period: ``SOLVER.CHECKPOINT_PERIOD``.
        sample_log_dir: Folder of the per-rank sample logs; None: no log.
    """

    def __init__(self, loaders, *, checkpoint_period: int, sample_log_dir: str | None = None):
        names = [loader.name for loader in loaders]
        if len(set(names)) != len(names):
            raise ValueError(f"stream loaders need unique names, got {names}")
        self.loaders = list(loaders)
        self.checkpoint_period = int(checkpoint_period)
        self.sample_log_dir = sample_log_dir
        self._state: dict = {}
        self._restored = False
        self._log_file = None

    def before_train(self) -> None:
        if self.trainer.start_iter > 0 and not self._restored:
            logger.warning(
                "Resuming at iteration %d from a checkpoint without shard-stream positions: the "
                "data streams start at their beginning",
                self.trainer.start_iter,
            )
        if self.sample_log_dir:
            os.makedirs(self.sample_log_dir, exist_ok=True)
            path = os.path.join(self.sample_log_dir, f"rank{comm.get_rank()}.jsonl")
            self._log_file = open(path, "a", encoding="utf-8")  # closed in after_train

    def after_train(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def _saves_now(self) -> bool:
        iteration = self.trainer.iter
        return (
            iteration + 1
        ) % self.checkpoint_period == 0 or iteration >= self.trainer.max_iter - 1

    def after_step(self) -> None:
        if self._log_file is not None:
            for loader in self.loaders:
                line = {"iter": self.trainer.iter, "loader": loader.name}
                line["samples"] = [list(s) for s in loader.last_samples]
                self._log_file.write(json.dumps(line) + "\n")
            self._log_file.flush()
        if self._saves_now():
            # Every rank takes part (a collective); only the main process writes the result.
            gathered = comm.all_gather(
                {loader.name: loader.state_dict() for loader in self.loaders}
            )
            merged: dict = {}
            for per_rank in gathered:
                for name, state in per_rank.items():
                    entry = merged.setdefault(name, {"layout": state["layout"], "positions": {}})
                    entry["positions"].update(state["positions"])
            self._state = merged

    def state_dict(self) -> dict:
        return {"loaders": self._state} if self._state else {}

    def load_state_dict(self, state_dict: dict) -> None:
        saved = state_dict.get("loaders", {})
        for loader in self.loaders:
            if loader.name in saved:
                loader.load_state_dict(saved[loader.name])
            else:
                logger.warning("The checkpoint holds no stream position for %s", loader.name)
        self._state = dict(saved)
        self._restored = True
