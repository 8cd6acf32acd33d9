"""Fused Numba CPU kernel of the program-head op: per row, one integer pass per term, then one
value pass over the positions with all terms at once; no T x T matrix.

``ids [B, T] int64, v [B, T, D] float32|float64, start [B] int64 -> out [B, n_q, D]``.

Cost per row: O(T * D * n_terms) flops, O(T * D) memory traffic (V is read about once per
scan term plus once per gathered key; the output is written once), O(n_terms * D) float state
and O(n_terms * T) integer scratch (``code``). Why it is fast: each of the four primitives
(``spec``) needs only integers per position, found in O(T) by one left-to-right pass per term
(``_codes``): a POINTER's key is its latest event plus ``shift``, INDUCTION's the position after
the previous occurrence of the query's token; a SCAN needs where its events and keys are. The
value pass then keeps a running decayed sum per SCAN term (reset by an event) and a sum along
each chain of occurrences of a token (SAME_TOKEN), and gathers one row of V per pointer.
Occurrences are found with a small open-addressing hash table of size O(T), not a vocab-sized
one. Sums are float64. The history before the query window (``n_q``) is swept but not written.

Numba note: every helper is ``inline="always"`` and straight-line (no early return; the value
pass's helpers call no other helper). An early return, or a helper handing arrays to another
helper inside the position loop, left reference-count calls in the loop and kept LLVM from
vectorising it: 3-15x slower (measured against the per-kind kernel this replaced).
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
from headcode.kernels.program_head.stream_cpu import LAYOUT, fresh_cache

# columns of the packed per-term arrays (``HeadSpec.ints`` / ``reals``), from ``spec.SCHEMA``
KIND, KEY_TAB, QUERY_TAB, EV_TAB, EV_LAG, EV_START, STRICT, SHIFT, EARLIEST, WEIGHT, RATE = LAYOUT
# bits of a SCAN / SAME_TOKEN term's code at a position: an event, the token is a key, a query
EV_BIT, KEY_BIT, QUERY_BIT = 1, 2, 4
# where a contributing term's numerator row lives: a row of V, a scan state, a chain entry
_VIEW, _ACC, _CHAIN = 0, 1, 2


@nb.njit(inline="always")
def _flags(ints, i, idsb, s, tables, ev, kok, qok):
    """``ev / kok / qok [T - s]`` for term ``i`` at ``s + j``: an event (``spec``'s definition), the
    token is a key (key table), the query passes the gate (query table)."""
    tab, lag, first = ints[i, EV_TAB], ints[i, EV_LAG], ints[i, EV_START] != 0
    kt, qt = ints[i, KEY_TAB], ints[i, QUERY_TAB]
    for j in range(ev.shape[0]):
        tid = idsb[s + j]
        e = tab == EVERY or (first and j == 0)
        if tab >= 0 and j >= lag:
            e = e or tables[tab, idsb[s + j - lag]] != 0
        ev[j] = e
        kok[j] = kt < 0 or tables[kt, tid] != 0
        qok[j] = qt < 0 or tables[qt, tid] != 0


@nb.njit(inline="always")
def _pointer_codes(ints, i, s, ev, kok, qok, code):
    """POINTER: ``code[j, i]`` = its key ``latest(s + j) + shift`` (``earliest``: the first event's)
    when in ``[s, s + j]``, a key and the query passes the gate, else -1."""
    shift, strict, first = ints[i, SHIFT], ints[i, STRICT] != 0, ints[i, EARLIEST] != 0
    last = -1  # the latest (earliest) event, relative to s
    for j in range(ev.shape[0]):
        before = last
        if ev[j] and not (first and last >= 0):
            last = j
        lat = before if strict else last
        k = lat + shift
        code[j, i] = s + k if lat >= 0 and 0 <= k <= j and kok[k] and qok[j] else -1


@nb.njit(inline="always")
def _induction_codes(i, s, prev, kok, qok, code):
    """INDUCTION: ``code[j, i]`` = the position after the previous occurrence of the token at
    ``s + j`` (when it is a key and the query passes the gate), else -1."""
    for j in range(prev.shape[0]):
        k = prev[j] + 1 - s
        code[j, i] = s + k if prev[j] >= 0 and kok[k] and qok[j] else -1


@nb.njit(inline="always")
def _flag_codes(i, ev, kok, qok, code):
    """SCAN / SAME_TOKEN: ``code[j, i]`` = ``EV_BIT | KEY_BIT | QUERY_BIT`` as they hold at ``s + j``."""
    for j in range(ev.shape[0]):
        code[j, i] = EV_BIT * ev[j] + KEY_BIT * kok[j] + QUERY_BIT * qok[j]


@nb.njit(inline="always")
def _previous_occurrences(idsb, s, size, prev):
    """``prev [T - s]``: the latest earlier position of each token (or -1), by an open-addressing
    hash table of ``size`` (a power of two >= 2 (T - s)) slots."""
    hkey, hpos = np.full(size, -1, np.int64), np.full(size, -1, np.int64)
    mask = size - 1
    for j in range(prev.shape[0]):
        tid = idsb[s + j]
        h = (tid * 2654435761) & mask
        while hkey[h] != -1 and hkey[h] != tid:
            h = (h + 1) & mask
        prev[j] = hpos[h]
        hkey[h] = tid
        hpos[h] = s + j


@nb.njit(inline="always")
def _codes(ints, idsb, s, tables, prev, code):
    """The integer pass: ``code [T - s, n]`` for every term (see the ``_*_codes`` helpers)."""
    L = code.shape[0]
    ev, kok, qok = np.zeros(L, np.bool_), np.zeros(L, np.bool_), np.zeros(L, np.bool_)
    for i in range(ints.shape[0]):
        kind = ints[i, KIND]
        _flags(ints, i, idsb, s, tables, ev, kok, qok)
        if kind == POINTER:
            _pointer_codes(ints, i, s, ev, kok, qok, code)
        elif kind == INDUCTION:
            _induction_codes(i, s, prev, kok, qok, code)
        else:
            _flag_codes(i, ev, kok, qok, code)


@nb.njit(inline="always")
def _scan_step(acc, cnt, i, vb, q, rate, reset, kok):
    """SCAN state at ``q``: ``acc[i] = keep * acc[i] + kok * V[q]`` and ``cnt[i] = keep * cnt[i] + kok``,
    ``keep`` = 0 on an event (a new segment), else ``rate`` (1: a plain running sum)."""
    keep = 0.0 if reset else rate
    x = 1.0 if kok else 0.0
    cnt[i] = keep * cnt[i] + x
    if kok or keep != 1.0:  # else nothing changes (a plain sum, not a key)
        for d in range(acc.shape[1]):
            acc[i, d] = keep * acc[i, d] + x * vb[q, d]


@nb.njit(inline="always")
def _chain_push(chain, ccnt, j, p, vb, q):
    """``chain[j] = V[q] + chain[p]`` (``p < 0``: no earlier occurrence) and the count likewise:
    the sum over the occurrences of ``q``'s token up to ``q`` (``j = q - s``)."""
    keep, pp = (1.0, p) if p >= 0 else (0.0, j)
    ccnt[j] = keep * ccnt[pp] + 1.0
    for d in range(chain.shape[1]):
        chain[j, d] = keep * chain[pp, d] + vb[q, d]


@nb.njit(inline="always")
def _write_row(ob, o, vb, s, acc, chain, src, src_row, coef, m, den):
    """``out[o] = sum_j coef_j * source_j / den`` over the ``m`` contributing terms (zeroed, then
    added: a D-length write more per row than assigning the first, for one loop per source);
    ``V[s]`` when ``den <= 0``."""
    D = ob.shape[1]
    empty = den <= 0.0
    if empty:
        for d in range(D):
            ob[o, d] = vb[s, d]
    inv = 0.0 if empty else 1.0 / den
    if not empty:
        for d in range(D):
            ob[o, d] = 0.0
    for j in range(0 if empty else m):
        c, r = coef[j] * inv, src_row[j]
        if src[j] == _VIEW:
            for d in range(D):
                ob[o, d] += c * vb[r, d]
        elif src[j] == _ACC:
            for d in range(D):
                ob[o, d] += c * acc[r, d]
        else:
            for d in range(D):
                ob[o, d] += c * chain[r, d]


@nb.njit(inline="always")
def _needs(ints):
    """(a token hash is needed: SAME_TOKEN or INDUCTION, the occurrence chain is needed: SAME_TOKEN)."""
    need_hash = need_chain = False
    for i in range(ints.shape[0]):
        need_chain = need_chain or ints[i, KIND] == SAME_TOKEN
        need_hash = need_hash or ints[i, KIND] == SAME_TOKEN or ints[i, KIND] == INDUCTION
    return need_hash, need_chain


@nb.njit(cache=True, nogil=True, boundscheck=False, inline="always")
def _row(idsb, vb, s, q0, ints, reals, tables, ob):
    """One batch row: ``idsb [T], vb [T, D], s`` (its start) ``-> ob [T - q0, D]`` (rows ``q0..T-1``)."""
    T, D = vb.shape
    n, L = ints.shape[0], T - s
    need_hash, need_chain = _needs(ints)
    prev = np.full(L, -1, np.int64)
    if need_hash:
        size = 1
        while size < 2 * L:
            size *= 2
        _previous_occurrences(idsb, s, size, prev)
    code = np.empty((L, n), np.int64)
    _codes(ints, idsb, s, tables, prev, code)
    acc, cnt = np.zeros((n, D)), np.zeros(n)
    src, src_row, coef = np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n)
    chain, ccnt = np.zeros((L if need_chain else 0, D)), np.zeros(L if need_chain else 0)
    for q in range(q0, s):  # left padding inside the query window: zero rows
        for d in range(D):
            ob[q - q0, d] = 0.0
    for j in range(L):  # the value pass: position q = s + j
        q = s + j
        if need_chain:
            _chain_push(chain, ccnt, j, prev[j] - s if prev[j] >= 0 else -1, vb, q)
        m, den = 0, 0.0
        for i in range(n):
            kind, c, w = ints[i, KIND], code[j, i], reals[i, WEIGHT]
            row, coef[m] = -1, w
            if kind == SCAN:
                _scan_step(acc, cnt, i, vb, q, reals[i, RATE], c & EV_BIT, c & KEY_BIT)
                if c & QUERY_BIT and cnt[i] > 0.0:
                    row, src[m], coef[m] = i, _ACC, w / cnt[i]
            elif kind == SAME_TOKEN:
                if c & (KEY_BIT | QUERY_BIT) == KEY_BIT | QUERY_BIT:
                    row, src[m], coef[m] = j, _CHAIN, w / ccnt[j]
            elif c >= 0:
                row, src[m] = c, _VIEW
            if row >= 0:
                src_row[m] = row
                m += 1
                den += w
        if q >= q0:
            _write_row(ob, q - q0, vb, s, acc, chain, src, src_row, coef, m, den)


@nb.njit(cache=True, nogil=True)
def _serial(ids, v, start, q0, ints, reals, tables, out):
    for b in range(ids.shape[0]):
        _row(ids[b], v[b], start[b], q0, ints, reals, tables, out[b])


@nb.njit(cache=True, nogil=True, parallel=True)
def _parallel(ids, v, start, q0, ints, reals, tables, out):
    for b in nb.prange(ids.shape[0]):
        _row(ids[b], v[b], start[b], q0, ints, reals, tables, out[b])


@nb.njit(cache=True)
def _layout():
    return (KIND, KEY_TAB, QUERY_TAB, EV_TAB, EV_LAG, EV_START, STRICT, SHIFT, EARLIEST, WEIGHT, RATE)


fresh_cache(_layout, LAYOUT, (_serial, _parallel))
KERNELS = (_serial, _parallel)
_NO_TABLES = np.zeros((0, 1), dtype=np.uint8)


def compile_kernels(cache: bool = False) -> tuple:
    """The (serial, parallel) kernels compiled again from the module's current helpers (a test
    that swaps a primitive's arithmetic, e.g. ``_pointer_codes``, recompiles through this)."""
    return (nb.njit(cache=cache, nogil=True)(_serial.py_func),
            nb.njit(cache=cache, nogil=True, parallel=True)(_parallel.py_func))


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
    rng = (int(ids.min()), int(ids.max())) if ids.size and spec.tables.shape[0] else (0, 0)
    nq = check_inputs(spec, ids.shape, v.shape, rng, None if start is None else st, n_q)
    out = np.empty((B, nq, v.shape[2]), dtype=v.dtype)
    if nq == 0 or B == 0:
        return out
    tables = spec.tables if spec.tables.shape[0] else _NO_TABLES
    fn = KERNELS[1] if (parallel if parallel is not None else B > 1) else KERNELS[0]
    fn(ids, v, st, T - nq, spec.ints, spec.reals, tables, out)
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
