"""Peak-memory measurement that can be reset between measurements.

* CUDA: the caching allocator's peak (``torch.cuda.max_memory_allocated``), reset with
  ``torch.cuda.reset_peak_memory_stats``: the memory tensors really needed, without the
  allocator's cache.
* CPU (Linux): the process's resident-set high-water mark (``VmHWM``), reset by writing ``5`` to
  ``/proc/self/clear_refs`` (which sets it to the current RSS). It includes the model weights,
  the Python heap and memory the allocator keeps after frees; it is what a user's machine must
  provide. Where the reset is refused (old kernels, some sandboxes) the peak is the process's
  lifetime ``ru_maxrss`` and ``resettable`` is False: run one measurement per process then.
"""

from __future__ import annotations

import logging
import resource
import sys

import torch

__all__ = ["PeakMemoryMeter", "current_rss_bytes"]

logger = logging.getLogger(__name__)

_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"


def _status_bytes(field: str) -> int | None:
    """A ``kB`` field of /proc/self/status in bytes (None where the file does not exist)."""
    try:
        with open(_STATUS) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def current_rss_bytes() -> int | None:
    """The process's current resident set size (Linux; None elsewhere)."""
    return _status_bytes("VmRSS")


def _maxrss_bytes() -> int:
    # ru_maxrss is in kilobytes on Linux and in bytes on macOS.
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(value) if sys.platform == "darwin" else int(value) * 1024


class PeakMemoryMeter:
    """Peak memory of one device since the last :meth:`reset`.

    Example::

        meter = PeakMemoryMeter("cpu")
        meter.reset()
        run_inference()
        peak = meter.peak_bytes()
    """

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.resettable = True
        if self.device.type == "cuda":
            self.kind = "cuda_max_memory_allocated"
        elif self.device.type == "cpu":
            self.kind = "process_rss_high_water_mark"
            self.resettable = self._try_reset_rss()
            if not self.resettable:
                self.kind = "process_ru_maxrss_lifetime"
                logger.warning(
                    "cannot reset the RSS high-water mark here (%s not writable): CPU peaks are "
                    "lifetime maxima of the process",
                    _CLEAR_REFS,
                )
        else:
            raise ValueError(f"peak memory is measured on cpu or cuda devices, not {self.device}")

    @staticmethod
    def _try_reset_rss() -> bool:
        if _status_bytes("VmHWM") is None:
            return False
        try:
            with open(_CLEAR_REFS, "w") as f:
                f.write("5")
        except OSError:
            return False
        return True

    def reset(self) -> None:
        """Starts a new peak at the current usage."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.resettable:
            self._try_reset_rss()

    def peak_bytes(self) -> int:
        """The peak since the last reset (lifetime peak where not resettable)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return int(torch.cuda.max_memory_allocated(self.device))
        if self.resettable:
            value = _status_bytes("VmHWM")
            if value is not None:
                return value
        return _maxrss_bytes()

    def current_bytes(self) -> int | None:
        """Memory in use now: allocated tensors on CUDA, resident set size on CPU."""
        if self.device.type == "cuda":
            return int(torch.cuda.memory_allocated(self.device))
        return current_rss_bytes()
