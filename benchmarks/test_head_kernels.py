"""One compiled head (Numba, through ``run_head``) vs one neural head (eager softmax(QK^T)V and
torch SDPA, causal) vs a plain copy of V (the memory-bound floor), at T = 128..4096, d = 64.

Groups are ``T=<T>``; names are stable: ``copy_v``, ``neural_eager``, ``neural_sdpa``,
``program[<catalogue name>]``. Run: ``pytest benchmarks/test_head_kernels.py --benchmark-only``.
Targets at T=2048 (2 cores): a program >= 50x faster than SDPA and within 4x of the copy.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from catalogue import BY_NAME, VOCAB, random_ids  # noqa: E402

from headcode.compiler import compile_program, run_head  # noqa: E402
from headcode.compiler.program import Program  # noqa: E402

LENGTHS = [128, 512, 2048, 4096]
D = 64
N_VOCAB = 50_000
PROGRAMS = ["previous_and_sink", "uniform_all", "same_sentence", "same_token", "induction", "decay_half",
            "gate_sweep", "key_sweep"]


@pytest.fixture(scope="module")
def pieces() -> list[str]:
    return [VOCAB[i % len(VOCAB)] + (str(i) if i >= len(VOCAB) else "") for i in range(N_VOCAB)]


def _inputs(T: int):
    rng = np.random.default_rng(T)
    ids = torch.from_numpy(random_ids(rng, T, N_VOCAB))[None]
    g = torch.Generator().manual_seed(T)
    q, k, v = (torch.randn(1, 1, T, D, generator=g) for _ in range(3))
    return ids, q, k, v


@pytest.mark.parametrize("T", LENGTHS)
def test_copy_v(benchmark, T):
    benchmark.group = f"T={T}"
    benchmark.name = "copy_v"
    # a single-threaded memcpy (numpy): torch's clone of >32k elements goes to its thread pool,
    # whose wake-up cost (ms on a loaded machine) would hide the memory-bound floor
    v = _inputs(T)[3][:, 0].numpy()
    out = benchmark(np.copy, v)
    assert np.array_equal(out, v)


@pytest.mark.parametrize("T", LENGTHS)
def test_neural_eager(benchmark, T):
    benchmark.group = f"T={T}"
    benchmark.name = "neural_eager"
    _, q, k, v = _inputs(T)
    mask = torch.ones(T, T, dtype=torch.bool).tril()

    def eager():
        s = (q @ k.transpose(-1, -2)) / math.sqrt(D)
        return torch.softmax(s.masked_fill(~mask, float("-inf")), -1) @ v

    out = benchmark(eager)
    assert out.shape == (1, 1, T, D)


@pytest.mark.parametrize("T", LENGTHS)
def test_neural_sdpa(benchmark, T):
    benchmark.group = f"T={T}"
    benchmark.name = "neural_sdpa"
    _, q, k, v = _inputs(T)
    out = benchmark(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
    assert out.shape == (1, 1, T, D)


@pytest.mark.parametrize("name", PROGRAMS)
@pytest.mark.parametrize("T", LENGTHS)
def test_program_head(benchmark, pieces, T, name):
    benchmark.group = f"T={T}"
    benchmark.name = f"program[{name}]"
    case = BY_NAME[name]
    head = compile_program(Program.from_source(case.source, name), pieces, "bench-vocab")
    ids, _, _, v = _inputs(T)
    v = v[:, 0]
    run_head(head, ids, v)  # JIT / cache load outside the timing
    out = benchmark(lambda: run_head(head, ids, v))
    assert out.shape == (1, T, D) and torch.isfinite(out).all()
