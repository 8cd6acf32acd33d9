"""Every feature at position q depends only on tokens <= q: for every example of every selector
(with named classes as key restriction, query gate and aux predicate) and every named class, changing the
tokens after q leaves rows <= q unchanged — in the numpy reference and in the compiled kernels."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch
from catalogue import VOCAB, random_ids

from headcode.compiler import classes as C
from headcode.compiler import compile_source, ir, run_head
from headcode.compiler.pattern import Pattern, evaluate, when
from headcode.compiler.program import Program
from headcode.compiler.selectors import REGISTRY
from headcode.compiler.tokens import Tokens

# every example of every registered selector (compiler/selectors/), traced once
EXAMPLES: dict[str, list[ir.Expr]] = {
    kind: [Program.from_source(f"def attend(t):\n    return {ex}\n").trace() for ex in sel.examples]
    for kind, sel in REGISTRY.items()
}
CASES = [(kind, i, gate) for kind, exprs in EXAMPLES.items() for i in range(len(exprs))
         for gate in (None, "determiner", "punct")]
SOURCES = {
    "segment_start": "clause_start(t)", "anchor": "0.6 * before_last(t, verb_like) + 0.4 * after_last(t, determiner)",
    "most_recent": "nearest_name(t) + most_recent(t, noun_like)",
}


def _tokens(ids: np.ndarray) -> Tokens:
    return Tokens.synthetic([VOCAB[i] for i in ids], [int(i) for i in ids])


def _pairs(seed: int, T: int = 40, n: int = 4):
    """Texts and, for a cut q, the same text with every token after q redrawn."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        ids = random_ids(rng, T)
        q = int(rng.integers(1, T - 2))
        other = ids.copy()
        other[q + 1:] = random_ids(rng, T)[q + 1:]
        yield ids, other, q


@pytest.mark.parametrize("kind, i, gate", CASES)
def test_selector_rows_up_to_q_ignore_later_tokens(kind, i, gate):
    sel = EXAMPLES[kind][i]
    if gate:
        sel = when(C.CLASS_PREDS[gate], Pattern(sel, None)).expr
    for ids, other, q in _pairs(zlib.crc32(kind.encode()) % 1000 + i):
        a, b = evaluate(sel, _tokens(ids)), evaluate(sel, _tokens(other))
        np.testing.assert_array_equal(a[: q + 1], b[: q + 1])


@pytest.mark.parametrize("name", sorted(C.CLASSES))
def test_class_features_up_to_q_ignore_later_tokens(name):
    pred = C.CLASS_PREDS[name]
    for ids, other, q in _pairs(7):
        np.testing.assert_array_equal(_tokens(ids).has(pred)[: q + 1], _tokens(other).has(pred)[: q + 1])


@pytest.mark.parametrize("backend", ["torch", "numba", "triton"])
@pytest.mark.parametrize("kind", sorted(SOURCES))
def test_compiled_contextual_selectors_are_causal(kind, backend):
    src = f"def attend(t):\n    return when(~punct, {SOURCES[kind]}) + 0.1 * first(t)\n"
    head = compile_source(src, VOCAB, "synthetic-vocab", strict=True)
    for ids, other, q in _pairs(3, T=50, n=2):
        v = torch.randn(1, len(ids), 6, generator=torch.Generator().manual_seed(q), dtype=torch.float32)
        a = run_head(head, torch.from_numpy(ids)[None], v, backend=backend)
        b = run_head(head, torch.from_numpy(other)[None], v, backend=backend)
        torch.testing.assert_close(a[:, : q + 1], b[:, : q + 1], atol=0, rtol=0)
