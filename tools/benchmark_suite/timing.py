"""Wall-clock timing for benchmarks: repeated runs, robust summaries and per-stage timers.

Times are seconds from ``time.perf_counter``. On CUDA every boundary synchronises the device,
so a stage is charged for its own kernels and not for those still queued from the previous one
(this slightly serialises the pipeline; end-to-end times are taken without inner boundaries).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch

__all__ = ["StageTimer", "summarize", "synchronize", "time_runs"]


def synchronize(device: torch.device | str | None) -> None:
    """Waits for queued CUDA work on ``device``; a no-op on other devices."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def summarize(seconds: Sequence[float]) -> dict[str, float | int | list[float]]:
    """Median and spread of repeated measurements.

    Args:
        seconds: One wall-clock time per run (at least one).

    Returns:
        ``median_ms``, ``min_ms``, ``max_ms``, ``q1_ms``, ``q3_ms`` (quartiles; both equal the
        median for fewer than 2 runs), ``iqr_ms`` (``q3 - q1``), ``runs`` (count) and
        ``runs_ms`` (every run, sorted), all in milliseconds.
    """
    if not seconds:
        raise ValueError("summarize needs at least one measurement; use --repeat >= 1")
    ms = sorted(float(s) * 1e3 for s in seconds)
    median = statistics.median(ms)
    q1, _, q3 = statistics.quantiles(ms, n=4, method="inclusive") if len(ms) > 1 else [median] * 3
    return {
        "median_ms": median,
        "min_ms": ms[0],
        "max_ms": ms[-1],
        "q1_ms": q1,
        "q3_ms": q3,
        "iqr_ms": q3 - q1,
        "runs": len(ms),
        "runs_ms": ms,
    }


def time_runs(
    fn: Callable[[], object],
    *,
    repeat: int,
    warmup: int,
    device: torch.device | str | None = None,
) -> list[float]:
    """Seconds of ``repeat`` calls of ``fn`` after ``warmup`` untimed ones.

    The return value of ``fn`` is dropped before the next call starts, so two results never
    coexist (this matters for peak-memory measurements around the loop).
    """
    if repeat < 1 or warmup < 0:
        raise ValueError(f"need repeat >= 1 and warmup >= 0, got {repeat} and {warmup}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


class StageTimer:
    """Accumulates the *self* time of named, possibly nested, stages over one or more runs, and
    optionally each stage's peak memory.

    A stage entered while another is open is charged to itself only: the outer stage's time
    excludes it. A stage entered several times in one run (e.g. one decoder call per chunk of
    prompts) accumulates. Peak memory (with a ``meter``) is the highest usage seen while the
    stage was open, nested stages included; the meter is reset at every stage boundary.

    Example::

        timer = StageTimer(device)
        with timer.stage("post"):
            with timer.stage("decoder"):   # charged to "decoder", not to "post"
                ...
        timer.end_run()                    # one record {"post": s, "decoder": s}
    """

    def __init__(self, device: torch.device | str | None = None, meter=None) -> None:
        """
        Args:
            device: Synchronised at every boundary when it is a CUDA device.
            meter: Optional :class:`~benchmark_suite.memory.PeakMemoryMeter` for
                per-stage peaks (it is reset at each boundary, so do not share it with an
                enclosing measurement).
        """
        self.device = device
        self.meter = meter
        self.records: list[dict[str, float]] = []
        self.peak_records: list[dict[str, int]] = []
        self._current: dict[str, float] = {}
        self._current_peaks: dict[str, int] = {}
        self._child_time: list[float] = []  # per open stage: time spent in nested stages
        self._open_peaks: list[int] = []  # per open stage: highest usage seen so far

    def _fold_peak(self) -> None:
        """Charges the peak since the last boundary to every open stage, then resets it."""
        if self.meter is None:
            return
        peak = self.meter.peak_bytes()
        self._open_peaks[:] = [max(p, peak) for p in self._open_peaks]
        self.meter.reset()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Times the enclosed block as stage ``name``."""
        synchronize(self.device)
        self._fold_peak()
        start = time.perf_counter()
        self._child_time.append(0.0)
        self._open_peaks.append(0)
        try:
            yield
        finally:
            synchronize(self.device)
            elapsed = time.perf_counter() - start
            self._fold_peak()
            peak = self._open_peaks.pop()
            children = self._child_time.pop()
            self._current[name] = self._current.get(name, 0.0) + elapsed - children
            if self.meter is not None:
                self._current_peaks[name] = max(self._current_peaks.get(name, 0), peak)
            if self._child_time:
                self._child_time[-1] += elapsed

    def end_run(self) -> dict[str, float]:
        """Closes the current run and returns its stage times (seconds)."""
        if self._child_time:
            raise RuntimeError("end_run() called while a stage is still open")
        record, self._current = self._current, {}
        self.records.append(record)
        self.peak_records.append(self._current_peaks)
        self._current_peaks = {}
        return record

    def summaries(self) -> dict[str, dict]:
        """:func:`summarize` of each stage over the recorded runs (a stage missing from a run
        counts as 0 there)."""
        names: list[str] = []
        for record in self.records:
            names.extend(n for n in record if n not in names)
        return {n: summarize([r.get(n, 0.0) for r in self.records]) for n in names}

    def peak_memory(self) -> dict[str, int]:
        """Each stage's highest peak (bytes) over the recorded runs (empty without a meter)."""
        peaks: dict[str, int] = {}
        for record in self.peak_records:
            for name, value in record.items():
                peaks[name] = max(peaks.get(name, 0), value)
        return peaks
