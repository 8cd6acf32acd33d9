"""Fused Numba CPU kernel of the program-head op: one pass over the positions of each row,
all terms at once, no T x T matrix.

``ids [B, T] int64, v [B, T, D] float32|float64, start [B] int64 -> out [B, n_q, D]``.

Cost per row: O(T * D * n_terms) flops, O(T * D) memory traffic (V is read about once per
scan term plus once per gathered key), O(n_terms * D) state. Why it is fast: each of the four
primitives (``spec``) keeps a few numbers per term in one left-to-right sweep: a POINTER the
position of its latest event (its key is that plus ``shift``), a SCAN a running decayed sum
that an event resets, SAME_TOKEN a sum along the chain of earlier occurrences of the query's
token, INDUCTION the previous occurrence (its key is the position after it). Occurrences of a
token are found with a small open-addressing hash table of size O(T), not a vocab-sized one.
Term state is float64. The history before the query window (``n_q``) is swept but not written.
"""

from __future__ import annotations

import numba as nb
import numpy as np
import torch

from headcode.kernels.program_head.spec import (
    EVERY,
    INDUCTION,
    POINTER,
    SAME_TOKEN,
    SCAN,
    HeadSpec,
    check_inputs,
)

# columns of the packed per-term arrays: ``ints [n, 8] int64`` and ``reals [n, 2] float64``
KIND, EV_TAB, EV_LAG, EV_START, STRICT, SHIFT, KEY_TAB, QUERY_TAB = range(8)
RATE, WEIGHT = range(2)
# where a contributing term's numerator row lives: a row of V, a scan state, a chain entry
_NONE, _VIEW, _ACC, _CHAIN = -1, 0, 1, 2


@nb.njit(inline="always")
def _in_table(tables, row, tid):
    """Token ``tid`` is in table ``row`` (every token is in row -1)."""
    return row < 0 or tables[row, tid] != 0


@nb.njit(inline="always")
def _is_event(ints, i, q, s, idsb, tables):
    """Term ``i`` has an event at ``q`` (``spec``'s definition)."""
    tab = ints[i, EV_TAB]
    if tab == EVERY or (ints[i, EV_START] != 0 and q == s):
        return True
    if tab < 0:
        return False
    p = q - ints[i, EV_LAG]
    return p >= s and tables[tab, idsb[p]] != 0


@nb.njit(inline="always")
def _advance_latest(last, i, q, ev, strict):
    """Record an event at ``q`` in ``last[i]``; returns ``latest(q)`` (strict: before ``q``), -1 for none."""
    before = last[i]
    if ev:
        last[i] = q
    return before if strict != 0 else last[i]


@nb.njit(inline="always")
def _pointer_key(lat, shift, s, q, idsb, kt, tables):
    """``lat + shift`` when ``lat`` exists, the key lies in ``[s, q]`` and its token passes ``kt``; else -1."""
    if lat < 0:
        return -1
    k = lat + shift
    if k < s or k > q or not _in_table(tables, kt, idsb[k]):
        return -1
    return k


@nb.njit(inline="always")
def _scan_step(acc, cnt, i, vb, q, rate, reset, kok):
    """SCAN state at ``q``: zeroed on an event, then ``acc[i] = rate * acc[i] + kok * V[q]`` and
    ``cnt[i] = rate * cnt[i] + kok`` (``rate == 1``: plain running sum)."""
    D = acc.shape[1]
    if reset:
        cnt[i] = 0.0
        for d in range(D):
            acc[i, d] = 0.0
    cnt[i] *= rate
    if kok:
        cnt[i] += 1.0
        for d in range(D):
            acc[i, d] = rate * acc[i, d] + vb[q, d]
    elif rate != 1.0:
        for d in range(D):
            acc[i, d] *= rate


@nb.njit(inline="always")
def _previous_occurrence(hkey, hpos, tid, q):
    """The latest earlier position of token ``tid`` (or -1), then records ``q`` as the latest."""
    mask = hkey.shape[0] - 1
    h = (tid * 2654435761) & mask
    while hkey[h] != -1 and hkey[h] != tid:
        h = (h + 1) & mask
    prev = hpos[h]
    hkey[h] = tid
    hpos[h] = q
    return prev


@nb.njit(inline="always")
def _chain_push(chain, ccnt, j, p, vb, q):
    """``chain[j] = V[q] + chain[p]`` (``p < 0``: no earlier occurrence) and the count likewise:
    the sum over the occurrences of ``q``'s token up to ``q`` (``j = q - s``)."""
    D = chain.shape[1]
    if p >= 0:
        for d in range(D):
            chain[j, d] = chain[p, d] + vb[q, d]
        ccnt[j] = ccnt[p] + 1.0
    else:
        for d in range(D):
            chain[j, d] = vb[q, d]
        ccnt[j] = 1.0


@nb.njit(inline="always")
def _term(ints, reals, tables, i, q, s, idsb, vb, prev, acc, cnt, last, ccnt):
    """Advance term ``i``'s state to ``q``; returns its contribution to row ``q`` as (source,
    row of the source, coefficient), source ``_NONE`` when the row is empty or gated off."""
    kind, kt = ints[i, KIND], ints[i, KEY_TAB]
    tid = idsb[q]
    w = reals[i, WEIGHT]
    qok = _in_table(tables, ints[i, QUERY_TAB], tid)
    if kind == SCAN:
        _scan_step(acc, cnt, i, vb, q, reals[i, RATE], _is_event(ints, i, q, s, idsb, tables),
                   _in_table(tables, kt, tid))
        if qok and cnt[i] > 0.0:
            return _ACC, i, w / cnt[i]
        return _NONE, 0, 0.0
    if kind == SAME_TOKEN:
        if qok and _in_table(tables, kt, tid):
            return _CHAIN, q - s, w / ccnt[q - s]
        return _NONE, 0, 0.0
    if kind == POINTER:
        lat = _advance_latest(last, i, q, _is_event(ints, i, q, s, idsb, tables), ints[i, STRICT])
        key = _pointer_key(lat, ints[i, SHIFT], s, q, idsb, kt, tables)
    else:  # INDUCTION: the key after the previous occurrence of the query's token
        key = _pointer_key(prev, 1, s, q, idsb, kt, tables)
    if qok and key >= 0:
        return _VIEW, key, w
    return _NONE, 0, 0.0


@nb.njit(inline="always")
def _axpy(orow, c, x, assign):
    """``orow = c * x`` (``assign``) or ``orow += c * x``."""
    if assign:
        for d in range(orow.shape[0]):
            orow[d] = c * x[d]
    else:
        for d in range(orow.shape[0]):
            orow[d] += c * x[d]


@nb.njit(inline="always")
def _write_row(orow, vb, s, acc, chain, src, src_row, coef, m, den):
    """``out[q] = sum_j coef_j * source_j / den`` over the ``m`` contributing terms (the first
    assigns, the others add: one write stream per row); ``V[s]`` when ``den <= 0``."""
    if den <= 0.0:
        _axpy(orow, 1.0, vb[s], True)
        return
    inv = 1.0 / den
    for j in range(m):
        r = src_row[j]
        if src[j] == _VIEW:
            _axpy(orow, coef[j] * inv, vb[r], j == 0)
        elif src[j] == _ACC:
            _axpy(orow, coef[j] * inv, acc[r], j == 0)
        else:
            _axpy(orow, coef[j] * inv, chain[r], j == 0)


@nb.njit(inline="always")
def _needs(ints):
    """(a token hash is needed: SAME_TOKEN or INDUCTION, the occurrence chain is needed: SAME_TOKEN)."""
    need_hash = need_chain = False
    for i in range(ints.shape[0]):
        need_chain = need_chain or ints[i, KIND] == SAME_TOKEN
        need_hash = need_hash or ints[i, KIND] == SAME_TOKEN or ints[i, KIND] == INDUCTION
    return need_hash, need_chain


@nb.njit(cache=True, nogil=True, boundscheck=False)
def _row(idsb, vb, s, q0, ints, reals, tables, ob):
    """One batch row: ``idsb [T], vb [T, D], s`` (its start) ``-> ob [T - q0, D]`` (rows ``q0..T-1``)."""
    T, D = vb.shape
    n = ints.shape[0]
    acc, cnt, last = np.zeros((n, D)), np.zeros(n), np.full(n, -1, np.int64)
    src, src_row, coef = np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n)
    need_hash, need_chain = _needs(ints)
    L = T - s
    size = 1
    while need_hash and size < 2 * L:
        size *= 2
    hkey, hpos = np.full(size, -1, np.int64), np.full(size, -1, np.int64)
    chain, ccnt = np.zeros((L if need_chain else 0, D)), np.zeros(L if need_chain else 0)
    for q in range(q0, s):  # left padding inside the query window: zero rows
        for d in range(D):
            ob[q - q0, d] = 0.0
    for q in range(s, T):
        prev = _previous_occurrence(hkey, hpos, idsb[q], q) if need_hash else -1
        if need_chain:
            _chain_push(chain, ccnt, q - s, prev - s if prev >= 0 else -1, vb, q)
        m, den = 0, 0.0
        for i in range(n):
            kind, r, c = _term(ints, reals, tables, i, q, s, idsb, vb, prev, acc, cnt, last, ccnt)
            if kind != _NONE:
                src[m], src_row[m], coef[m] = kind, r, c
                m += 1
                den += reals[i, WEIGHT]
        if q >= q0:
            _write_row(ob[q - q0], vb, s, acc, chain, src, src_row, coef, m, den)


@nb.njit(cache=True, nogil=True)
def _serial(ids, v, start, q0, ints, reals, tables, out):
    for b in range(ids.shape[0]):
        _row(ids[b], v[b], start[b], q0, ints, reals, tables, out[b])


@nb.njit(cache=True, nogil=True, parallel=True)
def _parallel(ids, v, start, q0, ints, reals, tables, out):
    for b in nb.prange(ids.shape[0]):
        _row(ids[b], v[b], start[b], q0, ints, reals, tables, out[b])


_NO_TABLES = np.zeros((0, 1), dtype=np.uint8)


def pack(spec: HeadSpec) -> tuple[np.ndarray, np.ndarray]:
    """The spec's per-term arrays as ``ints [n, 8] int64`` (columns ``KIND..QUERY_TAB``) and
    ``reals [n, 2] float64`` (``RATE, WEIGHT``)."""
    ints = np.stack([spec.kinds, spec.ev_tab, spec.ev_lag, spec.ev_start, spec.strict, spec.shift,
                     spec.key_tab, spec.query_tab], axis=1).astype(np.int64).reshape(-1, 8)
    reals = np.stack([spec.rates, spec.weights], axis=1).astype(np.float64).reshape(-1, 2)
    return np.ascontiguousarray(ints), np.ascontiguousarray(reals)


def program_head_numba_np(spec: HeadSpec, ids: np.ndarray, v: np.ndarray, start: np.ndarray | None = None,
                          n_q: int | None = None, parallel: bool | None = None) -> np.ndarray:
    """Numpy launcher: ``ids [B, T] int64, v [B, T, D] float32|float64, start [B] int64 | None
    -> out [B, n_q, D]`` (v's dtype). ``parallel`` (default: when B > 1) spreads rows over threads."""
    B, T = ids.shape
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if v.dtype not in (np.float32, np.float64):
        v = v.astype(np.float32)
    v = np.ascontiguousarray(v)
    st = np.zeros(B, np.int64) if start is None else np.ascontiguousarray(start, dtype=np.int64)
    lo, hi = (int(ids.min()), int(ids.max())) if ids.size and spec.tables.shape[0] else (0, 0)
    nq = check_inputs(spec, ids.shape, v.shape, lo, hi, None if start is None else st, n_q)
    out = np.empty((B, nq, v.shape[2]), dtype=v.dtype)
    if nq == 0 or B == 0:
        return out
    tables = spec.tables if spec.tables.shape[0] else _NO_TABLES
    fn = _parallel if (parallel if parallel is not None else B > 1) else _serial
    fn(ids, v, st, T - nq, *pack(spec), tables, out)
    return out


def program_head_numba(spec: HeadSpec, ids: torch.Tensor, v: torch.Tensor, start: torch.Tensor | None = None,
                       n_q: int | None = None, parallel: bool | None = None) -> torch.Tensor:
    """Torch launcher (CPU tensors; zero-copy where contiguous): ``ids [B, T] int64,
    v [B, T, D], start [B] int64 | None -> out [B, n_q, D]`` (v's dtype; bf16/fp16 computed in fp32)."""
    vd = v.detach()
    cast = vd.dtype not in (torch.float32, torch.float64)
    vn = (vd.float() if cast else vd).cpu().numpy()
    out = program_head_numba_np(spec, ids.detach().cpu().numpy(), vn,
                                None if start is None else start.detach().cpu().numpy(), n_q, parallel)
    res = torch.from_numpy(out)
    return res.to(v.dtype) if cast else res
