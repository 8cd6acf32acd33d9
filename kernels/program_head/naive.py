"""Dense torch reference of the program-head op (the ``torch`` backend): every term as a
``[B, T, T]`` matrix, exactly as the primitive definitions in ``spec`` read. O(T^2 * D) time,
O(T^2) memory: for tests, for checking the kernels and for calibration (differentiable weights
over fixed term matrices), never for serving.

``ids [B, T] int64, v [B, T, D] -> out [B, n_q, D]`` (the last ``n_q`` query rows).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from headcode.kernels.program_head import spec as S
from headcode.kernels.program_head.spec import HeadSpec, KernelTerm


@dataclass(frozen=True)
class Row:
    """What every term of one call reads: ``ids [B, T]``, ``start [B]``, ``tables [n_tables, vocab]``
    bool, ``pos [T]`` and ``causal [B, T, T]`` (a key ``<=`` the query, both real tokens)."""

    ids: torch.Tensor
    start: torch.Tensor
    tables: torch.Tensor
    pos: torch.Tensor
    causal: torch.Tensor


def make_row(spec: HeadSpec, ids: torch.Tensor, start: torch.Tensor) -> Row:
    T, dev = ids.shape[1], ids.device
    pos = torch.arange(T, device=dev)
    valid = pos[None, :] >= start[:, None]  # [B, T]: a real token, not left padding
    causal = (pos[None, :] <= pos[:, None])[None] & valid[:, None, :] & valid[:, :, None]
    return Row(ids, start, torch.as_tensor(spec.tables, device=dev).bool(), pos, causal)


def events(p: S.Pointer | S.Scan, r: Row) -> torch.Tensor:
    """``[B, T]`` bool: where ``p`` has an event (``spec``'s definition)."""
    B, T = r.ids.shape
    pos = r.pos[None, :].expand(B, T)
    ev = (pos == r.start[:, None]) & bool(p.ev_start)
    if p.ev_tab == S.EVERY:
        ev = ev | (pos >= r.start[:, None])
    elif p.ev_tab >= 0:
        lag = int(p.ev_lag)
        hit = torch.zeros_like(ev)
        hit[:, lag:] = r.tables[p.ev_tab][r.ids[:, : T - lag]]
        ev = ev | (hit & (pos - lag >= r.start[:, None]))
    return ev


def latest(flags: torch.Tensor, strict: bool) -> torch.Tensor:
    """``[B, T]`` bool -> index of the latest True at or before (strict: before) each position, else -1."""
    pos = torch.arange(flags.shape[1], device=flags.device).expand_as(flags)
    last = torch.where(flags, pos, torch.full_like(pos, -1)).cummax(dim=1).values
    return torch.cat([torch.full_like(last[:, :1], -1), last[:, :-1]], dim=1) if strict else last


def earliest(flags: torch.Tensor, strict: bool) -> torch.Tensor:
    """``[B, T]`` bool -> index of the earliest True at or before (strict: before) each position, else -1."""
    T = flags.shape[1]
    pos = torch.arange(T, device=flags.device).expand_as(flags)
    first = torch.where(flags, pos, torch.full_like(pos, T)).min(dim=1, keepdim=True).values  # [B, 1]
    return torch.where(first <= (pos - 1 if strict else pos), first.expand_as(pos), torch.full_like(pos, -1))


def anchor(p: S.Pointer, ev: torch.Tensor) -> torch.Tensor:
    """``[B, T]``: the event a pointer's key is placed from (the latest, or the earliest), or -1."""
    return (earliest if p.earliest else latest)(ev, bool(p.strict))


def one_hot(idx: torch.Tensor, T: int) -> torch.Tensor:
    """``[B, T]`` key index (or -1) -> ``[B, T, T]`` one-hot rows (zero rows for -1)."""
    keys = torch.arange(T, device=idx.device)
    return (idx[:, :, None] == keys[None, None, :]).to(torch.float64)


def _pointer(p: S.Pointer, r: Row) -> torch.Tensor:
    a = anchor(p, events(p, r))
    j = a + int(p.shift)
    return one_hot(torch.where((a >= 0) & (j >= r.start[:, None]) & (j <= r.pos[None, :]), j, -1), r.ids.shape[1])


def _scan(p: S.Scan, r: Row) -> torch.Tensor:
    seg = latest(events(p, r), False)
    seg = torch.where(seg >= 0, seg, r.start[:, None])
    w = float(p.rate) ** (r.pos[:, None] - r.pos[None, :]).clamp(min=0).double()
    return torch.where(r.causal & (r.pos[None, None, :] >= seg[:, :, None]), w, torch.zeros((), dtype=torch.float64))


def _same_token(p: S.SameToken, r: Row) -> torch.Tensor:
    return (r.causal & (r.ids[:, :, None] == r.ids[:, None, :])).double()


def _induction(p: S.Induction, r: Row) -> torch.Tensor:
    B, T = r.ids.shape
    same = r.causal & (r.ids[:, :, None] == r.ids[:, None, :]) & (r.pos[None, :] < r.pos[:, None])[None]
    prev = torch.where(same, r.pos[None, None, :].expand(B, T, T), -1).max(dim=2).values
    return one_hot(torch.where(prev >= 0, prev + 1, -1), T)


# each primitive's scores before key restriction and query gate (``spec.by_type``)
MATRIX: dict[type, Callable[..., torch.Tensor]] = {S.Pointer: _pointer, S.Scan: _scan, S.SameToken: _same_token,
                                                   S.Induction: _induction}


def kernel_term_matrix(t: KernelTerm, r: Row) -> torch.Tensor:
    """One term as row-normalised scores ``[B, T, T]`` float64 (key restriction and query gate applied)."""
    m = S.by_type(MATRIX, t.prim)(t.prim, r) * r.causal
    if t.key_tab >= 0:
        m = m * r.tables[t.key_tab][r.ids][:, None, :]
    if t.query_tab >= 0:
        m = m * r.tables[t.query_tab][r.ids][:, :, None]
    tot = m.sum(-1, keepdim=True)
    return torch.where(tot > 0, m / tot.clamp(min=1e-300), torch.zeros_like(m))


def term_matrix(spec: HeadSpec, i: int, ids: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """Term ``i`` of ``spec`` on ``ids [B, T]`` -> ``[B, T, T]`` float64 (``kernel_term_matrix``)."""
    return kernel_term_matrix(spec.terms[i], make_row(spec, ids, start.to(ids.device).long()))


def program_scores_naive(spec: HeadSpec, ids: torch.Tensor, start: torch.Tensor | None = None) -> torch.Tensor:
    """``ids [B, T] int64 -> scores [B, T, T]`` float64: the weighted sum of the term matrices,
    before the row normalisation (what ``attention_from_scores`` of the program gives rows to)."""
    B, T = ids.shape
    start_t = torch.zeros(B, dtype=torch.long, device=ids.device) if start is None else start.to(ids.device).long()
    r = make_row(spec, ids, start_t)
    scores = torch.zeros(B, T, T, dtype=torch.float64, device=ids.device)
    for t in spec.terms:
        scores += float(t.weight) * kernel_term_matrix(t, r)
    return scores


def program_head_naive(spec: HeadSpec, ids: torch.Tensor, v: torch.Tensor, start: torch.Tensor | None = None,
                       n_q: int | None = None) -> torch.Tensor:
    """``ids [B, T] int64, v [B, T, D], start [B] int64 | None -> out [B, n_q, D]`` (v's dtype).

    ``attention_from_scores(sum_i w_i S_i) @ V`` with the empty-row rule, rows before ``start``
    zero. Float64 throughout.
    """
    B, T = ids.shape
    start_t = torch.zeros(B, dtype=torch.long, device=ids.device) if start is None else start.to(ids.device).long()
    rng = (int(ids.min()), int(ids.max())) if ids.numel() else (0, 0)
    nq = S.check_inputs(spec, tuple(ids.shape), tuple(v.shape), rng, start_t.cpu().numpy(), n_q)
    scores = program_scores_naive(spec, ids, start_t)
    tot = scores.sum(-1, keepdim=True)
    attn = torch.where(tot > 0, scores / tot.clamp(min=1e-300), torch.zeros_like(scores))
    empty = tot[..., 0] <= 0
    attn[empty] = 0.0
    b_idx, q_idx = torch.nonzero(empty, as_tuple=True)
    attn[b_idx, q_idx, start_t[b_idx]] = 1.0
    pos = torch.arange(T, device=ids.device)
    attn = attn * (pos[None, :] >= start_t[:, None])[:, :, None]  # padding rows -> zero output
    out = attn @ v.double()
    return out[:, T - nq:].to(v.dtype)


# the ``torch`` backend (``backends``): decoding keeps the history and recomputes the new rows
@dataclass(frozen=True)
class History:
    """The reference's decoding state: every token so far, ``ids [B, T]`` and ``v [B, G, T, D]``."""

    ids: torch.Tensor
    v: torch.Tensor


def prefill(spec: HeadSpec, ids: torch.Tensor, v: torch.Tensor, start: torch.Tensor | None = None,
            n_q: int | None = None) -> torch.Tensor:
    return program_head_naive(spec, ids, v, start, n_q)


def zero_state(program: Any, batch: int, dim: int, device: Any = None) -> History:
    """No tokens yet (``program``: a ``stream.LayerProgram``; ``G`` grows on the first step)."""
    return History(torch.zeros(batch, 0, dtype=torch.long, device=device),
                   torch.zeros(batch, 0, 0, dim, dtype=torch.float64, device=device))


def step(program: Any, state: History, ids: torch.Tensor, v: torch.Tensor,
         start: torch.Tensor) -> tuple[torch.Tensor, History]:
    """``ids [B, n], v [B, G, n, D], start [B]`` -> (``[B, H, n, D]``, the longer history): each head
    of the layer recomputed densely over the whole history, its last ``n`` rows kept."""
    old = state.v if state.v.shape[1] else state.v.new_zeros(v.shape[0], v.shape[1], 0, v.shape[3])
    hist = History(torch.cat([state.ids.to(ids.device), ids], 1), torch.cat([old.to(v.device), v.double()], 2))
    n, T, outs = ids.shape[1], hist.ids.shape[1], []
    st = start.to(ids.device).long()
    for h in range(program.n_heads):  # a row still all padding (start >= T) is zero
        spec = HeadSpec(tuple(t for t, owner in zip(program.terms.terms, program.head) if owner == h), program.tables)
        out = program_head_naive(spec, hist.ids, hist.v[:, int(program.group[h])], st.clamp(max=T - 1), n)
        outs.append(torch.where((st < T)[:, None, None], out, torch.zeros((), dtype=out.dtype)))
    out = torch.stack(outs, 1) if outs else v.new_zeros(v.shape[0], 0, n, v.shape[3])
    return out.to(v.dtype), hist
