"""Streaming Numba kernel of the program-head op: the decoding states that make a step cost
O(terms * D) per replaced head, whatever the context length (docs/architecture.md: constant-size decoding state).

One call runs every replaced head of one layer over ``n`` new tokens (prefill: the prompt;
decoding: one token), reading each token once and carrying each term's state between calls.
This is the one place where a primitive's decoding state is defined (``spec`` defines the
primitives); per term:

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
same_token          per-token map: token id -> (sum of its values, count) (``hkey``/``hval``)
induction           per-token map: token id -> (value after its latest occurrence, key flag)
==================  ====================================================================

A strict pointer reads its state before this token's event updates it, a non-strict one after.
Every state but the per-token maps is O(D); a map holds one D-vector per distinct token seen
(looked up in O(1): open addressing). ``work[b]`` counts the state elements each call reads or
writes (for the test that a step costs the same at any context length).

``ids [B, n] int64, v [B, G, n, D] (values of every KV group), q0`` (absolute position of the
first new token) and ``start [B]`` (first real position) -> ``out [B, H, n, D]``. The program
comes packed: ``pc [J, N_ICOLS]`` int64 and ``pf [J, N_FCOLS]`` float64 (columns below).
"""

from __future__ import annotations

import numba as nb
import numpy as np

from headcode.kernels.program_head.spec import EVERY, INDUCTION, POINTER, SAME_TOKEN, SCAN

# state kinds: which state array a term's ``slot`` indexes (a pointer with shift < 0 also owns a ring)
ACC, VEC, RING, MAP = range(4)
STATE_OF_KIND = {SCAN: ACC, POINTER: VEC, SAME_TOKEN: MAP, INDUCTION: MAP}
# columns of the packed program: ``pc`` (int64) and ``pf`` (float64)
KIND, EV_TAB, EV_LAG, EV_START, STRICT, SHIFT, KEY_TAB, QUERY_TAB, HEAD, SLOT, RSLOT = range(11)
N_ICOLS = 11
RATE, WEIGHT = range(2)
N_FCOLS = 2


def streamable(kinds: np.ndarray) -> bool:
    """Does every term kind of a head have a decoding state here? A head with a kind that has none
    is recomputed over the history each step (from its group's cached values), that head only."""
    return all(int(k) in STATE_OF_KIND for k in kinds)


@nb.njit(cache=True, nogil=True, inline="always")
def _slot(hkey, b, m, tid, mask):
    h = (tid * 2654435761) & mask
    while hkey[b, m, h] != -1 and hkey[b, m, h] != tid:
        h = (h + 1) & mask
    return h


@nb.njit(cache=True, nogil=True, inline="always")
def _entry(hkey, hent, hval, hcnt, hused, b, m, tid, mask):
    """Entry index of ``tid`` in map ``m`` of row ``b``, inserted (zeroed) if new."""
    h = _slot(hkey, b, m, tid, mask)
    if hkey[b, m, h] == -1:
        e = hused[b, m]
        hkey[b, m, h] = tid
        hent[b, m, h] = e
        hused[b, m] = e + 1
        hcnt[b, m, e] = 0.0
        hval[b, m, e, :] = 0.0
        return e
    return hent[b, m, h]


@nb.njit(cache=True, nogil=True, inline="always")
def _event(pc, j, tables, tid, pid, q, s):
    """Is there an event of term ``j`` at position ``q`` (``pid``: the previous token, -1 at the start)?"""
    et = pc[j, EV_TAB]
    if et == EVERY or (pc[j, EV_START] != 0 and q == s):
        return True
    if et < 0:
        return False
    if pc[j, EV_LAG] == 0:
        return tables[et, tid] != 0
    return pid >= 0 and tables[et, pid] != 0


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
def _scan(b, sl, rate, ev, kok, qok, w, h, x, acc, cnt, o, den):
    r = 0.0 if ev else rate  # an event starts a new segment at this token
    cnt[b, sl] = r * cnt[b, sl] + (1.0 if kok else 0.0)
    if kok:
        for d in range(x.shape[0]):
            acc[b, sl, d] = r * acc[b, sl, d] + x[d]
    elif r != 1.0:
        for d in range(x.shape[0]):
            acc[b, sl, d] *= r
    if qok and cnt[b, sl] > 0.0:
        _read(o, den, h, w / cnt[b, sl], w, acc[b, sl])
        return 2 * x.shape[0]
    return x.shape[0]


@nb.njit(cache=True, nogil=True, inline="always")
def _pointer_event(b, sl, rs, m, q, s, kok, x, vec, vok, pend, ring, rok):
    """Term state after an event at ``q``: hold the key ``q + m`` now (m <= 0) or wait for it."""
    if m == 0:
        vok[b, sl] = 1 if kok else 0
        _copy(vec[b, sl], x)
    elif m < 0:
        src = q + m
        if src >= s:
            r1 = src % ring.shape[2]
            vok[b, sl] = rok[b, rs, r1]
            _copy(vec[b, sl], ring[b, rs, r1])
        else:
            vok[b, sl] = 0
    else:
        vok[b, sl] = 0
        pend[b, sl] = q + m


@nb.njit(cache=True, nogil=True, inline="always")
def _pointer(b, sl, rs, m, strict, q, s, ev, kok, qok, w, h, x, vec, vok, pend, ring, rok, o, den):
    D = x.shape[0]
    work = 0
    if m < 0:  # the ring keeps the last |m| + 1 tokens (the key of a later event is among them)
        r0 = q % ring.shape[2]
        _copy(ring[b, rs, r0], x)
        rok[b, rs, r0] = 1 if kok else 0
        work += D
    if m > 0 and pend[b, sl] == q:  # the pending key arrives (a same-step event drops it again)
        vok[b, sl] = 1 if kok else 0
        _copy(vec[b, sl], x)
        work += D
    if strict and qok and vok[b, sl] != 0:
        _read(o, den, h, w, w, vec[b, sl])
        work += D
    if ev:
        _pointer_event(b, sl, rs, m, q, s, kok, x, vec, vok, pend, ring, rok)
        work += D
    if not strict and qok and vok[b, sl] != 0:
        _read(o, den, h, w, w, vec[b, sl])
        work += D
    return work


