"""One compiled head (Numba, through ``run_head``) vs one neural head (eager softmax(QK^T)V and
torch SDPA, causal) vs a plain copy of V (the memory-bound floor), at T = 128..4096, d = 64;
plus d = 128 (three programs), the dense torch reference (T <= 1024), FlexAttention (compiled;
skipped with the reason when it cannot compile) and Triton (skipped without a CUDA GPU).

Groups are ``T=<T>`` (d = 64) and ``T=<T> d=128``; names are stable: ``copy_v``, ``neural_eager``,
``neural_sdpa``, ``neural_flex``, ``program[<catalogue name>]``, ``reference[<name>]``,
``triton[<name>]``. Every program reports ``extra_info``: ``speedup_vs_sdpa``,
``speedup_vs_eager`` and ``x_copy_v`` against baselines timed in this run
(``headcode.benchmarking.median_ms``). Run: ``pytest benchmarks/test_head_kernels.py --benchmark-only``.
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

from headcode import benchmarking as bm  # noqa: E402
from headcode.compiler import compile_program, run_head  # noqa: E402
from headcode.compiler.program import Program  # noqa: E402

LENGTHS = [128, 512, 1024, 2048, 4096]
D = 64
N_VOCAB = 50_000
PROGRAMS = ["previous_and_sink", "uniform_all", "same_sentence", "same_token", "induction", "decay_half",
            "gate_sweep", "key_sweep"]
PROGRAMS_D128 = ["previous_and_sink", "same_sentence", "gate_sweep"]
_BASELINES: dict[tuple[str, int, int], float] = {}


def baseline_ms(kind: str, T: int, d: int = D) -> float:
    """The neural baseline (``sdpa``/``eager``/``copy``) at (T, d), timed once per session."""
    key = (kind, T, d)
    if key not in _BASELINES:
        _, q, k, v = _inputs(T, d)
        fn = {"sdpa": bm.sdpa_fn, "eager": bm.eager_fn}.get(kind)
        _BASELINES[key] = bm.median_ms(fn(q, k, v) if fn else bm.copy_v_fn(v), repeat=7, warmup=2)
    return _BASELINES[key]


def report_ratios(benchmark, T: int, d: int = D) -> None:
    ms = benchmark.stats.stats.median * 1e3
    benchmark.extra_info.update(
        median_ms=ms, sdpa_ms=baseline_ms("sdpa", T, d), speedup_vs_sdpa=baseline_ms("sdpa", T, d) / ms,
        speedup_vs_eager=baseline_ms("eager", T, d) / ms, x_copy_v=ms / baseline_ms("copy", T, d))


def _group(T: int, d: int) -> str:
    return f"T={T}" if d == D else f"T={T} d={d}"


@pytest.fixture(scope="module")
def pieces() -> list[str]:
    return [VOCAB[i % len(VOCAB)] + (str(i) if i >= len(VOCAB) else "") for i in range(N_VOCAB)]


def _inputs(T: int, d: int = D):
    rng = np.random.default_rng(T)
    ids = torch.from_numpy(random_ids(rng, T, N_VOCAB))[None]
    g = torch.Generator().manual_seed(T if d == D else T * 1000 + d)
    q, k, v = (torch.randn(1, 1, T, d, generator=g) for _ in range(3))
    return ids, q, k, v


def _head(pieces, name: str):
    return compile_program(Program.from_source(BY_NAME[name].source, name), pieces, "bench-vocab")


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
    head = _head(pieces, name)
    ids, _, _, v = _inputs(T)
    v = v[:, 0]
    run_head(head, ids, v)  # JIT / cache load outside the timing
    out = benchmark(lambda: run_head(head, ids, v))
    assert out.shape == (1, T, D) and torch.isfinite(out).all()
    report_ratios(benchmark, T)


@pytest.mark.parametrize("name", PROGRAMS_D128)
@pytest.mark.parametrize("T", LENGTHS)
def test_program_head_d128(benchmark, pieces, T, name):
    benchmark.group = _group(T, 128)
    benchmark.name = f"program[{name}]"
    head = _head(pieces, name)
    ids, _, _, v = _inputs(T, 128)
    v = v[:, 0]
    run_head(head, ids, v)
    out = benchmark(lambda: run_head(head, ids, v))
    assert out.shape == (1, T, 128)
    report_ratios(benchmark, T, 128)


@pytest.mark.parametrize("kind", ["sdpa", "eager", "copy_v"])
@pytest.mark.parametrize("T", LENGTHS)
def test_neural_d128(benchmark, T, kind):
    benchmark.group = _group(T, 128)
    benchmark.name = "copy_v" if kind == "copy_v" else f"neural_{kind}"
    _, q, k, v = _inputs(T, 128)
    fn = bm.copy_v_fn(v) if kind == "copy_v" else {"sdpa": bm.sdpa_fn, "eager": bm.eager_fn}[kind](q, k, v)
    benchmark(fn)


@pytest.mark.parametrize("T", [t for t in LENGTHS if t <= 1024])
def test_reference_head(benchmark, pieces, T):
    """The dense float64 torch reference (O(T^2)): what the kernels are checked against."""
    benchmark.group = _group(T, D)
    benchmark.name = "reference[previous_and_sink]"
    head = _head(pieces, "previous_and_sink")
    ids, _, _, v = _inputs(T)
    out = benchmark.pedantic(lambda: run_head(head, ids, v[:, 0], backend="torch"), rounds=3, warmup_rounds=1)
    assert out.shape == (1, T, D)
    report_ratios(benchmark, T)


@pytest.mark.parametrize("d", [D, 128])
@pytest.mark.parametrize("T", LENGTHS)
def test_neural_flex(benchmark, T, d):
    benchmark.group = _group(T, d)
    benchmark.name = "neural_flex"
    _, q, k, v = _inputs(T, d)
    try:
        fn = bm.flex_fn(q, k, v)
    except bm.FLEX_ERRORS as e:
        pytest.skip(f"FlexAttention does not compile here ({type(e).__name__}: {str(e)[:200]})")
    out = benchmark(fn)
    assert out.shape == (1, 1, T, d)
    benchmark.extra_info["x_sdpa"] = benchmark.stats.stats.median * 1e3 / baseline_ms("sdpa", T, d)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="Triton kernels need a CUDA GPU; none on this machine")
@pytest.mark.parametrize("name", PROGRAMS_D128)
@pytest.mark.parametrize("T", LENGTHS)
def test_triton_head(benchmark, pieces, T, name):
    benchmark.group = f"gpu {_group(T, D)}"
    benchmark.name = f"triton[{name}]"
    head = _head(pieces, name)
    ids, q, k, v = (x.cuda() for x in _inputs(T))
    vv = v[:, 0].contiguous()
    run_head(head, ids, vv, backend="triton")  # compile outside the timing
    sdpa = bm.median_ms(bm.sdpa_fn(q, k, v))

    def run():
        out = run_head(head, ids, vv, backend="triton")
        torch.cuda.synchronize()
        return out

    benchmark(run)
    benchmark.extra_info.update(sdpa_gpu_ms=sdpa, speedup_vs_sdpa=sdpa / (benchmark.stats.stats.median * 1e3))
