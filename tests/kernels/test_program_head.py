"""The program-head op: Numba and Triton kernels against the dense torch reference, one
primitive at a time over its parameter grid (events from a table at lag 0 or 1, from the start,
at every position; strict; shifts either side; rates; with and without key restriction and
query gate), on batches with left padding, query windows and several Triton chunks."""

from __future__ import annotations

import itertools
from dataclasses import fields

import numpy as np
import pytest
import torch

from headcode.kernels.program_head import spec as S
from headcode.kernels.program_head.naive import program_head_naive
from headcode.kernels.program_head.numba_cpu import program_head_numba
from headcode.kernels.program_head.spec import EVERY, NO_TABLE, HeadSpec
from headcode.kernels.program_head.triton_gpu import program_head_triton

VOCAB_N = 23
KERNELS = {"numba": program_head_numba, "triton": program_head_triton}


def _tables(seed: int = 0) -> np.ndarray:
    """Rows: 0 key predicate, 1 query predicate, 2 sparse (a boundary), 3 dense (a new word)."""
    rng = np.random.default_rng(seed)
    return (rng.random((4, VOCAB_N)) < np.array([[0.5], [0.6], [0.15], [0.4]])).astype(np.uint8)


def _spec(terms: list[dict], seed: int = 0) -> HeadSpec:
    return HeadSpec.build(terms, _tables(seed))


def _batch(seed: int, B: int = 3, T: int = 70, D: int = 12):
    rng = np.random.default_rng(seed)
    ids = torch.from_numpy(rng.integers(0, 6, (B, T)) * rng.integers(1, 4, (B, T)) % VOCAB_N)  # many repeats
    v = torch.randn(B, T, D, generator=torch.Generator().manual_seed(seed))
    start = torch.tensor([0, 17, T - 1][:B])
    return ids, v, start


EVENTS = [dict(ev_tab=NO_TABLE, ev_start=True), dict(ev_tab=EVERY), dict(ev_tab=2, ev_lag=1, ev_start=True),
          dict(ev_tab=3, ev_lag=0), dict(ev_tab=0, ev_lag=0)]
EVENT_FIELDS = ("ev_tab", "ev_lag", "ev_start")
# the values the grid tries for each field that is neither an event field nor a flag (bool: on and off)
VALUES = {"shift": (-2, 0, 1), "rate": (1.0, 0.6)}


def primitive_grid(kind: str) -> list[dict]:
    """The cases of one primitive, generated from its fields in ``spec.SCHEMA``: the events times
    ``VALUES`` of its other fields, with every flag off, each flag on alone and all flags on; key
    restriction and query gate alternate. A new flag is covered without a change here; a new
    non-flag field fails until it has values."""
    cls = S.SCHEMA.primitives[kind]
    names = [f.name for f in fields(cls)]
    flags = [f.name for f in fields(cls) if f.type in (bool, "bool") and f.name not in EVENT_FIELDS]
    other = [n for n in names if n not in EVENT_FIELDS and n not in flags]
    missing = [n for n in other if n not in VALUES]
    assert not missing, f"{kind}: give the grid values for {missing} (VALUES)"
    events = EVENTS if "ev_tab" in names else [{}]
    base = [dict(kind=kind, **ev, **dict(zip(other, combo))) for ev in events
            for combo in itertools.product(*(VALUES[n] for n in other))]
    on = [{}, *({f: True} for f in flags), *([dict.fromkeys(flags, True)] if len(flags) > 1 else [])]
    cases = [dict(b, **f) for f in on for b in base]
    return [dict(c, key_tab=0, query_tab=1) if i % 2 else c for i, c in enumerate(cases)]


POINTERS, SCANS = primitive_grid("pointer"), primitive_grid("scan")
OTHERS = [dict(c, key_tab=kt, query_tab=qt) for k in ("same_token", "induction") for c in primitive_grid(k)
          for kt, qt in ((-1, -1), (0, 1))]
TERM_CASES = [dict(t, weight=0.7) for t in POINTERS + SCANS + OTHERS]


def _id(t: dict) -> str:
    return "-".join(f"{k}{int(v) if isinstance(v, bool) else v}" for k, v in t.items() if k != "weight")


@pytest.mark.parametrize("kernel", list(KERNELS))
@pytest.mark.parametrize("term", TERM_CASES, ids=[_id(t) for t in TERM_CASES])
def test_one_primitive_matches_reference(kernel, term):
    spec = _spec([term])
    ids, v, start = _batch(3)
    ref = program_head_naive(spec, ids, v, start)
    out = KERNELS[kernel](spec, ids, v, start)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    win = KERNELS[kernel](spec, ids, v, start, n_q=4)
    torch.testing.assert_close(win, ref[:, -4:], atol=1e-5, rtol=0)


