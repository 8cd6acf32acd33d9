"""Streaming Numba kernel of the program-head op: the decoding states that make a step cost
O(terms * D) per replaced head (a per-token map, for same_token and induction, grows with the
distinct tokens seen; every other state has a fixed size).

One call runs every replaced head of one layer over ``n`` new tokens (prefill: the prompt, or a
whole sequence from a zero state; decoding: one token), reading each token once and carrying
each term's state between calls. This is the one place where a primitive's decoding state is
defined (``spec`` defines the primitives; ``STATE`` below lists the arrays); per term:

==================  ====================================================================
primitive           state (per batch row, per term)
==================  ====================================================================
scan                running sum of key values and their count (``acc``, ``cnt``), both
                    multiplied by ``rate`` each step; an event restarts them at its token
pointer, shift 0    the value at the latest event and its key flag (``vec``, ``vok``)
pointer, shift < 0  the same, captured at an event from a ring of the last ``|shift| + 1``
                    values and key flags (``ring``, ``rok``; no key before ``start``)
pointer, shift > 0  the same, captured when the stream reaches the pending position
                    ``latest event + shift`` (``pend``); an event drops the held value
pointer, earliest   as above, but only the first event moves it (``seen``: it happened)
same_token          per-token map: token id -> (sum of its values, count) (``hkey``/``hval``)
induction           per-token map: token id -> (value after its latest occurrence, key flag)
==================  ====================================================================

A strict pointer reads its state before this token's event updates it, a non-strict one after.
A map holds one D-vector per distinct token seen (looked up in O(1): open addressing).
``work[b]`` counts the state elements each call reads or writes (for the test that a step
costs the same at any context length).

The kernel reads three typed structs (Numba named tuples): ``Step`` (``ids [B, n] int64,
v [B, G, n, D]`` of every KV group, ``q0`` the absolute position of the first new token,
``start [B]`` the first real position), ``Program`` (the terms packed by ``spec.SCHEMA``:
``ints``, ``reals``; ``place [J, 3]`` head, state slot and ring slot of each term; ``group [H]``;
``tables``) and ``State`` (``STATE``'s arrays), and writes ``out [B, H, n, D]``.
"""

from __future__ import annotations

from collections import namedtuple
from dataclasses import dataclass

import numba as nb
import numpy as np

from headcode.kernels.program_head.spec import EVERY, INDUCTION, POINTER, SAME_TOKEN, SCAN, SCHEMA

# column positions, read from the one column table (``spec.SCHEMA``)
KIND, KEY_TAB, QUERY_TAB, EV_TAB, EV_LAG, EV_START, STRICT, SHIFT, EARLIEST = SCHEMA.index(
    "kind", "key_tab", "query_tab", "ev_tab", "ev_lag", "ev_start", "strict", "shift", "earliest")
WEIGHT, RATE = SCHEMA.index("weight", "rate")
HEAD, SLOT, RSLOT = range(3)  # columns of ``Program.place``
LAYOUT = (KIND, KEY_TAB, QUERY_TAB, EV_TAB, EV_LAG, EV_START, STRICT, SHIFT, EARLIEST, WEIGHT, RATE)

# what a state array has one slot per: the batch row, a head, or a term with that kind of state
ROW, HEADS, ACC, VEC, RING, MAP = range(6)
STATE_OF_KIND = {SCAN: ACC, POINTER: VEC, SAME_TOKEN: MAP, INDUCTION: MAP}


@dataclass(frozen=True)
class StateArray:
    """One decoding-state array: ``[B, slots(owner), *shape]`` (``ROW``: ``[B, *shape]``; ``shape``
    in ``D`` the head size, ``R`` the ring length, ``CAP`` hash slots, ``E`` map entries), its dtype
    and initial value."""

    name: str
    owner: int
    shape: tuple[str, ...]
    dtype: str
    fill: int = 0


STATE = (
    StateArray("prev_id", ROW, (), "int64", -1),         # the previous token of each row
    StateArray("first_v", HEADS, ("D",), "float64"),     # the first real token's value (empty rows)
    StateArray("acc", ACC, ("D",), "float64"), StateArray("cnt", ACC, (), "float64"),
    StateArray("vec", VEC, ("D",), "float64"), StateArray("vok", VEC, (), "int8"),
    StateArray("pend", VEC, (), "int64", -1), StateArray("seen", VEC, (), "int8"),
    StateArray("ring", RING, ("R", "D"), "float64"), StateArray("rok", RING, ("R",), "int8"),
    StateArray("hkey", MAP, ("CAP",), "int64", -1), StateArray("hent", MAP, ("CAP",), "int32"),
    StateArray("hval", MAP, ("E", "D"), "float32"), StateArray("hcnt", MAP, ("E",), "float64"),
    StateArray("hused", MAP, (), "int64"),
    StateArray("work", ROW, (), "int64"),                 # state elements touched (not state)
)
State = namedtuple("State", [a.name for a in STATE])
Program = namedtuple("Program", "ints reals place group tables")
Step = namedtuple("Step", "ids v q0 start")
# what one kind's step reads (made once per row inside the kernel: a helper handed fewer arrays
# keeps fewer reference counts in the token loop -- measured: handing it all of ``State`` made a
# step up to 6x slower)
Cols = namedtuple("Cols", "ints reals place")
Scans = namedtuple("Scans", [a.name for a in STATE if a.owner == ACC])
Pointers = namedtuple("Pointers", [a.name for a in STATE if a.owner in (VEC, RING)])
Maps = namedtuple("Maps", [a.name for a in STATE if a.owner == MAP])


@nb.njit(cache=True, nogil=True, inline="always")
def _slot(hkey, b, m, tid, mask):
    h = (tid * 2654435761) & mask
    while hkey[b, m, h] != -1 and hkey[b, m, h] != tid:
        h = (h + 1) & mask
    return h


@nb.njit(cache=True, nogil=True, inline="always")
def _entry(ms, b, m, tid):
    """Entry index of ``tid`` in map ``m`` of row ``b``, inserted (zeroed) if new."""
    h = _slot(ms.hkey, b, m, tid, ms.hkey.shape[2] - 1)
    if ms.hkey[b, m, h] == -1:
        e = ms.hused[b, m]
        ms.hkey[b, m, h] = tid
        ms.hent[b, m, h] = e
        ms.hused[b, m] = e + 1
        ms.hcnt[b, m, e] = 0.0
        ms.hval[b, m, e, :] = 0.0
        return e
    return ms.hent[b, m, h]


@nb.njit(cache=True, nogil=True, inline="always")
def _event(ints, tables, j, tok):
    """Is there an event of term ``j`` at the token ``tok = (b, q, s, tid, pid)`` (``pid``: the
    previous token, -1 at the start)?"""
    et = ints[j, EV_TAB]
    if et == EVERY or (ints[j, EV_START] != 0 and tok[1] == tok[2]):
        return True
    if et < 0:
        return False
    if ints[j, EV_LAG] == 0:
        return tables[et, tok[3]] != 0
    return tok[4] >= 0 and tables[et, tok[4]] != 0


@nb.njit(cache=True, nogil=True, inline="always")
def _copy(dst, src):
    for d in range(src.shape[0]):
        dst[d] = src[d]


@nb.njit(cache=True, nogil=True, inline="always")
def _read(o, den, h, c, w, row):
    """The term's row ``c * row`` into head ``h``'s numerator, its weight ``w`` into the denominator."""
    for d in range(row.shape[0]):
        o[h, d] += c * row[d]
    den[h] += w


@nb.njit(cache=True, nogil=True, inline="always")
def _scan(prog, j, st, tok, x, ev, kok, qok, o, den):  # prog: Cols, st: Scans
    acc, cnt = st.acc[tok[0], prog.place[j, SLOT]], st.cnt[tok[0]]  # one row: no struct access in the loops
    sl, w = prog.place[j, SLOT], prog.reals[j, WEIGHT]
    r = 0.0 if ev else prog.reals[j, RATE]  # an event starts a new segment at this token
    cnt[sl] = r * cnt[sl] + (1.0 if kok else 0.0)
    if kok:
        for d in range(x.shape[0]):
            acc[d] = r * acc[d] + x[d]
    elif r != 1.0:
        for d in range(x.shape[0]):
            acc[d] *= r
    if qok and cnt[sl] > 0.0:
        _read(o, den, prog.place[j, HEAD], w / cnt[sl], w, acc)
        return 2 * x.shape[0]
    return x.shape[0]


@nb.njit(cache=True, nogil=True, inline="always")
def _pointer_event(prog, j, st, tok, kok, x):  # prog: Cols, st: Pointers
    """Term state after an event at ``q``: hold the key ``q + m`` now (m <= 0) or wait for it."""
    b, q, s = tok[0], tok[1], tok[2]
    sl, rs, m = prog.place[j, SLOT], prog.place[j, RSLOT], prog.ints[j, SHIFT]
    vec, vok = st.vec[b, sl], st.vok[b]
    if m == 0:
        vok[sl] = 1 if kok else 0
        _copy(vec, x)
    elif m < 0:
        src = q + m
        if src >= s:
            r1 = src % st.ring.shape[2]
            vok[sl] = st.rok[b, rs, r1]
            _copy(vec, st.ring[b, rs, r1])
        else:
            vok[sl] = 0
    else:
        vok[sl] = 0
        st.pend[b, sl] = q + m


@nb.njit(cache=True, nogil=True, inline="always")
def _pointer(prog, j, st, tok, x, ev, kok, qok, o, den):  # prog: Cols, st: Pointers
    b, q = tok[0], tok[1]
    sl, h, m = prog.place[j, SLOT], prog.place[j, HEAD], prog.ints[j, SHIFT]
    strict, w, D = prog.ints[j, STRICT] != 0, prog.reals[j, WEIGHT], x.shape[0]
    vec, vok, work = st.vec[b, sl], st.vok[b], 0
    if prog.ints[j, EARLIEST] != 0:  # only the first event moves the pointer
        ev = ev and st.seen[b, sl] == 0
        if ev:
            st.seen[b, sl] = 1
    if m < 0:  # the ring keeps the last |m| + 1 tokens (the key of a later event is among them)
        rs = prog.place[j, RSLOT]
        r0 = q % st.ring.shape[2]
        _copy(st.ring[b, rs, r0], x)
        st.rok[b, rs, r0] = 1 if kok else 0
        work += D
    if m > 0 and st.pend[b, sl] == q:  # the pending key arrives (a same-step event drops it again)
        vok[sl] = 1 if kok else 0
        _copy(vec, x)
        work += D
    if strict and qok and vok[sl] != 0:
        _read(o, den, h, w, w, vec)
        work += D
    if ev:
        _pointer_event(prog, j, st, tok, kok, x)
        work += D
    if not strict and qok and vok[sl] != 0:
        _read(o, den, h, w, w, vec)
        work += D
    return work


@nb.njit(cache=True, nogil=True, inline="always")
def _same_token(prog, j, st, tok, x, kok, qok, o, den):  # prog: Cols, st: Maps
    if not kok:  # all occurrences share the token, so all are keys or none
        return 0
    b, sl, w = tok[0], prog.place[j, SLOT], prog.reals[j, WEIGHT]
    e = _entry(st, b, sl, tok[3])
    hval, hcnt = st.hval[b, sl, e], st.hcnt[b, sl]
    hcnt[e] += 1.0
    for d in range(x.shape[0]):
        hval[d] += x[d]
    if qok:
        _read(o, den, prog.place[j, HEAD], w / hcnt[e], w, hval)
        return 2 * x.shape[0]
    return x.shape[0]


@nb.njit(cache=True, nogil=True, inline="always")
def _induction(prog, j, st, tok, x, kok, qok, o, den):  # prog: Cols, st: Maps
    b, sl, w, tid, pid = tok[0], prog.place[j, SLOT], prog.reals[j, WEIGHT], tok[3], tok[4]
    work = 0
    if pid >= 0:  # the previous token's latest occurrence is now followed by this one
        e = _entry(st, b, sl, pid)
        st.hcnt[b, sl, e] = 1.0 if kok else 0.0
        _copy(st.hval[b, sl, e], x)
        work += x.shape[0]
    if qok:
        hs = _slot(st.hkey, b, sl, tid, st.hkey.shape[2] - 1)
        if st.hkey[b, sl, hs] == tid:
            e = st.hent[b, sl, hs]
            if st.hcnt[b, sl, e] > 0.0:
                _read(o, den, prog.place[j, HEAD], w, w, st.hval[b, sl, e])
                work += x.shape[0]
    return work


