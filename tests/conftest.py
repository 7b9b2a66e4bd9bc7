"""Shared pytest set-up: deterministic seeds, CUDA-marked tests skipped without a GPU.

Collection never touches CUDA: `torch.cuda.is_available()` is only called while deciding skips.
"""

import os

import pytest

# Tests use tiny models; two threads is what CI machines have and keeps timings comparable.
os.environ.setdefault("OMP_NUM_THREADS", "2")


def pytest_collection_modifyitems(config, items):
    if not any("cuda" in item.keywords for item in items):
        return
    import torch

    if torch.cuda.is_available():
        return
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip_cuda)


@pytest.fixture(autouse=True)
def _seed_everything():
    import random

    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield
