"""Streaming Numba kernel of the program-head op: the selector states that make a decoding step
cost O(terms * D) per replaced head, whatever the context length (DESIGN.md, semantics 8).

One call runs every replaced head of one layer over ``n`` new tokens (prefill: the prompt;
decoding: one token), reading each token once and carrying each selector's state between calls.
This is the one place where a selector's decoding state is defined; per kind:

=================  =====================================================================
kind               state (per batch row, per term)
=================  =====================================================================
uniform            running sum of key values and their count (``acc``, ``cnt``)
decay              the same, both multiplied by ``rate`` each step
sentence           the same, reset at a sentence start (needs the previous token id)
first              the head's value at the first real token (``first_v``; shared per head)
offset k           a ring buffer of the last ``k + 1`` values and key flags (``ring``)
most_recent        the last key value seen and whether there is one (``vec``, ``vok``)
sentence_start     the value at the current sentence's first token and its key flag
word_start         the value at the current word's first token and its key flag
segment_start      the same at the current segment's first token (after an aux-table token)
same_token         per-token map: token id -> (sum of its values, count) (``hkey``/``hval``)
induction          per-token map: token id -> (value after its latest occurrence, key flag)
=================  =====================================================================

Every state but the per-token maps is O(D); a map holds one D-vector per distinct token seen
(looked up in O(1): open addressing). ``work[b]`` counts the state elements each call reads or
writes (for the test that a step costs the same at any context length).

``ids [B, n] int64, v [B, G, n, D] (values of every KV group), q0`` (absolute position of the
first new token) and ``start [B]`` (first real position) -> ``out [B, H, n, D]``.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from headcode.kernels.program_head.spec import (
    DECAY,
    FIRST,
    INDUCTION,
    MOST_RECENT,
    OFFSET,
    SAME_TOKEN,
    SEGMENT_START,
    SENTENCE,
    SENTENCE_START,
    UNIFORM,
    WORD_START,
)

# state kinds: which state array a term's ``slot`` indexes
ACC, VEC, RING, MAP, NONE = range(5)
STATE_OF_KIND = {UNIFORM: ACC, DECAY: ACC, SENTENCE: ACC, MOST_RECENT: VEC, SENTENCE_START: VEC,
                 WORD_START: VEC, SEGMENT_START: VEC, OFFSET: RING, SAME_TOKEN: MAP, INDUCTION: MAP, FIRST: NONE}


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
        for d in range(hval.shape[3]):
            hval[b, m, e, d] = 0.0
        return e
    return hent[b, m, h]


@nb.njit(cache=True, nogil=True, boundscheck=False)
def _row(b, ids, v, q0, s, kinds, ks, rates, strict, key_tab, query_tab, weights, head, slot, group,
         tables, bnd, nwd, prev_id, first_id, first_v, acc, cnt, vec, vok, ring, rok,
         hkey, hent, hval, hcnt, hused, out, work):
    n = ids.shape[1]
    D = v.shape[3]
    H = out.shape[1]
    J = kinds.shape[0]
    R = ring.shape[2]
    mask = hkey.shape[2] - 1
    o = np.zeros((H, D))
    den = np.zeros(H)
    for i in range(n):
        q = q0 + i
        if q < s:  # left padding: not a key, zero output
            for h in range(H):
                for d in range(D):
                    out[b, h, i, d] = 0.0
            continue
        tid = ids[b, i]
        pid = prev_id[b] if q > s else -1
        if q == s:
            first_id[b] = tid
            for h in range(H):
                for d in range(D):
                    first_v[b, h, d] = v[b, group[h], i, d]
            work[b] += H * D
        for h in range(H):
            den[h] = 0.0
            for d in range(D):
                o[h, d] = 0.0
        for j in range(J):
            kind = kinds[j]
            h = head[j]
            g = group[h]
            kt = key_tab[j]
            kok = kt < 0 or tables[kt, tid] != 0
            qok = query_tab[j] < 0 or tables[query_tab[j], tid] != 0
            w = weights[j]
            sl = slot[j]
            if kind == UNIFORM or kind == DECAY or kind == SENTENCE:
                if kind == SENTENCE and (q == s or (bnd[h] >= 0 and pid >= 0 and tables[bnd[h], pid] != 0)):
                    cnt[b, sl] = 0.0
                    for d in range(D):
                        acc[b, sl, d] = 0.0
                r = rates[j] if kind == DECAY else 1.0
                cnt[b, sl] = r * cnt[b, sl] + (1.0 if kok else 0.0)
                if kok:
                    for d in range(D):
                        acc[b, sl, d] = r * acc[b, sl, d] + v[b, g, i, d]
                elif kind == DECAY:
                    for d in range(D):
                        acc[b, sl, d] *= r
                work[b] += D
                if qok and cnt[b, sl] > 0.0:
                    c = w / cnt[b, sl]
                    for d in range(D):
                        o[h, d] += c * acc[b, sl, d]
                    den[h] += w
            elif kind == OFFSET:
                r0 = q % R
                for d in range(D):
                    ring[b, sl, r0, d] = v[b, g, i, d]
                rok[b, sl, r0] = 1 if kok else 0
                work[b] += D
                src = q - ks[j]
                if qok and src >= s:
                    r1 = src % R
                    if rok[b, sl, r1] != 0:
                        for d in range(D):
                            o[h, d] += w * ring[b, sl, r1, d]
                        den[h] += w
                        work[b] += D
            elif kind == FIRST:
                if qok and (kt < 0 or tables[kt, first_id[b]] != 0):
                    for d in range(D):
                        o[h, d] += w * first_v[b, h, d]
                    den[h] += w
                    work[b] += D
            elif kind == MOST_RECENT:
                if strict[j] != 0 and qok and vok[b, sl] != 0:
                    for d in range(D):
                        o[h, d] += w * vec[b, sl, d]
                    den[h] += w
                    work[b] += D
                if kok:
                    vok[b, sl] = 1
                    for d in range(D):
                        vec[b, sl, d] = v[b, g, i, d]
                    work[b] += D
                if strict[j] == 0 and qok and vok[b, sl] != 0:
                    for d in range(D):
                        o[h, d] += w * vec[b, sl, d]
                    den[h] += w
                    work[b] += D
            elif kind == SENTENCE_START or kind == WORD_START or kind == SEGMENT_START:
                if kind == SENTENCE_START:
                    begin = q == s or (bnd[h] >= 0 and pid >= 0 and tables[bnd[h], pid] != 0)
                elif kind == SEGMENT_START:  # ks[j]: the aux table row (the token that ends a segment)
                    begin = q == s or (ks[j] >= 0 and pid >= 0 and tables[ks[j], pid] != 0)
                else:
                    begin = q == s or (nwd[h] >= 0 and tables[nwd[h], tid] != 0)
                if begin:
                    vok[b, sl] = 1 if kok else 0
                    for d in range(D):
                        vec[b, sl, d] = v[b, g, i, d]
                    work[b] += D
                if qok and vok[b, sl] != 0:
                    for d in range(D):
                        o[h, d] += w * vec[b, sl, d]
                    den[h] += w
                    work[b] += D
            elif kind == SAME_TOKEN:
                if kok:  # all occurrences share the token, so all are keys or none
                    e = _entry(hkey, hent, hval, hcnt, hused, b, sl, tid, mask)
                    hcnt[b, sl, e] += 1.0
                    for d in range(D):
                        hval[b, sl, e, d] += v[b, g, i, d]
                    work[b] += D
                    if qok:
                        c = w / hcnt[b, sl, e]
                        for d in range(D):
                            o[h, d] += c * hval[b, sl, e, d]
                        den[h] += w
                        work[b] += D
            elif kind == INDUCTION:
                if pid >= 0:  # the previous token's latest occurrence is now followed by this one
                    e = _entry(hkey, hent, hval, hcnt, hused, b, sl, pid, mask)
                    hcnt[b, sl, e] = 1.0 if kok else 0.0
                    for d in range(D):
                        hval[b, sl, e, d] = v[b, g, i, d]
                    work[b] += D
                if qok:
                    hs = _slot(hkey, b, sl, tid, mask)
                    if hkey[b, sl, hs] == tid:
                        e = hent[b, sl, hs]
                        if hcnt[b, sl, e] > 0.0:
                            for d in range(D):
                                o[h, d] += w * hval[b, sl, e, d]
                            den[h] += w
                            work[b] += D
        for h in range(H):
            if den[h] > 0.0:
                inv = 1.0 / den[h]
                for d in range(D):
                    out[b, h, i, d] = o[h, d] * inv
            else:
                for d in range(D):
                    out[b, h, i, d] = first_v[b, h, d]
        prev_id[b] = tid


@nb.njit(cache=True, nogil=True)
def _serial(ids, v, q0, start, kinds, ks, rates, strict, key_tab, query_tab, weights, head, slot, group,
            tables, bnd, nwd, prev_id, first_id, first_v, acc, cnt, vec, vok, ring, rok,
            hkey, hent, hval, hcnt, hused, out, work):
    for b in range(ids.shape[0]):
        _row(b, ids, v, q0, start[b], kinds, ks, rates, strict, key_tab, query_tab, weights, head, slot, group,
             tables, bnd, nwd, prev_id, first_id, first_v, acc, cnt, vec, vok, ring, rok,
             hkey, hent, hval, hcnt, hused, out, work)


@nb.njit(cache=True, nogil=True, parallel=True)
def _parallel(ids, v, q0, start, kinds, ks, rates, strict, key_tab, query_tab, weights, head, slot, group,
              tables, bnd, nwd, prev_id, first_id, first_v, acc, cnt, vec, vok, ring, rok,
              hkey, hent, hval, hcnt, hused, out, work):
    for b in nb.prange(ids.shape[0]):
        _row(b, ids, v, q0, start[b], kinds, ks, rates, strict, key_tab, query_tab, weights, head, slot, group,
             tables, bnd, nwd, prev_id, first_id, first_v, acc, cnt, vec, vok, ring, rok,
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
