"""What the sandbox costs: starting a worker, scoring a traced and a free-form program (on
prefixes) over 40 texts of 128 tokens, and compiling against a 49,152-piece vocabulary with
the worker's tables cold and warm.

Group ``sandbox``. Run: ``pytest benchmarks/test_sandbox.py --benchmark-only``.
"""

from __future__ import annotations

import numpy as np
import pytest

from headcode.compiler import sandbox as S
from headcode.compiler.tokens import Tokens

TRACED = "def attend(t):\n    return 0.5 * previous(t, 1) + 0.3 * first(t) + 0.2 * most_recent(t, punct)\n"
FREE = "import numpy as np\ndef attend(t):\n    T = len(t)\n    return np.tril(np.ones((T, T))) * (1 + np.arange(T))\n"
TOK = "def attend(t):\n    return uniform(t, tok(lambda p: p.strip().lower() in ('the', 'a'))) + first(t)\n"


@pytest.fixture(scope="module")
def texts():
    rng = np.random.default_rng(0)
    words = [" the", " cat", " sat", ".", " Tom", " and", " a", ","]
    return [Tokens.synthetic(["<s>"] + [words[i] for i in rng.integers(0, len(words), 127)]) for _ in range(40)]


@pytest.fixture(scope="module")
def pieces():
    return [f" w{i}" if i % 3 else f"p{i}" for i in range(49_152)]


def test_worker_start(benchmark):
    benchmark.group = "sandbox"
    w = benchmark.pedantic(S.Worker, rounds=5)
    benchmark.extra_info.update(layers=list(w.layers))
    w.kill()


@pytest.mark.parametrize("kind", ["traced", "free_form_prefix"])
def test_run_40x128(benchmark, texts, kind):
    benchmark.group = "sandbox"
    src = TRACED if kind == "traced" else FREE
    S.run_programs([src], texts[:1])  # a warm worker
    (r,) = benchmark.pedantic(lambda: S.run_programs([src], texts), rounds=5)
    assert r.ok and r.mode == ("traced" if kind == "traced" else "prefix")


def test_run_40x128_model_vocabulary(benchmark, texts, pieces):
    """Explain's path: the traced program compiled against a 49,152-piece vocabulary (the
    model's), the built-in tables computed once in the host, scored on the texts' ids."""
    benchmark.group = "sandbox"
    words = sorted({p for t in texts for p in t.pieces})
    vocab = S.Vocabulary(tuple(words) + tuple(pieces), "bench-model-vocab")
    model_texts = [Tokens.synthetic(list(t.pieces), ids=[words.index(p) for p in t.pieces]) for t in texts]
    S.run_programs([TRACED], model_texts[:1], vocabulary=vocab)  # the built-in tables, once per vocabulary
    (r,) = benchmark.pedantic(lambda: S.run_programs([TRACED], model_texts, vocabulary=vocab), rounds=5)
    assert r.ok and r.mode == "traced"


@pytest.mark.parametrize("tables", ["cold", "warm"])
def test_compile_49k(benchmark, pieces, tables):
    from headcode.compiler import compile_source

    benchmark.group = "sandbox"
    compile_source(TOK, pieces, "bench-sandbox")  # the vocabulary is in the worker
    setup = S.clear_table_caches if tables == "cold" else None
    head = benchmark.pedantic(lambda: compile_source(TOK, pieces, "bench-sandbox", strict=True), setup=setup,
                              rounds=5)
    assert head.compiled
