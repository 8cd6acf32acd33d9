"""Fused Numba CPU kernel of the program-head op: one pass over the positions of each row,
all terms at once, no T x T matrix.

``ids [B, T] int64, v [B, T, D] float32|float64, start [B] int64 -> out [B, n_q, D]``.

Cost per row: O(T * D * n_terms) flops, O(T * D) memory traffic (V is read about once per
scan term plus once per gathered key), O(n_terms * D) state. Why it is fast: every selector
is either a running sum (uniform, sentence = sum reset at sentence starts, decay = linear
recurrence, same_token = sum along the chain of earlier occurrences of the query's token)
or a pointer to one key (offset, first, most_recent, sentence/word start, induction), so a
single left-to-right sweep keeps every term's state in a few D-vectors. Occurrences of a
token are found with a small open-addressing hash table of size O(T), not a vocab-sized one.
Accumulation is in float64. The history before the query window (``n_q``) is swept but not
written.
"""

from __future__ import annotations

import numba as nb
import numpy as np
import torch

from headcode.kernels.program_head.spec import (
    ANCHOR,
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
    HeadSpec,
    check_inputs,
)


@nb.njit(cache=True, nogil=True, boundscheck=False)
def _row(b, ids, v, s, q0, kinds, ks, rates, strict, key_tab, query_tab, aux_tab, weights, tables, bnd, nwd, out):
    T = ids.shape[1]
    D = v.shape[2]
    n = kinds.shape[0]
    acc = np.zeros((n, D))
    cnt = np.zeros(n)
    last = np.full(n, -1, np.int64)
    need_hash = False
    need_chain = False
    for i in range(n):
        if kinds[i] == SAME_TOKEN:
            need_chain = True
            need_hash = True
        elif kinds[i] == INDUCTION:
            need_hash = True
    L = T - s
    size = 1
    if need_hash:
        while size < 2 * L:
            size *= 2
    mask = size - 1
    hkey = np.full(size, -1, np.int64)
    hpos = np.full(size, -1, np.int64)
    chain = np.zeros((L if need_chain else 1, D))
    ccnt = np.zeros(L if need_chain else 1)
    coef = np.zeros(n)
    src_kind = np.zeros(n, np.int64)
    src_row = np.zeros(n, np.int64)
    vb = v[b]
    ob = out[b]
    for q in range(q0, s):  # left padding inside the query window: zero rows
        for d in range(D):
            out[b, q - q0, d] = 0.0
    sent = s
    word = s
    for q in range(s, T):
        tid = ids[b, q]
        if bnd >= 0 and q > s and tables[bnd, ids[b, q - 1]] != 0:
            sent = q
        if nwd >= 0 and tables[nwd, tid] != 0:
            word = q
        prev = -1
        if need_hash:
            h = (tid * 2654435761) & mask
            while hkey[h] != -1 and hkey[h] != tid:
                h = (h + 1) & mask
            prev = hpos[h]
            hkey[h] = tid
            hpos[h] = q
        if need_chain:
            j = q - s
            if prev >= 0:
                p = prev - s
                for d in range(D):
                    chain[j, d] = chain[p, d] + v[b, q, d]
                ccnt[j] = ccnt[p] + 1.0
            else:
                for d in range(D):
                    chain[j, d] = v[b, q, d]
                ccnt[j] = 1.0
        emit = q >= q0
        den = 0.0
        m = 0  # contributing terms this row: (kind of source, row, coefficient)
        for i in range(n):
            kind = kinds[i]
            kt = key_tab[i]
            kok = kt < 0 or tables[kt, tid] != 0
            qok = query_tab[i] < 0 or tables[query_tab[i], tid] != 0
            w = weights[i]
            src = -1
            if kind == UNIFORM or kind == SENTENCE or kind == DECAY:
                if kind == SENTENCE and sent == q:
                    cnt[i] = 0.0
                    for d in range(D):
                        acc[i, d] = 0.0
                if kind == DECAY:
                    r = rates[i]
                    cnt[i] *= r
                    if kok:
                        cnt[i] += 1.0
                        for d in range(D):
                            acc[i, d] = r * acc[i, d] + vb[q, d]
                    else:
                        for d in range(D):
                            acc[i, d] *= r
                elif kok:
                    cnt[i] += 1.0
                    for d in range(D):
                        acc[i, d] += vb[q, d]
                if emit and qok and cnt[i] > 0.0:
                    src_kind[m] = 1
                    src_row[m] = i
                    coef[m] = w / cnt[i]
                    m += 1
                    den += w
                continue
            if kind == SAME_TOKEN:
                if emit and qok and kok:
                    src_kind[m] = 2
                    src_row[m] = q - s
                    coef[m] = w / ccnt[q - s]
                    m += 1
                    den += w
                continue
            if kind == MOST_RECENT:
                before = last[i]
                if kok:
                    last[i] = q
                src = before if strict[i] != 0 else last[i]
            else:
                if kind == SEGMENT_START:
                    if q == s or tables[aux_tab[i], ids[b, q - 1]] != 0:
                        last[i] = q
                    src = last[i]
                elif kind == ANCHOR:
                    before = last[i]
                    if tables[aux_tab[i], tid] != 0:
                        last[i] = q
                    a = before if strict[i] != 0 else last[i]
                    src = a + ks[i] if a >= 0 else -1
                    if src < s or src > q:
                        src = -1
                elif kind == OFFSET:
                    src = q - ks[i]
                    if src < s:
                        src = -1
                elif kind == FIRST:
                    src = s
                elif kind == SENTENCE_START:
                    src = sent
                elif kind == WORD_START:
                    src = word
                elif kind == INDUCTION:
                    src = prev + 1 if prev >= 0 else -1
                if src >= 0 and kt >= 0 and tables[kt, ids[b, src]] == 0:
                    src = -1
            if emit and qok and src >= 0:
                src_kind[m] = 0
                src_row[m] = src
                coef[m] = w
                m += 1
                den += w
        if not emit:
            continue
        o = q - q0
        if den <= 0.0:
            for d in range(D):
                ob[o, d] = vb[s, d]
            continue
        inv = 1.0 / den
        for j in range(m):  # the first term assigns, the others add: one write stream per row
            c = coef[j] * inv
            r0 = src_row[j]
            if src_kind[j] == 0:
                if j == 0:
                    for d in range(D):
                        ob[o, d] = c * vb[r0, d]
                else:
                    for d in range(D):
                        ob[o, d] += c * vb[r0, d]
            else:
                src = acc if src_kind[j] == 1 else chain
                if j == 0:
                    for d in range(D):
                        ob[o, d] = c * src[r0, d]
                else:
                    for d in range(D):
                        ob[o, d] += c * src[r0, d]


@nb.njit(cache=True, nogil=True)
def _serial(ids, v, start, q0, kinds, ks, rates, strict, key_tab, query_tab, aux_tab, weights, tables, bnd, nwd,
            out):
    for b in range(ids.shape[0]):
        _row(b, ids, v, start[b], q0, kinds, ks, rates, strict, key_tab, query_tab, aux_tab, weights, tables,
             bnd, nwd, out)


@nb.njit(cache=True, nogil=True, parallel=True)
def _parallel(ids, v, start, q0, kinds, ks, rates, strict, key_tab, query_tab, aux_tab, weights, tables, bnd,
              nwd, out):
    for b in nb.prange(ids.shape[0]):
        _row(b, ids, v, start[b], q0, kinds, ks, rates, strict, key_tab, query_tab, aux_tab, weights, tables,
             bnd, nwd, out)


_NO_TABLES = np.zeros((0, 1), dtype=np.uint8)


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
    fn(ids, v, st, T - nq, spec.kinds, spec.ks, spec.rates, spec.strict, spec.key_tab, spec.query_tab,
       spec.aux_tab, spec.weights, tables, spec.boundary_tab, spec.new_word_tab, out)
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
