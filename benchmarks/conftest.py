"""Benchmark session settings: ``HEADCODE_BENCH_THREADS=N`` sets torch's intra-op threads (on a
busy machine ``1`` avoids multi-millisecond waits for a descheduled second thread)."""

from __future__ import annotations

import os

import pytest

from headcode.errors import HeadcodeError


@pytest.fixture(autouse=True, scope="session")
def _bench_threads():
    import torch

    n = os.environ.get("HEADCODE_BENCH_THREADS")
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(max(1, int(n)))
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True, scope="session")
def _offline():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    yield


@pytest.fixture(scope="session")
def lm():
    from headcode.runtime.model.loading import load_model

    try:
        return load_model("smollm2-135m")
    except HeadcodeError as e:
        pytest.skip(f"the default model is not available: {e}")
