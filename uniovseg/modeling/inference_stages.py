"""Named stages of the inference core, for profilers and benchmarks.

Each step of :class:`~uniovseg.modeling.meta_arch.UniOVSeg`'s inference (and of the
post-processing it calls) runs inside ``stage(name)``: a ``torch.profiler.record_function``
scope named ``uniovseg.<name>`` (visible in any ``torch.profiler`` trace), and, inside an
``observe_stages(observer)`` block, the observer's own ``observer.stage(name)`` context (e.g. a
:class:`~benchmark_suite.timing.StageTimer` or a FLOP counter). The benchmarks time the
model's real methods this way instead of replaying them. Outside such a block the cost is one
``record_function`` per stage.

Stage names: ``preprocess``, ``backbone``, ``pixel_decoder``, ``mask_decoder``,
``mask_postprocess``, ``region_embedding``, ``classification``, ``mask_resize``,
``semantic_assembly``, ``panoptic_assembly``.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager

from torch.profiler import record_function

__all__ = ["observe_stages", "stage"]

# The observer of the current thread / task (contextvars: threads never see each other's).
_OBSERVER: contextvars.ContextVar = contextvars.ContextVar("uniovseg_stage_observer", default=None)


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Runs the enclosed block as inference stage ``name`` (see the module doc)."""
    observer = _OBSERVER.get()
    with record_function(f"uniovseg.{name}"):
        if observer is None:
            yield
        else:
            with observer.stage(name):
                yield


@contextmanager
def observe_stages(observer) -> Iterator[None]:
    """Within the block, every stage also enters ``observer.stage(name)``.

    Args:
        observer: Any object with a ``stage(name)`` context manager.
    """
    token = _OBSERVER.set(observer)
    try:
        yield
    finally:
        _OBSERVER.reset(token)
