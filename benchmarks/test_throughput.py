"""Compile time per program, synthesis throughput (offline backend) and peak memory of one head.

Groups: ``compile`` (names ``compile[<program>]``: a program against SmolLM2's 49k-piece
vocabulary, cold: the table cache cleared before each round; ``extra_info.vocab``), ``synthesis`` (``offline``: heads explained per minute on a
small captured workload, capture excluded; ``extra_info.heads_per_min``) and ``memory T=4096``
(``extra_info``: peak bytes of one surrogate head and of one SDPA / eager head, and their ratio;
how they are measured is in ``extra_info.method``).
Run: ``pytest benchmarks/test_throughput.py --benchmark-only``.
"""

from __future__ import annotations

import pytest

from headcode.benchmarks import cases as bm
from headcode.benchmarks import model_cases as bmm
from headcode.benchmarks.catalogue import BY_NAME


@pytest.fixture(scope="module")
def pieces(lm):
    from headcode.compiler.tokens import vocabulary_pieces

    return vocabulary_pieces(lm.tokenizer)


PROGRAMS = {c.name: c for c in [BY_NAME[n] for n in bm.HEAD_PROGRAMS] + list(bm.MODEL_PROGRAMS)}


@pytest.mark.parametrize("name", list(PROGRAMS))
def test_compile(benchmark, lm, pieces, name):
    from headcode.compiler import compile_source
    from headcode.compiler.sandbox import clear_table_caches as clear_cache  # compiling runs in the sandbox

    benchmark.group = "compile"
    benchmark.name = f"compile[{name}]"
    src = PROGRAMS[name].source
    head = benchmark.pedantic(lambda: compile_source(src, pieces, lm.fingerprint, strict=True),
                              setup=clear_cache, rounds=5)  # cold: vocabulary tables built each round
    assert head.compiled
    benchmark.extra_info.update(vocab=len(pieces), terms=len(head.terms))


def test_synthesis(benchmark, lm):
    benchmark.group = "synthesis"
    benchmark.name = "offline"
    settings = bm.Settings.full()
    result = benchmark.pedantic(lambda: bmm.synthesis_case(lm, settings), rounds=1, iterations=1)
    benchmark.extra_info.update({k: result[k] for k in ("heads", "texts", "heads_per_min", "capture_ms", "corpus")})
    assert result["heads_per_min"] > 0


def test_memory(benchmark):
    benchmark.group = f"memory T={bm.MEMORY_T}"
    benchmark.name = "peak bytes[previous_and_sink]"
    result = benchmark.pedantic(bm.memory_case, rounds=1, iterations=1)
    benchmark.extra_info.update({k: result[k] for k in ("surrogate_bytes", "neural_bytes", "eager_bytes",
                                                         "memory_ratio", "method")})
    assert result["eager_bytes"] > result["surrogate_bytes"] > 0
