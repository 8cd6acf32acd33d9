"""One program head (the fused Numba kernel) vs one neural head (eager softmax(QK^T)V and
torch SDPA, causal) vs a plain copy of V (the memory-bound floor), at T = 128..4096, d = 64;
plus d = 128 (three programs), the dense torch reference (T <= 1024), FlexAttention (compiled;
skipped with the reason when it cannot compile) and Triton (skipped without a CUDA GPU).

The programs are catalogue programs (``tests/catalogue.py``) written directly as the kernels'
primitives (``kernels/program_head/spec.py``), as the compiler lowers them, over vocabulary tables
drawn at fixed densities (``TABLE_DENSITY``): the kernels are measured without the compiler.

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
from catalogue import random_ids  # noqa: E402

from headcode import benchmarking as bm  # noqa: E402
from headcode.kernels.program_head.naive import program_head_naive  # noqa: E402
from headcode.kernels.program_head.numba_cpu import program_head_numba  # noqa: E402
from headcode.kernels.program_head.spec import EVERY, HeadSpec  # noqa: E402

LENGTHS = [128, 512, 1024, 2048, 4096]
D = 64
N_VOCAB = 50_000
PROGRAMS = ["previous_and_sink", "uniform_all", "same_sentence", "same_token", "induction", "decay_half",
            "gate_sweep", "key_sweep"]
PROGRAMS_D128 = ["previous_and_sink", "same_sentence", "gate_sweep"]
_BASELINES: dict[tuple[str, int, int], float] = {}

# vocabulary classes the programs read, and the share of the vocabulary in each (fixed draw)
TABLE_DENSITY = {"boundary": 0.05, "punct": 0.1, "comma": 0.02, "alpha": 0.6, "function_word": 0.1,
                 "content_word": 0.4, "new_word": 0.6, "sentence_end": 0.04, "capitalised": 0.15,
                 "word_start_capitalised": 0.1}
ROW = {name: i for i, name in enumerate(TABLE_DENSITY)}
PREVIOUS = dict(kind="pointer", ev_tab=EVERY, shift=-1)
CURRENT = dict(kind="pointer", ev_tab=EVERY)
FIRST = dict(kind="pointer", ev_start=1)
SENTENCE_START = dict(kind="pointer", ev_tab=ROW["boundary"], ev_lag=1, ev_start=1)
WORD_START = dict(kind="pointer", ev_tab=ROW["new_word"], ev_start=1)
# each catalogue program as primitive terms (``weight`` defaults to 1; ``query_tab`` is a ``when`` gate)
PRIMITIVE_PROGRAMS: dict[str, list[dict]] = {
    "previous_and_sink": [dict(PREVIOUS, weight=0.8), dict(FIRST, weight=0.2)],
    "uniform_all": [dict(kind="scan")],
    "same_sentence": [dict(kind="scan", ev_tab=ROW["boundary"], ev_lag=1, ev_start=1)],
    "same_token": [dict(kind="same_token")],
    "induction": [dict(kind="induction"), dict(FIRST, weight=0.05)],
    "decay_half": [dict(kind="scan", rate=0.5)],
    "gate_sweep": [dict(SENTENCE_START, query_tab=ROW["punct"]),
                   dict(kind="pointer", ev_tab=ROW["comma"], query_tab=ROW["comma"]),
                   dict(CURRENT, query_tab=ROW["alpha"]), dict(PREVIOUS, query_tab=ROW["function_word"]),
                   dict(kind="same_token", query_tab=ROW["content_word"]),
                   dict(WORD_START, query_tab=ROW["new_word"]), dict(FIRST, weight=0.05)],
    "key_sweep": [dict(kind="scan", key_tab=ROW["sentence_end"]), dict(kind="scan", key_tab=ROW["capitalised"]),
                  dict(kind="scan", rate=0.9, key_tab=ROW["new_word"]),
                  dict(kind="pointer", ev_tab=ROW["word_start_capitalised"]), dict(FIRST, weight=0.05)],
}


def baseline_ms(kind: str, T: int, d: int = D) -> float:
    """The neural baseline (``sdpa``/``eager``/``copy``) at (T, d), timed once per session."""
    key = (kind, T, d)
    if key not in _BASELINES:
        _, q, k, v = _inputs(T, d)
        fn = {"sdpa": bm.sdpa_fn, "eager": bm.eager_fn}.get(kind)
        _BASELINES[key] = bm.median_ms(fn(q, k, v) if fn else bm.copy_v_fn(v), repeat=7, warmup=2)
    return _BASELINES[key]


def median_ms(benchmark) -> float | None:
    """The timed median in ms, None under ``--benchmark-disable`` (the body ran once, untimed)."""
    return None if benchmark.stats is None else benchmark.stats.stats.median * 1e3


def report_ratios(benchmark, T: int, d: int = D) -> None:
    ms = median_ms(benchmark)
    if ms is None:
        return
    benchmark.extra_info.update(
        median_ms=ms, sdpa_ms=baseline_ms("sdpa", T, d), speedup_vs_sdpa=baseline_ms("sdpa", T, d) / ms,
        speedup_vs_eager=baseline_ms("eager", T, d) / ms, x_copy_v=ms / baseline_ms("copy", T, d))


def _group(T: int, d: int) -> str:
    return f"T={T}" if d == D else f"T={T} d={d}"


@pytest.fixture(scope="module")
def tables() -> np.ndarray:
    """``[len(TABLE_DENSITY), N_VOCAB] uint8``: each class a fixed random share of the vocabulary."""
    rng = np.random.default_rng(0)
    dens = np.array(list(TABLE_DENSITY.values()))[:, None]
    return (rng.random((len(TABLE_DENSITY), N_VOCAB)) < dens).astype(np.uint8)


def _inputs(T: int, d: int = D):
    rng = np.random.default_rng(T)
    ids = torch.from_numpy(random_ids(rng, T, N_VOCAB))[None]
    g = torch.Generator().manual_seed(T if d == D else T * 1000 + d)
    q, k, v = (torch.randn(1, 1, T, d, generator=g) for _ in range(3))
    return ids, q, k, v


def _head(tables: np.ndarray, name: str) -> HeadSpec:
    return HeadSpec.build(PRIMITIVE_PROGRAMS[name], tables)


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
def test_program_head(benchmark, tables, T, name):
    benchmark.group = f"T={T}"
    benchmark.name = f"program[{name}]"
    head = _head(tables, name)
    ids, _, _, v = _inputs(T)
    v = v[:, 0]
    program_head_numba(head, ids, v)  # JIT / cache load outside the timing
    out = benchmark(lambda: program_head_numba(head, ids, v))
    assert out.shape == (1, T, D) and torch.isfinite(out).all()
    report_ratios(benchmark, T)


@pytest.mark.parametrize("name", PROGRAMS_D128)
@pytest.mark.parametrize("T", LENGTHS)
def test_program_head_d128(benchmark, tables, T, name):
    benchmark.group = _group(T, 128)
    benchmark.name = f"program[{name}]"
    head = _head(tables, name)
    ids, _, _, v = _inputs(T, 128)
    v = v[:, 0]
    program_head_numba(head, ids, v)
    out = benchmark(lambda: program_head_numba(head, ids, v))
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
def test_reference_head(benchmark, tables, T):
    """The dense float64 torch reference (O(T^2)): what the kernels are checked against."""
    benchmark.group = _group(T, D)
    benchmark.name = "reference[previous_and_sink]"
    head = _head(tables, "previous_and_sink")
    ids, _, _, v = _inputs(T)
    out = benchmark.pedantic(lambda: program_head_naive(head, ids, v[:, 0]), rounds=3, warmup_rounds=1)
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
    if median_ms(benchmark) is not None:
        benchmark.extra_info["x_sdpa"] = median_ms(benchmark) / baseline_ms("sdpa", T, d)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="Triton kernels need a CUDA GPU; none on this machine")
@pytest.mark.parametrize("name", PROGRAMS_D128)
@pytest.mark.parametrize("T", LENGTHS)
def test_triton_head(benchmark, tables, T, name):
    benchmark.group = f"gpu {_group(T, D)}"
    benchmark.name = f"triton[{name}]"
    head = _head(tables, name)
    ids, q, k, v = (x.cuda() for x in _inputs(T))
    vv = v[:, 0].contiguous()
    from headcode.kernels.program_head.triton_gpu import program_head_triton

    program_head_triton(head, ids, vv)  # compile outside the timing
    sdpa = bm.median_ms(bm.sdpa_fn(q, k, v))

    def run():
        out = program_head_triton(head, ids, vv)
        torch.cuda.synchronize()
        return out

    benchmark(run)
    if median_ms(benchmark) is not None:
        benchmark.extra_info.update(sdpa_gpu_ms=sdpa, speedup_vs_sdpa=sdpa / median_ms(benchmark))
