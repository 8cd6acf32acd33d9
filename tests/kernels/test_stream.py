"""Decoding states (``kernels.program_head.stream``: Numba; ``stream_triton``: Triton): prefill in
pieces then token-by-token decoding equals the dense reference for every primitive over its
parameter grid (``test_program_head``'s), with left padding; several heads of a layer in one
call; beam reordering; and a decoding step touches the same amount of state at any context length."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_program_head import EDGE_CASES, OTHERS, POINTERS, SCANS, TERM_CASES, VOCAB_N, _batch, _id, _spec

from headcode.kernels.program_head.naive import program_head_naive
from headcode.kernels.program_head.stream import LayerProgram, LayerState
from headcode.kernels.program_head.stream_triton import TritonLayerState

DEV = "cuda" if torch.cuda.is_available() else "cpu"
STATES = {"numba": LayerState, "triton": lambda prog, B, D: TritonLayerState(prog, B, D, DEV)}


def _stream(state, ids, v, start, pieces=(5, 30)) -> torch.Tensor:
    """Prefill ``[0, pieces[0])``, ``[pieces[0], pieces[1])``, ..., then one token per step:
    ``v [B, G, T, D]`` -> ``[B, H, T, D]`` (CPU)."""
    T = ids.shape[1]
    cuts = [0, *pieces] + list(range(pieces[-1] + 1, T + 1))
    outs = [state.step(ids[:, a:b], v[:, :, a:b], start) for a, b in zip(cuts, cuts[1:])]
    assert state.length == T
    return torch.cat([o.cpu() for o in outs], 2)


@pytest.mark.parametrize("backend", list(STATES))
@pytest.mark.parametrize("term", TERM_CASES, ids=[_id(t) for t in TERM_CASES])
def test_one_primitive_prefill_in_pieces_then_decode_matches_reference(backend, term):
    spec = _spec([term])
    ids, v, start = _batch(3, T=40)  # rows start at 0, 17 and 39: left padding through prefill and decoding
    ref = program_head_naive(spec, ids, v, start)
    out = _stream(STATES[backend](LayerProgram.build([spec], [0]), 3, v.shape[-1]), ids, v[:, None], start)
    torch.testing.assert_close(out[:, 0], ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("backend", list(STATES))
@pytest.mark.parametrize("term", EDGE_CASES, ids=[_id(t) for t in EDGE_CASES])
def test_edge_primitives_prefill_then_decode_match_reference(backend, term):
    spec = _spec([term, dict(kind="pointer", ev_start=1, weight=0.01)], seed=2)  # a sink keeps rows non-empty
    ids, v, start = _batch(7, T=72)  # shift -64 reaches a key in the first row
    ref = program_head_naive(spec, ids, v, start)
    out = _stream(STATES[backend](LayerProgram.build([spec], [0]), 3, v.shape[-1]), ids, v[:, None], start,
                  pieces=(30, 60))
    torch.testing.assert_close(out[:, 0], ref, atol=1e-5, rtol=0)


def _layer(n_heads: int) -> list:
    """Heads mixing every primitive of the grid, each with its own shifts (rings of several lengths),
    weights, key and query tables."""
    specs = []
    for h in range(n_heads):
        rng = np.random.default_rng(h)
        picks = POINTERS[h::4] + SCANS[h % 2::2] + OTHERS
        terms = [dict(t, **({"shift": t["shift"] * (h + 2)} if "shift" in t else {}), weight=float(rng.uniform(0.1, 1.0)),
                      key_tab=int(rng.integers(-1, 1)), query_tab=1 if i % 4 == h else -1)
                 for i, t in enumerate(picks)]
        specs.append(_spec(terms, seed=h))
    return specs


@pytest.mark.parametrize("backend", list(STATES))
def test_several_heads_of_a_layer_in_one_call(backend):
    specs, groups = _layer(3), [1, 0, 1]
    ids, v1, start = _batch(7, B=3, T=40, D=8)
    v = torch.stack([torch.randn_like(v1), v1], dim=1)  # [B, G=2, T, D]
    prog = LayerProgram.build(specs, groups)
    rings = sorted({-int(x) for sp in specs for x in sp.col("shift") if x < 0})
    assert len(rings) > 1 and prog.ring_len == rings[-1] + 1  # rings of several lengths, one size
    out = _stream(STATES[backend](prog, 3, 8), ids, v, start, pieces=(16, 29))
    for h, sp in enumerate(specs):
        ref = program_head_naive(sp, ids, v[:, groups[h]], start)
        torch.testing.assert_close(out[:, h], ref, atol=1e-5, rtol=0)


def test_a_decoding_step_touches_the_same_state_at_512_and_4096():
    spec = _spec([dict(t, weight=1.0) for t in POINTERS + SCANS + OTHERS])
    prog = LayerProgram.build([spec], [0])
    rng = np.random.default_rng(1)
    tail = torch.from_numpy(rng.integers(0, VOCAB_N, 24))  # the same recent past, every class event in it
    sparse = np.flatnonzero(spec.tables[2])
    tail[[6, 15]] = int(sparse[0])
    tail[-1] = tail[3]  # the step's token seen before
    work, sizes = [], []
    for T in (512, 4096):
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, VOCAB_N, (1, T + 1), generator=g)
        ids[0, -24:] = tail
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
    spec = _spec([dict(t, weight=0.5 + 0.1 * (i % 5)) for i, t in enumerate(POINTERS + SCANS + OTHERS)])
    prog = LayerProgram.build([spec], [0])
    ids, v, start = _batch(2, B=3, T=40, D=6)
    st = LayerState(prog, 3, 6)
    st.step(ids[:, :30], v[:, None, :30], start)
    order = torch.tensor([2, 2, 0])
    st.map_apply(lambda t: t.index_select(0, order))
    out = torch.cat([st.step(ids[order, i:i + 1], v[order, None, i:i + 1], start[order]) for i in range(30, 40)], 2)
    ref = program_head_naive(spec, ids[order], v[order], start[order])
    torch.testing.assert_close(out[:, 0], ref[:, 30:], atol=1e-5, rtol=0)