@nb.njit(cache=True, nogil=True, inline="always")
def _same_token(b, sl, tid, kok, qok, w, h, x, hkey, hent, hval, hcnt, hused, o, den):
    if not kok:  # all occurrences share the token, so all are keys or none
        return 0
    e = _entry(hkey, hent, hval, hcnt, hused, b, sl, tid, hkey.shape[2] - 1)
    hcnt[b, sl, e] += 1.0
    for d in range(x.shape[0]):
        hval[b, sl, e, d] += x[d]
    if qok:
        _read(o, den, h, w / hcnt[b, sl, e], w, hval[b, sl, e])
        return 2 * x.shape[0]
    return x.shape[0]


@nb.njit(cache=True, nogil=True, inline="always")
def _induction(b, sl, tid, pid, kok, qok, w, h, x, hkey, hent, hval, hcnt, hused, o, den):
    mask = hkey.shape[2] - 1
    work = 0
    if pid >= 0:  # the previous token's latest occurrence is now followed by this one
        e = _entry(hkey, hent, hval, hcnt, hused, b, sl, pid, mask)
        hcnt[b, sl, e] = 1.0 if kok else 0.0
        for d in range(x.shape[0]):
            hval[b, sl, e, d] = x[d]
        work += x.shape[0]
    if qok:
        hs = _slot(hkey, b, sl, tid, mask)
        if hkey[b, sl, hs] == tid:
            e = hent[b, sl, hs]
            if hcnt[b, sl, e] > 0.0:
                _read(o, den, h, w, w, hval[b, sl, e])
                work += x.shape[0]
    return work


@nb.njit(cache=True, nogil=True, boundscheck=False)
def _row(b, ids, v, q0, s, pc, pf, group, tables, prev_id, first_v, acc, cnt, vec, vok, pend, ring, rok,
         hkey, hent, hval, hcnt, hused, out, work):
    H, D = out.shape[1], v.shape[3]
    o = np.zeros((H, D))
    den = np.zeros(H)
    for i in range(ids.shape[1]):
        q = q0 + i
        if q < s:  # left padding: not a key, zero output
            out[b, :, i, :] = 0.0
            continue
        tid = ids[b, i]
        pid = prev_id[b] if q > s else -1
        if q == s:
            for h in range(H):
                _copy(first_v[b, h], v[b, group[h], i])
            work[b] += H * D
        o[:, :] = 0.0
        den[:] = 0.0
        for j in range(pc.shape[0]):
            kind, h, sl, kt, qt = pc[j, KIND], pc[j, HEAD], pc[j, SLOT], pc[j, KEY_TAB], pc[j, QUERY_TAB]
            x = v[b, group[h], i]
            kok = kt < 0 or tables[kt, tid] != 0
            qok = qt < 0 or tables[qt, tid] != 0
            w = pf[j, WEIGHT]
            if kind == SCAN:
                work[b] += _scan(b, sl, pf[j, RATE], _event(pc, j, tables, tid, pid, q, s), kok, qok, w, h, x,
                                 acc, cnt, o, den)
            elif kind == POINTER:
                work[b] += _pointer(b, sl, pc[j, RSLOT], pc[j, SHIFT], pc[j, STRICT] != 0, q, s,
                                    _event(pc, j, tables, tid, pid, q, s), kok, qok, w, h, x,
                                    vec, vok, pend, ring, rok, o, den)
            elif kind == SAME_TOKEN:
                work[b] += _same_token(b, sl, tid, kok, qok, w, h, x, hkey, hent, hval, hcnt, hused, o, den)
            elif kind == INDUCTION:
                work[b] += _induction(b, sl, tid, pid, kok, qok, w, h, x, hkey, hent, hval, hcnt, hused, o, den)
        for h in range(H):
            if den[h] > 0.0:
                inv = 1.0 / den[h]
                for d in range(D):
                    out[b, h, i, d] = o[h, d] * inv
            else:  # an empty row reads the first real token
                _copy(out[b, h, i], first_v[b, h])
        prev_id[b] = tid


@nb.njit(cache=True, nogil=True)
def _serial(ids, v, q0, start, pc, pf, group, tables, prev_id, first_v, acc, cnt, vec, vok, pend, ring, rok,
            hkey, hent, hval, hcnt, hused, out, work):
    for b in range(ids.shape[0]):
        _row(b, ids, v, q0, start[b], pc, pf, group, tables, prev_id, first_v, acc, cnt, vec, vok, pend, ring, rok,
             hkey, hent, hval, hcnt, hused, out, work)


@nb.njit(cache=True, nogil=True, parallel=True)
def _parallel(ids, v, q0, start, pc, pf, group, tables, prev_id, first_v, acc, cnt, vec, vok, pend, ring, rok,
              hkey, hent, hval, hcnt, hused, out, work):
    for b in nb.prange(ids.shape[0]):
        _row(b, ids, v, q0, start[b], pc, pf, group, tables, prev_id, first_v, acc, cnt, vec, vok, pend, ring, rok,
             hkey, hent, hval, hcnt, hused, out, work)


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


def run_stream(args: tuple, parallel: bool) -> None:
    """Call the kernel on prepared numpy arrays (see ``stream.LayerState.step``)."""
    (_parallel if parallel else _serial)(*args)
