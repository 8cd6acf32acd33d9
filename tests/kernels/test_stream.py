"""Selector states (``kernels.program_head.stream``): prefill then token-by-token decoding equals
the dense reference for every selector kind, several heads of one layer in one call, and a
decoding step touches the same amount of state at any context length."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from headcode.kernels.program_head.naive import program_head_naive
from headcode.kernels.program_head.spec import KIND_CODES as ALL_KINDS
from headcode.kernels.program_head.spec import HeadSpec
from headcode.kernels.program_head.stream import LayerProgram, LayerState
from headcode.kernels.program_head.stream_cpu import STATE_OF_KIND

# the kinds with a decoding state (the others are recomputed: tests/runtime/test_surrogate_cache.py)
KIND_CODES = {k: c for k, c in ALL_KINDS.items() if c in STATE_OF_KIND}

VOCAB_N = 23


def _spec(terms: list[dict], seed: int = 0) -> HeadSpec:
    """Table rows: 0 key predicate, 1 query predicate, 2 boundary, 3 new word."""
    rng = np.random.default_rng(seed)
    tables = (rng.random((4, VOCAB_N)) < np.array([[0.5], [0.6], [0.15], [0.4]])).astype(np.uint8)
    terms = [{**t, "aux_tab": 2} if t["kind"] in ("segment_start", "anchor") else t for t in terms]  # row 2 ends a segment
    return HeadSpec.build(terms, tables, boundary_tab=2, new_word_tab=3)


def _batch(seed: int, B: int = 3, T: int = 70, D: int = 12):
    rng = np.random.default_rng(seed)
    ids = torch.from_numpy(rng.integers(0, 6, (B, T)) * rng.integers(1, 4, (B, T)) % VOCAB_N)  # many repeats
    v = torch.randn(B, T, D, generator=torch.Generator().manual_seed(seed))
    return ids, v, torch.tensor([0, 17, T - 1][:B])


TERM_CASES = [
    dict(kind=k, k=kk, rate=0.6, strict=st, key_tab=kt, query_tab=qt, weight=0.7)
    for k in KIND_CODES
    for kk in ((0, 3) if k == "offset" else (0,))
    for st in ((0, 1) if k == "most_recent" else (0,))
    for kt in ((0,) if k == "most_recent" else (-1, 0))
    for qt in (-1, 1)
]


def _id(t: dict) -> str:
    return f"{t['kind']}-k{t['k']}-s{t['strict']}-key{t['key_tab']}-q{t['query_tab']}"


def _stream(prog: LayerProgram, ids, v, start, split: int) -> torch.Tensor:
    """Prefill ``split`` tokens, then one token per step: ``v [B, G, T, D]`` -> ``[B, H, T, D]``."""
    st = LayerState(prog, ids.shape[0], v.shape[-1])
    outs = [st.step(ids[:, :split], v[:, :, :split], start)]
    outs += [st.step(ids[:, i:i + 1], v[:, :, i:i + 1], start) for i in range(split, ids.shape[1])]
    assert st.length == ids.shape[1]
    return torch.cat(outs, 2)


@pytest.mark.parametrize("term", TERM_CASES, ids=[_id(t) for t in TERM_CASES])
def test_one_kind_prefill_then_decode_matches_reference(term):
    spec = _spec([term])
    ids, v, start = _batch(3)
    ref = program_head_naive(spec, ids, v, start)
    out = _stream(LayerProgram.build([spec], [0]), ids, v[:, None], start, split=31)
    torch.testing.assert_close(out[:, 0], ref, atol=1e-5, rtol=0)


def test_several_heads_of_a_layer_in_one_call():
    kinds = list(KIND_CODES)
    specs = []
    for h in range(3):  # three heads, each a mix of every kind with its own weights and tables
        w = np.random.default_rng(h).uniform(0.1, 1.0, len(kinds))
        terms = [dict(kind=k, k=h + 1, rate=0.8, strict=h % 2, key_tab=0 if k == "most_recent" else -1,
                      query_tab=1 if i % 3 == h else -1, weight=float(x))
                 for i, (k, x) in enumerate(zip(kinds, w))]
        specs.append(_spec(terms, seed=h))
    groups = [1, 0, 1]
    ids, v1, start = _batch(7, B=3, T=60, D=8)
    v = torch.stack([torch.randn_like(v1), v1], dim=1)  # [B, G=2, T, D]
    out = _stream(LayerProgram.build(specs, groups), ids, v, start, split=20)
    for h, sp in enumerate(specs):
        ref = program_head_naive(sp, ids, v[:, groups[h]], start)
        torch.testing.assert_close(out[:, h], ref, atol=1e-5, rtol=0)


def test_a_decoding_step_touches_the_same_state_at_512_and_4096():
    terms = [dict(kind=k, k=2, rate=0.9, strict=1, key_tab=0 if k == "most_recent" else -1, weight=1.0)
             for k in KIND_CODES]
    prog = LayerProgram.build([_spec(terms)], [0])
    work, sizes = [], []
    for T in (512, 4096):
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, 23, (1, T + 1), generator=g)
        ids[0, 0] = 1
        ids[0, -8:] = torch.tensor([3, 5, 7, 3, 9, 5, 2, 5])  # the same recent past, the step's token seen
        v = torch.randn(1, 1, T + 1, 8, generator=g)
        st = LayerState(prog, 1, 8)
        st.step(ids[:, :T], v[:, :, :T], torch.zeros(1, dtype=torch.long))
        before = int(st.work[0])
        st.step(ids[:, T:], v[:, :, T:], torch.zeros(1, dtype=torch.long))
        work.append(int(st.work[0]) - before)
        sizes.append(st.nbytes())
    assert work[0] == work[1] > 0
    assert sizes[0] == sizes[1]  # 23 distinct tokens: the per-token maps stop growing


def test_reordering_the_batch_reorders_every_state():
    spec = _spec([dict(kind=k, k=1, rate=0.7, key_tab=0 if k == "most_recent" else -1) for k in KIND_CODES])
    prog = LayerProgram.build([spec], [0])
    ids, v, start = _batch(2, B=3, T=40, D=6)
    st = LayerState(prog, 3, 6)
    st.step(ids[:, :30], v[:, None, :30], start)
    order = torch.tensor([2, 2, 0])
    st.map_apply(lambda t: t.index_select(0, order))
    out = torch.cat([st.step(ids[order, i:i + 1], v[order, None, i:i + 1], start[order]) for i in range(30, 40)], 2)
    ref = program_head_naive(spec, ids[order], v[order], start[order])
    torch.testing.assert_close(out[:, 0], ref[:, 30:], atol=1e-5, rtol=0)
