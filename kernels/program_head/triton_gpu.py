"""Triton GPU kernels of the program-head op, and the launcher that combines the terms.

``ids [B, T] int64, v [B, T, D], start [B] int64 -> out [B, n_q, D]``.

Two kernels cover the four primitives (``spec``):
- ``_gather_kernel``: one key per query row (POINTER, INDUCTION): ``num[b, q] = V[b, idx[b, q]]``.
  O(T * D) reads, fully parallel.
- ``_scan_kernel``: a segmented, decayed running sum over a row order (SCAN in position order,
  its events starting segments; SAME_TOKEN via the token-sorted order): ``h[t] = (begin[t] ? 0 :
  rate * h[t-1]) + mask[t] * V[rows[t]]`` and the same for the count, then ``num = h / count``.
  Chunked like fla's linear-attention kernels: within a chunk of BLOCK_T rows the recurrence is a
  small lower-triangular ``[BLOCK_T, BLOCK_T]`` matrix times the ``[BLOCK_T, BLOCK_D]`` tile (a
  tensor-core dot, ieee precision), and one ``[BLOCK_D]`` state carries across chunks.
  O(T * BLOCK_T * D) flops, O(T * D) memory, no T x T matrix. Grid (B, D / BLOCK_D).
Index work (events, cummax, one stable sort for token occurrences) is done in torch by ``prep``.
On a machine without a GPU set ``TRITON_INTERPRET=1`` before importing this module.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from headcode.kernels.program_head import spec as S
from headcode.kernels.program_head.prep import Prep
from headcode.kernels.program_head.spec import HeadSpec


@triton.jit
def _gather_kernel(v_ptr, idx_ptr, out_ptr, T, D, s_vb, s_vt, s_ob, s_ot,
                   BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    b = tl.program_id(0)
    t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    tm = t < T
    dm = d < D
    idx = tl.load(idx_ptr + b * T + t, mask=tm, other=-1)
    ok = idx >= 0
    x = tl.load(v_ptr + b * s_vb + idx[:, None] * s_vt + d[None, :], mask=ok[:, None] & dm[None, :], other=0.0)
    tl.store(out_ptr + b * s_ob + t[:, None] * s_ot + d[None, :], x.to(tl.float32), mask=tm[:, None] & dm[None, :])


@triton.jit
def _scan_kernel(v_ptr, rows_ptr, mask_ptr, begin_ptr, num_ptr, has_ptr, T, D, rate_log2,
                 s_vb, s_vt, s_nb, s_nt, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    b = tl.program_id(0)
    pd = tl.program_id(1)
    d = pd * BLOCK_D + tl.arange(0, BLOCK_D)
    dm = d < D
    i = tl.arange(0, BLOCK_T)
    lower = i[None, :] <= i[:, None]
    decay = tl.exp2(tl.where(lower, (i[:, None] - i[None, :]).to(tl.float32), 0.0) * rate_log2)
    carry_decay = tl.exp2((i + 1).to(tl.float32) * rate_log2)
    h = tl.zeros([BLOCK_D], dtype=tl.float32)
    hc = tl.sum(tl.zeros([BLOCK_T], dtype=tl.float32), axis=0)
    for c0 in range(0, T, BLOCK_T):
        t = c0 + i
        tm = t < T
        r = tl.load(rows_ptr + b * T + t, mask=tm, other=0)
        m = tl.load(mask_ptr + b * T + t, mask=tm, other=0).to(tl.float32)
        beg = tl.load(begin_ptr + b * T + t, mask=tm, other=0).to(tl.int32)
        seg = tl.cumsum(beg, axis=0)  # segment number within the chunk; 0 = continues the carry
        w = tl.where(lower & (seg[:, None] == seg[None, :]), decay, 0.0) * m[None, :]
        x = tl.load(v_ptr + b * s_vb + r[:, None] * s_vt + d[None, :], mask=tm[:, None] & dm[None, :], other=0.0)
        cw = tl.where(seg == 0, carry_decay, 0.0)
        acc = tl.dot(w, x.to(tl.float32), input_precision="ieee") + cw[:, None] * h[None, :]
        cnt = tl.sum(w, axis=1) + cw * hc
        num = tl.where(cnt[:, None] > 0, acc / tl.where(cnt > 0, cnt, 1.0)[:, None], 0.0)
        tl.store(num_ptr + b * s_nb + r[:, None] * s_nt + d[None, :], num, mask=tm[:, None] & dm[None, :])
        if pd == 0:
            tl.store(has_ptr + b * T + r, (cnt > 0).to(tl.int8), mask=tm)
        is_last = i == BLOCK_T - 1
        h = tl.sum(tl.where(is_last[:, None], acc, 0.0), axis=0)
        hc = tl.sum(tl.where(is_last, cnt, 0.0), axis=0)


def _blocks(D: int) -> tuple[int, int]:
    return 32, max(16, min(64, triton.next_power_of_2(D)))


def gather_rows(v: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``v [B, T, D], idx [B, n] int64 (-1: none) -> [B, n, D] float32`` (zero rows for -1)."""
    B, _, D = v.shape
    T = idx.shape[1]
    out = torch.empty(B, T, D, dtype=torch.float32, device=v.device)
    bt, bd = _blocks(D)
    _gather_kernel[(B, triton.cdiv(T, bt), triton.cdiv(D, bd))](
        v, idx.contiguous(), out, T, D, v.stride(0), v.stride(1), out.stride(0), out.stride(1),
        BLOCK_T=bt, BLOCK_D=bd)
    return out


