"""Triton kernels of the selector states (the GPU counterpart of ``stream_cpu``; same semantics,
checked against it and the dense reference under ``TRITON_INTERPRET=1`` where no GPU is lent).

A step over ``n`` new tokens is two launches, no host synchronisation:
- ``_scalar_kernel``, grid ``(B, J)``: each program owns one term of one row and sweeps the new
  tokens, updating that term's scalar state (counts, flags, ring flags, per-token map slots) and
  writing, per token, what the vector side must do: one pool row to update as
  ``row = mul * row + add * v`` and up to two pool rows to read with their coefficients (before
  and after the update), plus the weight the term adds to its head's denominator;
- ``_vector_kernel``, grid ``(B, H, D / BLOCK_D)``: each program owns one head's ``BLOCK_D``
  columns of one row and sweeps the new tokens, applying its terms' updates and reads and
  writing the output rows. Decoding computes only the new rows.

Vector state lives in one pool per row, ``[B, P, D]`` float32: the heads' first-token values, then
the running sums, the last-seen vectors, the ring buffers and the per-token map entries. Without
a host sync the maps cannot know how many distinct tokens they hold, so they are sized by the
tokens seen (amortised doubling). Tables go to the device once per program.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
import triton
import triton.language as tl

from headcode.kernels.program_head import spec as S
from headcode.kernels.program_head.stream import LayerProgram
from headcode.kernels.program_head.stream_cpu import ACC, MAP, RING, VEC


@triton.jit
def _scalar_kernel(ids_ptr, q0, n, start_ptr, prev_ptr, first_ptr, kinds_ptr, ks_ptr, rates_ptr, strict_ptr,
                   kt_ptr, qt_ptr, w_ptr, head_ptr, slot_ptr, tables_ptr, V, bnd_ptr, nwd_ptr,
                   cnt_ptr, vok_ptr, rok_ptr, hkey_ptr, hent_ptr, hcnt_ptr, hused_ptr,
                   wr_ptr, mul_ptr, add_ptr, rd0_ptr, c0_ptr, rd1_ptr, c1_ptr, dw_ptr,
                   J, n_acc, n_vec, n_ring, n_map, R, CAP, E, base_acc, base_vec, base_ring, base_map):
    b = tl.program_id(0)
    j = tl.program_id(1)
    kind = tl.load(kinds_ptr + j)
    h = tl.load(head_ptr + j)
    sl = tl.load(slot_ptr + j)
    kt = tl.load(kt_ptr + j)
    qt = tl.load(qt_ptr + j)
    w = tl.load(w_ptr + j)
    rate = tl.load(rates_ptr + j)
    k = tl.load(ks_ptr + j)
    strict = tl.load(strict_ptr + j)
    bnd = tl.load(bnd_ptr + h)
    nwd = tl.load(nwd_ptr + h)
    s = tl.load(start_ptr + b)
    fid = tl.load(first_ptr + b)
    zero = w * 0.0          # typed scalars: every branch below assigns tensors of these types
    none = sl * 0 - 1
    for i in range(0, n):
        q = q0 + i
        o = (b * n + i) * J + j
        wr = none
        mul = zero + 1.0
        add = zero
        rd0 = none
        c0 = zero
        rd1 = none
        c1 = zero
        dw = zero
        if q >= s:
            tid = tl.load(ids_ptr + b * n + i)
            pid = tl.load(prev_ptr + b * n + i)
            kok = (kt < 0) | (tl.load(tables_ptr + tl.maximum(kt, 0) * V + tid) != 0)
            qok = (qt < 0) | (tl.load(tables_ptr + tl.maximum(qt, 0) * V + tid) != 0)
            if (kind == 2) | (kind == 9) | (kind == 3):  # UNIFORM, DECAY, SENTENCE
                r = zero + 1.0
                if kind == 9:
                    r = zero + rate
                if kind == 3:
                    begin = q == s
                    if (bnd >= 0) & (pid >= 0):
                        begin = begin | (tl.load(tables_ptr + bnd * V + tl.maximum(pid, 0)) != 0)
                    if begin:
                        r = zero
                cnt = r * tl.load(cnt_ptr + b * n_acc + sl) + kok.to(tl.float32)
                tl.store(cnt_ptr + b * n_acc + sl, cnt)
                wr = base_acc + sl
                mul = r
                add = kok.to(tl.float32)
                if qok & (cnt > 0.0):
                    rd1 = wr
                    c1 = w / cnt
                    dw = zero + w
            elif kind == 0:  # OFFSET
                r0 = q % R
                tl.store(rok_ptr + (b * n_ring + sl) * R + r0, kok.to(tl.int8))
                wr = base_ring + sl * R + r0
                mul = zero
                add = zero + 1.0
                src = q - k
                if qok & (src >= s):
                    r1 = src % R
                    if tl.load(rok_ptr + (b * n_ring + sl) * R + r1) != 0:
                        rd1 = base_ring + sl * R + r1
                        c1 = zero + w
                        dw = zero + w
            elif kind == 1:  # FIRST
                fok = (kt < 0) | (tl.load(tables_ptr + tl.maximum(kt, 0) * V + fid) != 0)
                if qok & fok:
                    rd1 = h
                    c1 = zero + w
                    dw = zero + w
            elif kind == 5:  # MOST_RECENT
                had = tl.load(vok_ptr + b * n_vec + sl) != 0
                if (strict != 0) & qok & had:
                    rd0 = base_vec + sl
                    c0 = zero + w
                    dw = zero + w
                if kok:
                    tl.store(vok_ptr + b * n_vec + sl, tl.full([], 1, tl.int8))
                    wr = base_vec + sl
                    mul = zero
                    add = zero + 1.0
                if (strict == 0) & qok & (had | kok):
                    rd1 = base_vec + sl
                    c1 = zero + w
                    dw = zero + w
            elif (kind == 6) | (kind == 7) | (kind == 10):  # SENTENCE_START, WORD_START, SEGMENT_START
                begin = q == s
                if kind == 6:
                    if (bnd >= 0) & (pid >= 0):
                        begin = begin | (tl.load(tables_ptr + bnd * V + tl.maximum(pid, 0)) != 0)
                elif kind == 10:  # k: the aux table row
                    if (k >= 0) & (pid >= 0):
                        begin = begin | (tl.load(tables_ptr + tl.maximum(k, 0) * V + tl.maximum(pid, 0)) != 0)
                else:
                    if nwd >= 0:
                        begin = begin | (tl.load(tables_ptr + nwd * V + tid) != 0)
                if begin:
                    tl.store(vok_ptr + b * n_vec + sl, kok.to(tl.int8))
                    wr = base_vec + sl
                    mul = zero
                    add = zero + 1.0
                if qok & (tl.load(vok_ptr + b * n_vec + sl) != 0):
                    rd1 = base_vec + sl
                    c1 = zero + w
                    dw = zero + w
            elif (kind == 4) | (kind == 8):  # SAME_TOKEN, INDUCTION: a per-token map
                mask = CAP - 1
                hb = (b * n_map + sl) * CAP
                eb = (b * n_map + sl) * E
                key = tid
                if kind == 8:
                    key = pid
                if ((kind == 4) & kok) | ((kind == 8) & (pid >= 0)):
                    hs = (key * 2654435761) & mask
                    cur = tl.load(hkey_ptr + hb + hs)
                    while (cur != -1) & (cur != key):
                        hs = (hs + 1) & mask
                        cur = tl.load(hkey_ptr + hb + hs)
                    if cur == -1:
                        e = tl.load(hused_ptr + b * n_map + sl)
                        tl.store(hkey_ptr + hb + hs, key)
                        tl.store(hent_ptr + hb + hs, e.to(tl.int32))
                        tl.store(hused_ptr + b * n_map + sl, e + 1)
                        tl.store(hcnt_ptr + eb + e, 0.0)
                        mul = zero  # a new entry starts from zero
                    else:
                        e = tl.load(hent_ptr + hb + hs).to(tl.int64)
                    wr = base_map + sl * E + e
                    add = zero + 1.0
                    if kind == 4:
                        c = tl.load(hcnt_ptr + eb + e) + 1.0
                        tl.store(hcnt_ptr + eb + e, c)
                        if qok:
                            rd1 = wr
                            c1 = w / c
                            dw = zero + w
                    else:
                        mul = zero
                        tl.store(hcnt_ptr + eb + e, kok.to(tl.float32))
                if (kind == 8) & qok:
                    hs = (tid * 2654435761) & mask
                    cur = tl.load(hkey_ptr + hb + hs)
                    while (cur != -1) & (cur != tid):
                        hs = (hs + 1) & mask
                        cur = tl.load(hkey_ptr + hb + hs)
                    if cur == tid:
                        e2 = tl.load(hent_ptr + hb + hs).to(tl.int64)
                        if tl.load(hcnt_ptr + eb + e2) > 0.0:
                            rd1 = base_map + sl * E + e2
                            c1 = zero + w
                            dw = zero + w
        tl.store(wr_ptr + o, wr)
        tl.store(mul_ptr + o, mul)
        tl.store(add_ptr + o, add)
        tl.store(rd0_ptr + o, rd0)
        tl.store(c0_ptr + o, c0)
        tl.store(rd1_ptr + o, rd1)
        tl.store(c1_ptr + o, c1)
        tl.store(dw_ptr + o, dw)


@triton.jit
def _vector_kernel(v_ptr, s_vb, s_vg, s_vt, q0, n, start_ptr, group_ptr, lo_ptr, hi_ptr, pool_ptr, P, D,
                   wr_ptr, mul_ptr, add_ptr, rd0_ptr, c0_ptr, rd1_ptr, c1_ptr, dw_ptr, J, out_ptr, H,
                   BLOCK_D: tl.constexpr):
    b = tl.program_id(0)
    h = tl.program_id(1)
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
            o = (b * n + i) * J + j
            rd0 = tl.load(rd0_ptr + o)
            if rd0 >= 0:
                acc += tl.load(c0_ptr + o) * tl.load(pb + rd0 * D + d, mask=dm, other=0.0)
            wr = tl.load(wr_ptr + o)
            if wr >= 0:
                old = tl.load(pb + wr * D + d, mask=dm, other=0.0)
                tl.store(pb + wr * D + d, tl.load(mul_ptr + o) * old + tl.load(add_ptr + o) * x, mask=dm)
            rd1 = tl.load(rd1_ptr + o)
            if rd1 >= 0:
                acc += tl.load(c1_ptr + o) * tl.load(pb + rd1 * D + d, mask=dm, other=0.0)
            den += tl.load(dw_ptr + o)
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
        order = prog.head.argsort(kind="stable")  # terms grouped by head for the vector kernel
        assert (order == range(len(order))).all(), "LayerProgram.build keeps each head's terms together"
        lo = [int((prog.head < h).sum()) for h in range(prog.n_heads)]
        hi = [int((prog.head <= h).sum()) for h in range(prog.n_heads)]
        arrs = dict(kinds=prog.kinds, ks=prog.ks, rates=prog.rates.astype("float32"), strict=prog.strict,
                    key_tab=prog.key_tab, query_tab=prog.query_tab, weights=prog.weights.astype("float32"),
                    head=prog.head, slot=prog.slot, group=prog.group, tables=prog.tables, bnd=prog.bnd,
                    nwd=prog.nwd, lo=lo, hi=hi)
        per[key] = {k: torch.as_tensor(v).to(device) for k, v in arrs.items()}
    return per[key]


class TritonLayerState:
    """``LayerState`` on the GPU (or the CPU under ``TRITON_INTERPRET=1``): same ``step``."""

    BATCH_FIRST = ("prev_id", "first_id", "pool", "cnt", "vok", "rok", "hkey", "hent", "hcnt", "hused")

    def __init__(self, prog: LayerProgram, batch: int, dim: int, device: Any = "cuda"):
        self.prog, self.length, self.dim, self.device = prog, 0, dim, torch.device(device)
        n_acc, n_vec, n_ring, n_map = prog.counts
        B, dev = batch, self.device
        self.E, self.cap = 0, 1
        self.prev_id = torch.full((B,), -1, dtype=torch.long, device=dev)
        self.first_id = torch.zeros(B, dtype=torch.long, device=dev)
        self.pool = torch.zeros(B, self._rows(0), dim, device=dev)
        self.cnt = torch.zeros(B, n_acc, device=dev)
        self.vok = torch.zeros(B, n_vec, dtype=torch.int8, device=dev)
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
        return self._bases()[3] + self.prog.counts[MAP] * E

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
        M = self.prog.counts[MAP]
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
        at_start = (q[None, :] == start[:, None])
        self.first_id = torch.where(at_start.any(1), (ids * at_start).sum(1), self.first_id)
        J, H, D = int(self.prog.kinds.shape[0]), self.prog.n_heads, self.dim
        desc_i = [torch.empty(B, n, J, dtype=torch.long, device=dev) for _ in range(3)]   # wr, rd0, rd1
        desc_f = [torch.empty(B, n, J, device=dev) for _ in range(5)]                     # mul, add, c0, c1, dw
        n_acc, n_vec, n_ring, n_map = self.prog.counts
        b_acc, b_vec, b_ring, b_map = self._bases()
        if J:
            _scalar_kernel[(B, J)](
                ids, self.length, n, start, prev, self.first_id, p["kinds"], p["ks"], p["rates"], p["strict"],
                p["key_tab"], p["query_tab"], p["weights"], p["head"], p["slot"], p["tables"], p["tables"].shape[1],
                p["bnd"], p["nwd"], self.cnt, self.vok, self.rok, self.hkey, self.hent, self.hcnt, self.hused,
                desc_i[0], desc_f[0], desc_f[1], desc_i[1], desc_f[2], desc_i[2], desc_f[3], desc_f[4],
                J, n_acc, n_vec, n_ring, n_map, self.prog.ring_len, self.hkey.shape[2], max(self.E, 1),
                b_acc, b_vec, b_ring, b_map)
        out = torch.empty(B, H, n, D, device=dev)
        vv = v if v.stride(-1) == 1 else v.contiguous()
        bd = max(16, min(128, triton.next_power_of_2(D)))
        _vector_kernel[(B, H, triton.cdiv(D, bd))](
            vv, vv.stride(0), vv.stride(1), vv.stride(2), self.length, n, start, p["group"], p["lo"], p["hi"],
            self.pool, self.pool.shape[1], D, desc_i[0], desc_f[0], desc_f[1], desc_i[1], desc_f[2], desc_i[2],
            desc_f[3], desc_f[4], J, out, H, BLOCK_D=bd)
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


assert (S.OFFSET, S.FIRST, S.UNIFORM, S.SENTENCE, S.SAME_TOKEN, S.MOST_RECENT, S.SENTENCE_START,
        S.WORD_START, S.INDUCTION, S.DECAY, S.SEGMENT_START) == tuple(range(11)), "the kernels above spell the kind codes out"
assert (ACC, VEC, RING) == (0, 1, 2)
