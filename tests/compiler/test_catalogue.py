"""Every catalogue program, compiled, equals the numpy reference ``attention_from_scores(
program.scores(t)) @ V`` on random texts, for every backend, with batches, left padding and
query windows; the catalogue covers every kind, predicate and combinator."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch
from catalogue import PROGRAMS, VOCAB, random_ids
from headcode_refs import padded_batch, reference_output

from headcode.compiler import compile_program, ir, run_head
from headcode.compiler.predicates import BUILTIN_PREDS
from headcode.compiler.program import Program
from headcode.compiler.program_to_ir import flatten
from headcode.compiler.selectors import REGISTRY

BACKENDS = ["torch", "numba", "triton"]
NAMES = [c.name for c in PROGRAMS]


@pytest.fixture(scope="module")
def heads():
    out = {}
    for c in PROGRAMS:
        prog = Program.from_source(c.source, c.name)
        out[c.name] = (prog, compile_program(prog, VOCAB, "synthetic-vocab"))
    return out


def _pred_names(name: str) -> set[str]:
    """Builtin names inside a composite predicate name like ``(alpha | ~digit)``."""
    import re

    return set(re.findall(r"[a-z_]+", name)) & set(BUILTIN_PREDS)


def test_catalogue_covers_kinds_predicates_and_combinators(heads):
    kinds, keys, queries = set(), set(), set()
    for prog, _ in heads.values():
        for _, s in flatten(prog.trace()):
            assert isinstance(s, ir.Sel)
            kinds.add(s.kind)
            keys |= _pred_names(s.key.name) if s.key else set()
            queries |= _pred_names(s.query.name) if s.query else set()
    assert kinds == set(REGISTRY)
    assert keys >= set(BUILTIN_PREDS), set(BUILTIN_PREDS) - keys
    assert queries >= set(BUILTIN_PREDS), set(BUILTIN_PREDS) - queries
    text = " ".join(c.body for c in PROGRAMS)
    for token in (" + ", " * ", ") & ", "when(", " | ", "~", "tok(", "token_in(", " & "):
        assert token in text, token


@pytest.mark.parametrize("name", NAMES)
def test_every_catalogue_program_compiles(heads, name):
    head = heads[name][1]
    assert head.compiled, head.reasons
    assert head.tables.shape == (len(head.table_names), len(VOCAB))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", NAMES)
def test_single_text_matches_reference(heads, name, backend):
    prog, head = heads[name]
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    T, D = 37, 8
    ids = random_ids(rng, T)
    v = rng.standard_normal((T, D)).astype(np.float32)
    out = run_head(head, torch.from_numpy(ids)[None], torch.from_numpy(v)[None], backend=backend)
    assert out.shape == (1, T, D) and out.dtype == torch.float32
    np.testing.assert_allclose(out[0].double().numpy(), reference_output(prog, VOCAB, ids, v), atol=1e-5, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", NAMES)
def test_padded_batch_and_query_window(heads, name, backend):
    prog, head = heads[name]
    rng = np.random.default_rng(7 + zlib.crc32(name.encode()))
    T, D, lengths = 40, 6, [40, 23, 1, 31]
    ids, v, start = padded_batch(rng, lengths, T, D, lambda n: random_ids(rng, n), pad_id=5)
    full = run_head(head, torch.from_numpy(ids), torch.from_numpy(v), torch.from_numpy(start), backend=backend)
    for b, n in enumerate(lengths):
        s = T - n
        ref = reference_output(prog, VOCAB, ids[b, s:], v[b, s:])
        np.testing.assert_allclose(full[b, s:].double().numpy(), ref, atol=1e-5, rtol=0)
        assert torch.all(full[b, :s] == 0)
    for n_q in (1, 5):
        win = run_head(head, torch.from_numpy(ids), torch.from_numpy(v), torch.from_numpy(start), n_q=n_q,
                       backend=backend)
        assert win.shape == (len(lengths), n_q, D)
        torch.testing.assert_close(win, full[:, T - n_q:], atol=1e-6, rtol=0)