def segmented_scan(v: torch.Tensor, rows: torch.Tensor, mask: torch.Tensor, begin: torch.Tensor,
                   rate: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``v [B, T, D]``, ``rows/mask/begin [B, T]`` -> (``num [B, T, D] float32``, ``has [B, T] bool``),
    both indexed by original position (``num`` written at ``rows``)."""
    B, T, D = v.shape
    num = torch.empty(B, T, D, dtype=torch.float32, device=v.device)
    has = torch.empty(B, T, dtype=torch.int8, device=v.device)
    bt, bd = _blocks(D)
    _scan_kernel[(B, triton.cdiv(D, bd))](
        v, rows.contiguous(), mask.to(torch.int8).contiguous(), begin.to(torch.int8).contiguous(), num, has,
        T, D, math.log2(rate), v.stride(0), v.stride(1), num.stride(0), num.stride(1), BLOCK_T=bt, BLOCK_D=bd)
    return num, has.bool()


def program_head_triton(spec: HeadSpec, ids: torch.Tensor, v: torch.Tensor, start: torch.Tensor | None = None,
                        n_q: int | None = None) -> torch.Tensor:
    """``ids [B, T] int64, v [B, T, D], start [B] int64 | None -> out [B, n_q, D]`` (v's dtype).

    Tensors on the GPU (or on the CPU under ``TRITON_INTERPRET=1``). Each term is one kernel
    launch; the weighted combination and the empty-row rule are a few torch ops.
    """
    B, T = ids.shape
    ids = ids.long().contiguous()
    v_c = v.contiguous()
    st = torch.zeros(B, dtype=torch.long, device=ids.device) if start is None else start.to(ids.device).long()
    if ids.device.type == "cpu":  # the full checks; on a GPU only shapes (no host sync): ids past
        rng = (int(ids.min()), int(ids.max())) if ids.numel() and spec.tables.shape[0] else (0, 0)
        nq = S.check_inputs(spec, tuple(ids.shape), tuple(v.shape), rng,  # the tables read as False
                            None if start is None else st.cpu().numpy(), n_q)
    else:
        nq = S.check_inputs(spec, tuple(ids.shape), tuple(v.shape), (0, 0), None, n_q)
    prep = Prep(spec, ids, st)
    D = v.shape[2]
    w0 = T - nq  # only the query window's rows are combined (gathers compute only those rows)
    row = torch.zeros(B, nq, D, dtype=torch.float32, device=v.device)
    den = torch.zeros(B, nq, dtype=torch.float32, device=v.device)
    for t in spec.terms:
        if isinstance(t.prim, (S.Scan, S.SameToken)):
            si = prep.scan_input(t)
            num, has = segmented_scan(v_c, si.rows, si.mask, si.begin, si.rate)
            num, has = num[:, w0:], has[:, w0:]
        else:
            idx = prep.gather_index(t)[:, w0:]
            num, has = gather_rows(v_c, idx), idx >= 0
        gate = (has & prep.table(int(t.query_tab))[:, w0:] & prep.valid[:, w0:]).float() * float(t.weight)
        row += gate[..., None] * num
        den += gate
    first = v_c.gather(1, st[:, None, None].expand(B, 1, D)).float()
    out = torch.where(den[..., None] > 0, row / den.clamp(min=1e-30)[..., None], first)
    out = torch.where(prep.valid[:, w0:, None], out, torch.zeros((), dtype=out.dtype, device=out.device))
    return out.to(v.dtype)