@nb.njit(cache=True, nogil=True, inline="always")
def _row(b, step, prog, st, out):
    H, D = out.shape[1], step.v.shape[3]
    ints, tables, v = prog.ints, prog.tables, step.v
    cols = Cols(ints, prog.reals, prog.place)
    scans = Scans(st.acc, st.cnt)
    ptrs = Pointers(st.vec, st.vok, st.pend, st.seen, st.ring, st.rok)
    maps = Maps(st.hkey, st.hent, st.hval, st.hcnt, st.hused)
    o = np.zeros((H, D))
    den = np.zeros(H)
    s, work = step.start[b], 0
    for i in range(step.ids.shape[1]):
        q = step.q0 + i
        if q < s:  # left padding: not a key, zero output
            out[b, :, i, :] = 0.0
            continue
        tid = step.ids[b, i]
        tok = (b, q, s, tid, st.prev_id[b] if q > s else -1)
        if q == s:
            for h in range(H):
                _copy(st.first_v[b, h], v[b, prog.group[h], i])
            work += H * D
        o[:, :] = 0.0
        den[:] = 0.0
        for j in range(ints.shape[0]):
            x = v[b, prog.group[prog.place[j, HEAD]], i]
            kind, kt, qt = ints[j, KIND], ints[j, KEY_TAB], ints[j, QUERY_TAB]
            kok = kt < 0 or tables[kt, tid] != 0
            qok = qt < 0 or tables[qt, tid] != 0
            if kind == SCAN:
                work += _scan(cols, j, scans, tok, x, _event(ints, tables, j, tok), kok, qok, o, den)
            elif kind == POINTER:
                work += _pointer(cols, j, ptrs, tok, x, _event(ints, tables, j, tok), kok, qok, o, den)
            elif kind == SAME_TOKEN:
                work += _same_token(cols, j, maps, tok, x, kok, qok, o, den)
            else:
                work += _induction(cols, j, maps, tok, x, kok, qok, o, den)
        for h in range(H):
            if den[h] > 0.0:
                inv = 1.0 / den[h]
                for d in range(D):
                    out[b, h, i, d] = o[h, d] * inv
            else:  # an empty row reads the first real token
                _copy(out[b, h, i], st.first_v[b, h])
        st.prev_id[b] = tid
    st.work[b] += work


@nb.njit(cache=True, nogil=True, boundscheck=False)
def _serial(step, prog, st, out):
    for b in range(step.ids.shape[0]):
        _row(b, step, prog, st, out)


@nb.njit(cache=True, nogil=True, boundscheck=False, parallel=True)
def _parallel(step, prog, st, out):
    for b in nb.prange(step.ids.shape[0]):
        _row(b, step, prog, st, out)


@nb.njit(cache=True, nogil=True)
def rehash(hkey, hent, new_cap):
    """The maps' hash slots at capacity ``new_cap`` (a power of two); entries keep their index."""
    B, M, _ = hkey.shape
    nk = np.full((B, M, new_cap), -1, np.int64)
    ne = np.zeros((B, M, new_cap), np.int32)
    mask = new_cap - 1
    for b in range(B):
        for m in range(M):
            for h in range(hkey.shape[2]):
                tid = hkey[b, m, h]
                if tid != -1:
                    s = _slot(nk, b, m, tid, mask)
                    nk[b, m, s] = tid
                    ne[b, m, s] = hent[b, m, h]
    return nk, ne


@nb.njit(cache=True)
def _layout():
    return (KIND, KEY_TAB, QUERY_TAB, EV_TAB, EV_LAG, EV_START, STRICT, SHIFT, EARLIEST, WEIGHT, RATE)


def fresh_cache(layout, expected: tuple, dispatchers: tuple) -> None:
    """Numba's cache is keyed on the kernel's own file, not on ``spec``'s column table: when the
    cached ``layout()`` differs from the columns now, drop every cached kernel of the module."""
    if tuple(layout()) != tuple(expected):
        for d in (layout, *dispatchers):
            d._cache.flush()


fresh_cache(_layout, LAYOUT, (_serial, _parallel, rehash))
KERNELS = (_serial, _parallel)


def compile_kernels(cache: bool = False) -> tuple:
    """The (serial, parallel) kernels compiled again from the module's current helpers (a test
    that swaps a primitive's arithmetic, e.g. ``_pointer``, recompiles through this)."""
    return (nb.njit(cache=cache, nogil=True, boundscheck=False)(_serial.py_func),
            nb.njit(cache=cache, nogil=True, boundscheck=False, parallel=True)(_parallel.py_func))


def run_stream(step: Step, prog: Program, st: State, out: np.ndarray, parallel: bool = False) -> None:
    """Call the kernel on prepared numpy arrays (see ``stream.LayerState.step``)."""
    KERNELS[1 if parallel else 0](step, prog, st, out)
