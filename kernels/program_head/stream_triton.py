"""Triton kernels of the decoding states (the GPU counterpart of ``stream_cpu``; same semantics,
checked against it and the dense reference under ``TRITON_INTERPRET=1`` where no GPU is lent).

A step over ``n`` new tokens is two launches, no host synchronisation:
- ``_scalar_kernel``, grid ``(B, J)``: each program owns one term of one row and sweeps the new
  tokens, updating that term's scalar state (counts, key flags, pending positions, ring flags,
  per-token map slots) and writing, per token, what the vector side must do (``_put``): one pool
  row to update as ``row = mul * row + add * v``, one pool row to copy into another (a pointer
  capturing its key from its ring), and up to two pool rows to read with their coefficients
  (before and after the updates), plus the weight the term adds to its head's denominator;
- ``_vector_kernel``, grid ``(B, H, D / BLOCK_D)``: each program owns one head's ``BLOCK_D``
  columns of one row and sweeps the new tokens, applying its terms' updates and reads.

Vector state lives in one pool per row, ``[B, P, D]`` float32: the heads' first-token values, the
scan sums, pointer values, rings and per-token map entries (the maps, without a host sync, sized
by the tokens seen). The program (``LayerProgram``: packed columns, placement) and tables go to the device once.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
import triton
import triton.language as tl

from headcode.kernels.program_head import spec as S
from headcode.kernels.program_head import stream_cpu as C
from headcode.kernels.program_head.stream import LayerProgram

# the constants the kernels read (Triton sees module globals only as constexpr): the column
# positions of ``spec.SCHEMA`` (as ``stream_cpu`` reads them) and of ``LayerProgram.place``
SCAN, POINTER, SAME_TOKEN, INDUCTION, EVERY = map(tl.constexpr, (S.SCAN, S.POINTER, S.SAME_TOKEN, S.INDUCTION,
                                                           S.EVERY))
KIND, KEY_TAB, QUERY_TAB, EV_TAB, EV_LAG, EV_START, STRICT, SHIFT, EARLIEST, WEIGHT, RATE = map(tl.constexpr, C.LAYOUT)
SLOT, RSLOT = tl.constexpr(C.SLOT), tl.constexpr(C.RSLOT)
ND = tl.constexpr(5)  # descriptor fields: int (wr, cpd, cps, rd0, rd1), float (mul, add, c0, c1, dw)


@triton.jit
def _in(tables_ptr, V, row, tok):
    """Is token ``tok`` in table ``row``? (False for row < 0 or tok < 0.)"""
    hit = tl.load(tables_ptr + tl.maximum(row, 0) * V + tl.maximum(tok, 0)) != 0
    return hit & (row >= 0) & (tok >= 0)


@triton.jit
def _event(row, tables_ptr, V, tid, pid, q, s):
    """Is there an event of the term whose packed columns are at ``row`` at ``q``? (``pid``: the
    previous token, -1 at the start.)"""
    et = tl.load(row + EV_TAB)
    tok = tl.where(tl.load(row + EV_LAG) == 0, tid, pid)
    at_start = (tl.load(row + EV_START) != 0) & (q == s)
    return (et == EVERY) | at_start | _in(tables_ptr, V, et, tok)


@triton.jit
def _scan(cnt_ptr, ci, row, rate, ev, kok, qok, w):
    """Scan: count in ``cnt``, sum in pool ``row`` -> (wr, mul, add, rd1, c1, dw)."""
    r = tl.where(ev, 0.0 * rate, rate)  # an event starts a new segment at this token
    add = kok.to(tl.float32)
    cnt = r * tl.load(cnt_ptr + ci) + add
    tl.store(cnt_ptr + ci, cnt)
    has = qok & (cnt > 0.0)
    return row, r, add, tl.where(has, row, -1), tl.where(has, w / tl.where(has, cnt, 1.0), 0.0), tl.where(has, w, 0.0)


@triton.jit
def _pointer(row, vok_ptr, pend_ptr, seen_ptr, rok_ptr, vi, rb, q, s, ev, kok, qok, vrow, ring0, R, none):
    """A pointer term (its packed columns at ``row``): key flag in ``vok``, pending key in ``pend``,
    first event seen in ``seen``, ring flags at ``rok + rb``, value in pool ``vrow``, ring rows from
    ``ring0`` -> (wr, cpd, cps, rd0, rd1) (every write copies: mul 0, add 1)."""
    m = tl.load(row + SHIFT)
    strict = tl.load(row + STRICT)
    if tl.load(row + EARLIEST) != 0:  # only the first event moves the pointer
        ev = ev & (tl.load(seen_ptr + vi) == 0)
        if ev:
            tl.store(seen_ptr + vi, ev.to(tl.int8))
    wr, cpd, cps, rd0, rd1 = none, none, none, none, none
    ok = tl.load(vok_ptr + vi) != 0
    r0 = q % R
    if m < 0:  # the ring keeps the last |m| + 1 tokens
        tl.store(rok_ptr + rb + r0, kok.to(tl.int8))
        wr = ring0 + r0
    if m > 0:
        if tl.load(pend_ptr + vi) == q:  # the pending key arrives
            ok = kok
            wr = vrow
    if strict != 0:  # read before this token's event (after a capture: an event of m > 0 moves no value)
        if qok & ok:
            if m > 0:
                rd1 = vrow
            else:
                rd0 = vrow
    if ev:
        if m == 0:
            ok = kok
            wr = vrow
        elif m < 0:
            src = q + m
            ok = (src >= s) & (tl.load(rok_ptr + rb + tl.maximum(src, 0) % R) != 0)
            if ok:
                cpd = vrow
                cps = ring0 + src % R
        else:
            ok = ok & (m <= 0)  # false here: the key is ahead
            tl.store(pend_ptr + vi, q + m)
    tl.store(vok_ptr + vi, ok.to(tl.int8))
    if (strict == 0) & qok & ok:
        rd1 = vrow
    return wr, cpd, cps, rd0, rd1


@triton.jit
def _probe(hkey_ptr, hb, key, mask):
    """Slot of ``key`` in the hash row at ``hb`` (or the empty slot where it would go), and its key."""
    hs = (key * 2654435761) & mask
    cur = tl.load(hkey_ptr + hb + hs)
    while (cur != -1) & (cur != key):
        hs = (hs + 1) & mask
        cur = tl.load(hkey_ptr + hb + hs)
    return hs, cur


@triton.jit
def _entry(hkey_ptr, hent_ptr, hcnt_ptr, hused_ptr, hb, eb, ui, key, mask):
    """Entry of ``key`` (inserted with count 0 if new) and whether it is new."""
    hs, cur = _probe(hkey_ptr, hb, key, mask)
    new = cur == -1
    e = tl.load(hent_ptr + hb + hs).to(tl.int64)
    if new:
        e = tl.load(hused_ptr + ui)
        tl.store(hkey_ptr + hb + hs, key)
        tl.store(hent_ptr + hb + hs, e.to(tl.int32))
        tl.store(hused_ptr + ui, e + 1)
        tl.store(hcnt_ptr + eb + e, 0.0)
    return e, new


@triton.jit
def _maps(hkey_ptr, hent_ptr, hcnt_ptr, hused_ptr, hb, eb, ui, mask, kind, tid, pid, kok, qok, w, row0,
          none, zero):
    """Same token / induction: a per-token map (entries from pool ``row0``) -> (wr, mul, rd1, c1, dw)."""
    wr, mul, rd1, c1, dw = none, zero + 1.0, none, zero, zero
    induction = kind == INDUCTION
    key = tl.where(induction, pid, tid)
    if (induction & (pid >= 0)) | ((kind == SAME_TOKEN) & kok):
        e, new = _entry(hkey_ptr, hent_ptr, hcnt_ptr, hused_ptr, hb, eb, ui, key, mask)
        wr = row0 + e
        if induction:  # the previous token's latest occurrence is now followed by this one
            mul = zero
            tl.store(hcnt_ptr + eb + e, kok.to(tl.float32))
        else:
            mul = tl.where(new, zero, zero + 1.0)  # a new entry starts from zero
            c = tl.load(hcnt_ptr + eb + e) + 1.0
            tl.store(hcnt_ptr + eb + e, c)
            if qok:
                rd1, c1, dw = wr, w / c, zero + w
    if induction & qok:
        hs, cur = _probe(hkey_ptr, hb, tid, mask)
        if cur == tid:
            e2 = tl.load(hent_ptr + hb + hs).to(tl.int64)
            if tl.load(hcnt_ptr + eb + e2) > 0.0:
                rd1, c1, dw = row0 + e2, zero + w, zero + w
    return wr, mul, rd1, c1, dw


@triton.jit
def _put(di_ptr, df_ptr, o, wr, cpd, cps, rd0, rd1, mul, add, c0, c1, dw):
    tl.store(di_ptr + o * ND, wr)
    tl.store(di_ptr + o * ND + 1, cpd)
    tl.store(di_ptr + o * ND + 2, cps)
    tl.store(di_ptr + o * ND + 3, rd0)
    tl.store(di_ptr + o * ND + 4, rd1)
    tl.store(df_ptr + o * ND, mul)
    tl.store(df_ptr + o * ND + 1, add)
    tl.store(df_ptr + o * ND + 2, c0)
    tl.store(df_ptr + o * ND + 3, c1)
    tl.store(df_ptr + o * ND + 4, dw)


@triton.jit
def _scalar_kernel(ids_ptr, prev_ptr, start_ptr, q0, n, pc_ptr, NI, pf_ptr, NF, place_ptr, tables_ptr, V,
                   cnt_ptr, vok_ptr, pend_ptr, seen_ptr, rok_ptr, hkey_ptr, hent_ptr, hcnt_ptr, hused_ptr, di_ptr, df_ptr,
                   J, n_acc, n_vec, n_ring, n_map, R, CAP, E, base_acc, base_vec, base_ring, base_map):
    b = tl.program_id(0).to(tl.int64)  # int64 index arithmetic throughout
    j = tl.program_id(1).to(tl.int64)
    row = pc_ptr + j * NI  # this term's packed columns (NI, NF: columns per term)
    kind = tl.load(row + KIND)
    sl = tl.load(place_ptr + j * 3 + SLOT)
    rs = tl.maximum(tl.load(place_ptr + j * 3 + RSLOT), 0)
    kt = tl.load(row + KEY_TAB)
    qt = tl.load(row + QUERY_TAB)
    rate = tl.load(pf_ptr + j * NF + RATE)
    w = tl.load(pf_ptr + j * NF + WEIGHT)
    s = tl.load(start_ptr + b)
    zero = w * 0.0          # typed scalars: every branch below assigns tensors of these types
    none = sl * 0 - 1
    for i in range(0, n):
        q = q0 + i
        wr, cpd, cps, rd0, rd1 = none, none, none, none, none
        mul, add, c0, c1, dw = zero + 1.0, zero, zero, zero, zero
        if q >= s:
            tid = tl.load(ids_ptr + b * n + i)
            pid = tl.load(prev_ptr + b * n + i)
            kok = (kt < 0) | _in(tables_ptr, V, kt, tid)
            qok = (qt < 0) | _in(tables_ptr, V, qt, tid)
            ev = _event(row, tables_ptr, V, tid, pid, q, s)
            if kind == SCAN:
                wr, mul, add, rd1, c1, dw = _scan(cnt_ptr, b * n_acc + sl, base_acc + sl, rate, ev, kok, qok, w)
            elif kind == POINTER:
                wr, cpd, cps, rd0, rd1 = _pointer(row, vok_ptr, pend_ptr, seen_ptr, rok_ptr, b * n_vec + sl,
                                                  (b * n_ring + rs) * R, q, s, ev, kok, qok, base_vec + sl,
                                                  base_ring + rs * R, R, none)
                mul, add = zero, zero + 1.0
                c0 = tl.where(rd0 >= 0, w, zero)
                c1 = tl.where(rd1 >= 0, w, zero)
                dw = c0 + c1
            else:
                wr, mul, rd1, c1, dw = _maps(hkey_ptr, hent_ptr, hcnt_ptr, hused_ptr, (b * n_map + sl) * CAP,
                                             (b * n_map + sl) * E, b * n_map + sl, CAP - 1, kind,
                                             tid, pid, kok, qok, w, base_map + sl * E, none, zero)
                add = zero + 1.0
        _put(di_ptr, df_ptr, (b * n + i) * J + j, wr, cpd, cps, rd0, rd1, mul, add, c0, c1, dw)


@triton.jit
def _vector_kernel(v_ptr, s_vb, s_vg, s_vt, q0, n, start_ptr, group_ptr, lo_ptr, hi_ptr, pool_ptr, P, D,
                   di_ptr, df_ptr, J, out_ptr, H, BLOCK_D: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1).to(tl.int64)
    d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    dm = d < D
    g = tl.load(group_ptr + h)
    lo = tl.load(lo_ptr + h)
    hi = tl.load(hi_ptr + h)
    s = tl.load(start_ptr + b)
    pb = pool_ptr + b * P * D
    for i in range(0, n):
        q = q0 + i
        x = tl.load(v_ptr + b * s_vb + g * s_vg + i * s_vt + d, mask=dm, other=0.0).to(tl.float32)
        if q == s:
            tl.store(pb + h * D + d, x, mask=dm)
        acc = tl.zeros([BLOCK_D], dtype=tl.float32)
        den = tl.sum(tl.zeros([BLOCK_D], dtype=tl.float32), axis=0)
        for j in range(lo, hi):
            o = ((b * n + i) * J + j) * ND
            rd0 = tl.load(di_ptr + o + 3)
            if rd0 >= 0:
                acc += tl.load(df_ptr + o + 2) * tl.load(pb + rd0 * D + d, mask=dm, other=0.0)
            wr = tl.load(di_ptr + o)
            if wr >= 0:
                old = tl.load(pb + wr * D + d, mask=dm, other=0.0)
                tl.store(pb + wr * D + d, tl.load(df_ptr + o) * old + tl.load(df_ptr + o + 1) * x, mask=dm)
            cpd = tl.load(di_ptr + o + 1)
            if cpd >= 0:
                src = tl.load(di_ptr + o + 2)
                tl.store(pb + cpd * D + d, tl.load(pb + src * D + d, mask=dm, other=0.0), mask=dm)
            rd1 = tl.load(di_ptr + o + 4)
            if rd1 >= 0:
                acc += tl.load(df_ptr + o + 3) * tl.load(pb + rd1 * D + d, mask=dm, other=0.0)
            den += tl.load(df_ptr + o + 4)
        first = tl.load(pb + h * D + d, mask=dm, other=0.0)
        res = tl.where(den > 0.0, acc / tl.where(den > 0.0, den, 1.0), first)
        res = tl.where(q >= s, res, 0.0)
        tl.store(out_ptr + ((b * H + h) * n + i) * D + d, res, mask=dm)


_DEVICE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def device_program(prog: LayerProgram, device: torch.device) -> dict[str, torch.Tensor]:
    """The program's arrays on ``device``, made once per program and device."""
    per = _DEVICE.setdefault(prog, {})
    key = str(device)
    if key not in per:
        hd, heads = prog.head, range(prog.n_heads)  # the vector kernel reads head h's terms lo[h]:hi[h]
        assert (hd[1:] >= hd[:-1]).all(), "LayerProgram.build keeps each head's terms together"
        lo, hi = hd.searchsorted(heads).astype("int64"), hd.searchsorted(heads, side="right").astype("int64")
        arrs = dict(pc=prog.terms.ints, pf=prog.terms.reals.astype("float32"), place=prog.place, group=prog.group,
                    tables=prog.tables, lo=lo, hi=hi)
        per[key] = {k: torch.as_tensor(v).to(device) for k, v in arrs.items()}
    return per[key]


