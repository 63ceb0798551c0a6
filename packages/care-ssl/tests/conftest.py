"""One intra-op thread per test process: on a CPU shared with other jobs, torch's spinning worker threads
cost several times the work itself (a resnet18 step at 32 px: 0.25 s CPU with one thread, 1-5 s with two
under load). Subprocesses started by the tests get OMP_NUM_THREADS=1 for the same reason."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
