"""Vocabulary tables: lowering, caching, and compile time with cached tables."""

from __future__ import annotations

import numpy as np
from catalogue import PROGRAMS, VOCAB

from headcode.compiler import compile_program
from headcode.compiler import tables as T
from headcode.compiler.predicates import alpha, capitalised, punct, tok
from headcode.compiler.program import Program


def _big_vocab(n: int = 50_000) -> list[str]:
    rng = np.random.default_rng(0)
    return [VOCAB[i % len(VOCAB)] + str(j) if j % 3 else VOCAB[i % len(VOCAB)]
            for j, i in enumerate(rng.integers(0, len(VOCAB), n))]


def test_tables_are_the_predicates_over_the_vocabulary():
    src = "def attend(t):\n    return when(capitalised, uniform(t, alpha | punct)) + in_same_sentence(t)\n"
    head = compile_program(Program.from_source(src), VOCAB, "fp-tables")
    rows = dict(zip(head.table_names, head.tables))
    np.testing.assert_array_equal(rows["capitalised"], capitalised.table(VOCAB))
    np.testing.assert_array_equal(rows["(alpha | punct)"], (alpha | punct).table(VOCAB))
    assert head.table_names[head.terms[1].aux_table] == "boundary"  # in_same_sentence: a sentence after one
    assert "new_word" not in head.table_names  # no word selectors in this program
    term = head.terms[0]
    assert head.table_names[term.key_table] == "(alpha | punct)" and head.table_names[term.query_table] == "capitalised"


def test_cache_is_per_fingerprint_and_skips_address_named_predicates():
    T.clear_cache()
    a = T.vocab_table(punct, VOCAB, "fp-a")
    assert T.vocab_table(punct, VOCAB, "fp-a") is a
    assert T.vocab_table(punct, VOCAB[:-1] + ("!",), "fp-b") is not a
    words = {" the"}
    p = tok(lambda s: s in words)  # reads a global-like closure: named by address, never cached
    assert "@" in p.name
    T.vocab_table(p, VOCAB, "fp-a")
    assert all(name != p.name for _, name, _ in T._CACHE)


def test_compiling_twice_gives_the_same_head():
    """Each compile runs in a fresh sandbox process (no table cache survives it, issue 17): the
    same program against the same vocabulary gives the same terms and tables every time. (Compile
    speed is timed in benchmarks/test_sandbox.py, not asserted here.)"""
    pieces = _big_vocab()
    T.clear_cache()
    progs = [Program.from_source(c.source, c.name) for c in PROGRAMS]
    for p in progs:
        a, b = compile_program(p, pieces, "fp-big"), compile_program(p, pieces, "fp-big")
        assert a.compiled and a.vocab_size == len(pieces)
        assert a.terms == b.terms and a.table_names == b.table_names and np.array_equal(a.tables, b.tables)