class TritonLayerState:
    """``LayerState`` on the GPU (or the CPU under ``TRITON_INTERPRET=1``): same ``step``."""

    BATCH_FIRST = ("prev_id", "pool", "cnt", "vok", "pend", "seen", "rok", "hkey", "hent", "hcnt", "hused")

    def __init__(self, prog: LayerProgram, batch: int, dim: int, device: Any = "cuda"):
        self.prog, self.length, self.dim, self.device = prog, 0, dim, torch.device(device)
        n_acc, n_vec, n_ring, n_map = prog.counts
        B, dev = batch, self.device
        self.E, self.cap = 0, 1
        self.prev_id = torch.full((B,), -1, dtype=torch.long, device=dev)
        self.pool = torch.zeros(B, self._rows(0), dim, device=dev)
        self.cnt = torch.zeros(B, n_acc, device=dev)
        self.vok = torch.zeros(B, n_vec, dtype=torch.int8, device=dev)
        self.pend = torch.full((B, n_vec), -1, dtype=torch.long, device=dev)
        self.seen = torch.zeros(B, n_vec, dtype=torch.int8, device=dev)
        self.rok = torch.zeros(B, n_ring, prog.ring_len, dtype=torch.int8, device=dev)
        self.hkey = torch.full((B, n_map, 1), -1, dtype=torch.long, device=dev)
        self.hent = torch.zeros(B, n_map, 1, dtype=torch.int32, device=dev)
        self.hcnt = torch.zeros(B, n_map, 0, device=dev)
        self.hused = torch.zeros(B, n_map, dtype=torch.long, device=dev)

    def _bases(self) -> tuple[int, int, int, int]:
        n_acc, n_vec, n_ring, _ = self.prog.counts
        H = self.prog.n_heads
        return H, H + n_acc, H + n_acc + n_vec, H + n_acc + n_vec + n_ring * self.prog.ring_len

    def _rows(self, E: int) -> int:
        return self._bases()[3] + self.prog.counts[3] * E

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k) for k in self.BATCH_FIRST}

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def map_apply(self, fn: Any) -> None:
        for k, t in self.tensors().items():
            setattr(self, k, fn(t))

    def trim(self) -> None:
        """Maps are sized by tokens seen (no host sync to learn how many they hold): nothing to trim."""

    def _reserve(self, n: int) -> None:
        """Room for ``length + n`` entries per map (an upper bound on the distinct tokens)."""
        M = self.prog.counts[3]
        need = self.length + n
        if not M or need <= self.E:
            return
        E = max(need, 2 * self.E)
        B, base, D = self.pool.shape[0], self._bases()[3], self.dim
        maps = self.pool[:, base:].reshape(B, M, self.E, D)
        grown = torch.zeros(B, M, E, D, device=self.device)
        grown[:, :, : self.E] = maps
        self.pool = torch.cat([self.pool[:, :base], grown.reshape(B, M * E, D)], dim=1)
        hc = torch.zeros(B, M, E, device=self.device)
        hc[:, :, : self.E] = self.hcnt
        self.hcnt, self.E = hc, E
        cap = 1 << (2 * E - 1).bit_length()
        if cap > self.cap:  # rehash on the device: re-insert the old keys in token order
            old_k, old_e = self.hkey, self.hent
            self.hkey = torch.full((B, M, cap), -1, dtype=torch.long, device=self.device)
            self.hent = torch.zeros(B, M, cap, dtype=torch.int32, device=self.device)
            self.cap = cap
            if old_k.shape[2] > 1 or self.length:
                _rehash(old_k, old_e, self.hkey, self.hent)

    def step(self, ids: torch.Tensor, v: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        """``ids [B, n] int64, v [B, G, n, D], start [B]`` -> ``[B, H, n, D]`` in v's dtype."""
        B, n = ids.shape
        dev = self.device
        p = device_program(self.prog, dev)
        ids = ids.to(dev, torch.long).contiguous()
        ids = torch.where(ids < p["tables"].shape[1], ids, torch.zeros_like(ids))  # no id reads past a table
        start = start.to(dev, torch.long).contiguous()
        v = v.to(dev)
        self._reserve(n)
        q = self.length + torch.arange(n, device=dev)
        prev = torch.cat([self.prev_id[:, None], ids[:, :-1]], dim=1)
        prev = torch.where(q[None, :] > start[:, None], prev, torch.full_like(prev, -1)).contiguous()
        J, H, D = self.prog.terms.n_terms, self.prog.n_heads, self.dim
        di = torch.empty(B, n, J, 5, dtype=torch.long, device=dev)   # wr, cpd, cps, rd0, rd1
        df = torch.empty(B, n, J, 5, device=dev)                     # mul, add, c0, c1, dw
        n_acc, n_vec, n_ring, n_map = self.prog.counts
        if J:
            _scalar_kernel[(B, J)](
                ids, prev, start, self.length, n, p["pc"], p["pc"].shape[1], p["pf"], p["pf"].shape[1], p["place"], p["tables"], p["tables"].shape[1],
                self.cnt, self.vok, self.pend, self.seen, self.rok, self.hkey, self.hent, self.hcnt, self.hused, di, df,
                J, n_acc, n_vec, n_ring, n_map, self.prog.ring_len, self.hkey.shape[2], max(self.E, 1),
                *self._bases())
        out = torch.empty(B, H, n, D, device=dev)
        vv = v if v.stride(-1) == 1 else v.contiguous()
        bd = max(16, min(128, triton.next_power_of_2(D)))
        _vector_kernel[(B, H, triton.cdiv(D, bd))](
            vv, vv.stride(0), vv.stride(1), vv.stride(2), self.length, n, start, p["group"], p["lo"], p["hi"],
            self.pool, self.pool.shape[1], D, di, df, J, out, H, BLOCK_D=bd)
        self.prev_id = torch.where(q[-1] >= start, ids[:, -1], self.prev_id)
        self.length += n
        return out.to(v.dtype)


@triton.jit
def _rehash_kernel(ok_ptr, oe_ptr, nk_ptr, ne_ptr, OLD, CAP):
    bm = tl.program_id(0)
    mask = CAP - 1
    for i in range(0, OLD):
        key = tl.load(ok_ptr + bm * OLD + i)
        if key != -1:
            hs = (key * 2654435761) & mask
            cur = tl.load(nk_ptr + bm * CAP + hs)
            while cur != -1:
                hs = (hs + 1) & mask
                cur = tl.load(nk_ptr + bm * CAP + hs)
            tl.store(nk_ptr + bm * CAP + hs, key)
            tl.store(ne_ptr + bm * CAP + hs, tl.load(oe_ptr + bm * OLD + i))


def _rehash(old_k: torch.Tensor, old_e: torch.Tensor, new_k: torch.Tensor, new_e: torch.Tensor) -> None:
    B, M, OLD = old_k.shape
    if B * M:
        _rehash_kernel[(B * M,)](old_k.contiguous(), old_e.contiguous(), new_k, new_e, OLD, new_k.shape[2])


# the ``triton`` backend (``backends``)
def prefill(spec: Any, ids: torch.Tensor, v: torch.Tensor, start: torch.Tensor | None = None,
            n_q: int | None = None) -> torch.Tensor:
    """One head over a whole sequence (``triton_gpu``: chunked scans, no decoding state)."""
    from headcode.kernels.program_head.triton_gpu import program_head_triton

    return program_head_triton(spec, ids, v, start, n_q)


def zero_state(program: LayerProgram, batch: int, dim: int, device: Any = None) -> TritonLayerState:
    return TritonLayerState(program, batch, dim, "cuda" if device is None else device)


def step(program: LayerProgram, state: TritonLayerState, ids: torch.Tensor, v: torch.Tensor,
         start: torch.Tensor) -> tuple[torch.Tensor, TritonLayerState]:
    if state.prog is not program:
        raise ValueError("this state was made for another layer program")
    return state.step(ids, v, start), state
