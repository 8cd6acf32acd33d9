"""Dense torch reference of the program-head op: every term as a ``[B, T, T]`` matrix, exactly as
the primitive definitions in ``spec`` read. O(T^2 * D) time, O(T^2) memory: for tests and for
checking the kernels, never for serving.

``ids [B, T] int64, v [B, T, D] -> out [B, n_q, D]`` (the last ``n_q`` query rows).
"""

from __future__ import annotations

import torch

from headcode.kernels.program_head import spec as S
from headcode.kernels.program_head.spec import HeadSpec


def events(spec: HeadSpec, i: int, ids: torch.Tensor, start: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` bool: where term ``i`` has an event (``spec``'s definition)."""
    B, T = ids.shape
    pos = torch.arange(T, device=ids.device)[None, :].expand(B, T)
    ev = (pos == start[:, None]) & bool(spec.ev_start[i])
    tab, lag = int(spec.ev_tab[i]), int(spec.ev_lag[i])
    if tab == S.EVERY:
        ev = ev | (pos >= start[:, None])
    elif tab >= 0:
        hit = torch.zeros_like(ev)
        hit[:, lag:] = tables[tab][ids[:, : T - lag]]
        ev = ev | (hit & (pos - lag >= start[:, None]))
    return ev


def latest(flags: torch.Tensor, strict: bool) -> torch.Tensor:
    """``[B, T]`` bool -> index of the latest True at or before (strict: before) each position, else -1."""
    pos = torch.arange(flags.shape[1], device=flags.device).expand_as(flags)
    last = torch.where(flags, pos, torch.full_like(pos, -1)).cummax(dim=1).values
    return torch.cat([torch.full_like(last[:, :1], -1), last[:, :-1]], dim=1) if strict else last


def _one_hot(idx: torch.Tensor, T: int) -> torch.Tensor:
    """``[B, T]`` key index (or -1) -> ``[B, T, T]`` one-hot rows (zero rows for -1)."""
    keys = torch.arange(T, device=idx.device)
    return (idx[:, :, None] == keys[None, None, :]).to(torch.float64)


def term_matrix(spec: HeadSpec, i: int, ids: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """Term ``i`` as row-normalised scores ``[B, T, T]`` float64 (key restriction and query gate applied)."""
    B, T = ids.shape
    dev = ids.device
    tables = torch.as_tensor(spec.tables, device=dev).bool()
    pos = torch.arange(T, device=dev)
    valid = pos[None, :] >= start[:, None]  # [B, T]: a real token, not left padding
    causal = (pos[None, :] <= pos[:, None])[None] & valid[:, None, :] & valid[:, :, None]
    kind = int(spec.kinds[i])
    if kind == S.POINTER:
        p = latest(events(spec, i, ids, start, tables), bool(spec.strict[i]))
        j = p + int(spec.shift[i])
        m = _one_hot(torch.where((p >= 0) & (j >= start[:, None]) & (j <= pos[None, :]), j, -1), T)
    elif kind == S.SCAN:
        seg = latest(events(spec, i, ids, start, tables), False)
        seg = torch.where(seg >= 0, seg, start[:, None])
        d = (pos[:, None] - pos[None, :]).clamp(min=0).double()
        w = float(spec.rates[i]) ** d
        m = torch.where(causal & (pos[None, None, :] >= seg[:, :, None]), w, torch.zeros((), dtype=torch.float64))
    elif kind == S.SAME_TOKEN:
        m = (causal & (ids[:, :, None] == ids[:, None, :])).double()
    elif kind == S.INDUCTION:
        same = causal & (ids[:, :, None] == ids[:, None, :]) & (pos[None, :] < pos[:, None])[None]
        prev = torch.where(same, pos[None, None, :].expand(B, T, T), -1).max(dim=2).values
        m = _one_hot(torch.where(prev >= 0, prev + 1, -1), T)
    else:
        raise ValueError(f"unknown kind code {kind}")
    m = m * causal
    if spec.key_tab[i] >= 0:
        m = m * tables[spec.key_tab[i]][ids][:, None, :]
    if spec.query_tab[i] >= 0:
        m = m * tables[spec.query_tab[i]][ids][:, :, None]
    tot = m.sum(-1, keepdim=True)
    return torch.where(tot > 0, m / tot.clamp(min=1e-300), torch.zeros_like(m))


def program_scores_naive(spec: HeadSpec, ids: torch.Tensor, start: torch.Tensor | None = None) -> torch.Tensor:
    """``ids [B, T] int64 -> scores [B, T, T]`` float64: the weighted sum of the term matrices,
    before the row normalisation (what ``attention_from_scores`` of the program gives rows to)."""
    B, T = ids.shape
    start_t = torch.zeros(B, dtype=torch.long, device=ids.device) if start is None else start.to(ids.device).long()
    scores = torch.zeros(B, T, T, dtype=torch.float64, device=ids.device)
    for i in range(spec.n_terms):
        scores += float(spec.weights[i]) * term_matrix(spec, i, ids, start_t)
    return scores


def program_head_naive(spec: HeadSpec, ids: torch.Tensor, v: torch.Tensor, start: torch.Tensor | None = None,
                       n_q: int | None = None) -> torch.Tensor:
    """``ids [B, T] int64, v [B, T, D], start [B] int64 | None -> out [B, n_q, D]`` (v's dtype).

    ``attention_from_scores(sum_i w_i S_i) @ V`` with the empty-row rule, rows before ``start``
    zero. Float64 throughout.
    """
    B, T = ids.shape
    start_t = torch.zeros(B, dtype=torch.long, device=ids.device) if start is None else start.to(ids.device).long()
    nq = S.check_inputs(spec, tuple(ids.shape), tuple(v.shape), int(ids.min()) if ids.numel() else 0,
                        int(ids.max()) if ids.numel() else 0, start_t.cpu().numpy(), n_q)
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
