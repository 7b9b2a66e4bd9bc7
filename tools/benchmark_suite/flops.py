"""Operation counts per inference stage: what each stage must compute, whatever the device.

Times depend on the machine; operation counts do not. With both, a stage's throughput (GFLOP/s)
shows how close it runs to the machine's matrix-multiply rate (the backbone's throughput is the
natural reference), and the counts give a device-independent estimate of what the same stages
cost on a GPU.

:class:`StageFlopCounter` has the ``stage(name)`` interface of
:class:`~benchmark_suite.timing.StageTimer`, so either can observe the model's stages
(:func:`~benchmark_suite.inference.run_observed`).
Counting uses :class:`torch.utils.flop_counter.FlopCounterMode` (matrix products and
convolutions: 2 operations per multiply-add), plus formulas for kernels it does not know:
the CPU flash-attention kernel and the int8 matrix product of the mask NMS. Element-wise work
(activations, norms, bilinear resizing, thresholds) is not counted: it is memory-bound, and
time shows it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["StageFlopCounter"]


def _cpu_flash_attention_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    """QK^T and attention x V: 2 x 2 x B x heads x Q x S x D (the mask does not skip work)."""
    batch, heads, num_queries, head_dim = query_shape
    num_keys = key_shape[-2]
    return 4 * batch * heads * num_queries * num_keys * head_dim


def _int_mm_ops(a_shape, b_shape, *args, **kwargs) -> int:
    """int8 [M, K] x [K, N]: 2 x M x N x K integer operations."""
    return 2 * a_shape[0] * a_shape[1] * b_shape[1]


def _custom_mapping() -> dict:
    mapping = {}
    aten = torch.ops.aten
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_flash_attention_flops
    if hasattr(aten, "_int_mm"):
        mapping[aten._int_mm] = _int_mm_ops
    return mapping


class StageFlopCounter:
    """Counts operations per named stage during one run, with StageTimer's nesting rule.

    Operations inside a nested stage count for that stage only. Use as::

        counter = StageFlopCounter()
        with counter:
            run_observed(model, image, counter)
        counter.flops  # {stage: operations}
    """

    def __init__(self) -> None:
        self.flops: dict[str, int] = {}
        self._mode = FlopCounterMode(display=False, custom_mapping=_custom_mapping())
        self._open: list[str] = []
        self._last_total = 0

    def __enter__(self) -> StageFlopCounter:
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)

    def _charge(self) -> None:
        """Charges the operations since the last boundary to the innermost open stage."""
        total = int(self._mode.get_total_flops())
        if self._open:
            name = self._open[-1]
            self.flops[name] = self.flops.get(name, 0) + total - self._last_total
        self._last_total = total

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Counts the enclosed block as stage ``name``."""
        self._charge()
        self._open.append(name)
        try:
            yield
        finally:
            self._charge()
            self._open.pop()