EDGE_CASES = [
    dict(kind="pointer", ev_start=1, shift=2),  # the third real token (none for the first two rows)
    dict(kind="pointer", ev_tab=EVERY, shift=-64),  # the longest offset: empty rows for most of a row
    dict(kind="pointer", ev_tab=2, ev_lag=1, strict=1, shift=3),  # past the query on short segments
    dict(kind="pointer", ev_tab=NO_TABLE),  # no event ever: every row empty
    dict(kind="scan", ev_tab=EVERY, rate=0.5),  # every token starts a segment: the query alone
    dict(kind="scan", ev_tab=2, ev_lag=1, rate=0.9, key_tab=0),  # lag-1 events, no start event
    dict(kind="scan", ev_tab=0, rate=1.0, key_tab=0, query_tab=3),  # events on the keys themselves
]


@pytest.mark.parametrize("kernel", list(KERNELS))
@pytest.mark.parametrize("term", EDGE_CASES, ids=[_id(t) for t in EDGE_CASES])
def test_edge_primitives_match_reference(kernel, term):
    spec = _spec([term, dict(kind="pointer", ev_start=1, weight=0.01)], seed=2)  # a sink keeps rows non-empty
    ids, v, start = _batch(7, T=90)
    ref = program_head_naive(spec, ids, v, start)
    torch.testing.assert_close(KERNELS[kernel](spec, ids, v, start), ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(KERNELS[kernel](spec, ids, v, start, n_q=25), ref[:, -25:], atol=1e-5, rtol=0)


@pytest.mark.parametrize("kernel", list(KERNELS))
def test_mix_of_all_primitives_no_start(kernel):
    picks = POINTERS[::3] + SCANS + OTHERS
    terms = [dict(t, key_tab=i % 2 - 1, weight=w) for i, (t, w) in enumerate(zip(picks, np.linspace(0.1, 1, len(picks))))]
    spec = _spec(terms, seed=4)
    ids, v, _ = _batch(5, B=2, T=100, D=20)
    torch.testing.assert_close(KERNELS[kernel](spec, ids, v), program_head_naive(spec, ids, v), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kernel", list(KERNELS))
def test_empty_rows_go_to_the_first_real_token(kernel):
    # the only term is gated on a query predicate: rows whose token fails it are empty -> V[start]
    spec = _spec([dict(kind="pointer", ev_tab=EVERY, shift=-1, query_tab=1, key_tab=0)])
    ids, v, start = _batch(9)
    out = KERNELS[kernel](spec, ids, v, start)
    gate = torch.from_numpy(_tables()[1].astype(bool))[ids]
    for b in range(ids.shape[0]):
        s = int(start[b])
        empty = ~gate[b, s:]
        assert empty.any()
        torch.testing.assert_close(out[b, s:][empty], v[b, s].expand(int(empty.sum()), -1), atol=0, rtol=0)


def test_no_terms_means_first_token_everywhere():
    spec = HeadSpec.build([], np.zeros((0, VOCAB_N), np.uint8))
    ids, v, start = _batch(2)
    for fn in (program_head_naive, *KERNELS.values()):
        out = fn(spec, ids, v, start)
        for b in range(3):
            s = int(start[b])
            torch.testing.assert_close(out[b, s:], v[b, s].expand(70 - s, -1))
            assert torch.all(out[b, :s] == 0)


def test_numba_dtypes_and_parallel_rows_agree():
    spec = _spec([dict(kind="scan", rate=0.8, key_tab=0), dict(kind="same_token", weight=0.3),
                  dict(kind="induction", weight=0.5)])
    ids, v, start = _batch(11, B=3)
    ref = program_head_naive(spec, ids, v.double(), start)
    torch.testing.assert_close(program_head_numba(spec, ids, v.double(), start), ref, atol=1e-12, rtol=0)
    serial = program_head_numba(spec, ids, v, start, parallel=False)
    torch.testing.assert_close(program_head_numba(spec, ids, v, start, parallel=True), serial, atol=0, rtol=0)
    half = program_head_numba(spec, ids, v.bfloat16(), start)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), ref.float(), atol=3e-2, rtol=0)


@pytest.mark.parametrize("kernel", ["naive", *KERNELS])
def test_bad_inputs_are_refused(kernel):
    fn = program_head_naive if kernel == "naive" else KERNELS[kernel]
    spec = _spec([dict(kind="scan", key_tab=0)])
    ids, v, start = _batch(1)
    with pytest.raises(ValueError, match="token ids"):
        fn(spec, ids + VOCAB_N, v, start)
    with pytest.raises(ValueError, match="start"):
        fn(spec, ids, v, torch.tensor([0, 70, 1]))
    with pytest.raises(ValueError, match="n_q"):
        fn(spec, ids, v, start, n_q=71)
    with pytest.raises(ValueError, match=r"ids \[B, T\]"):
        fn(spec, ids, v[:, :5], start)
