"""Choosing which heads to replace for a budget: by what the replacement does to the model's
loss on the select split, not by how well the program matches the attention (IoU).

Two stages:
1. **Estimate** (one forward and backward per batch): every candidate head's output is
   ``neural + a_h * (program - neural)`` with ``a_h = 0``; ``dL/da_h`` is the first-order change
   of the select loss when head ``h`` alone is replaced (attribution patching). Cheap for all
   heads at once.
2. **Measure**: the ``n_measure`` heads with the smallest estimates are each replaced alone and
   the select loss measured exactly (on the first ``measure_texts`` texts, ``measure_tokens``
   tokens each: one forward pass per head, so this stage stays cheap).

The headline budget is filled in rounds (each round estimates and measures on top of the
heads already chosen, since replacements interact); the other heads follow by measured
increase, then by estimate. The first ``k`` heads of one ranking serve every budget ``k``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from headcode.errors import HeadcodeError
from headcode.runtime.evaluation.measures import _logprobs, token_loss
from headcode.runtime.evaluation.parallel import LOCAL, Executor
from headcode.runtime.model.attention import neural_attention, use_headcode_attention
from headcode.runtime.model.batching import PaddedBatches, pad_id
from headcode.runtime.model.capture import attached, attention_modules
from headcode.runtime.model.heads import HeadRef
from headcode.runtime.surrogate.apply import apply_plan
from headcode.runtime.surrogate.history import TokenHistory
from headcode.runtime.surrogate.replacements import HeadFn


@dataclass(frozen=True)
class Ranking:
    """Heads best-first; ``measured[h]``: loss increase (nats/token) when ``h`` was added to the heads
    chosen before its round; ``estimate[h]``: the first-order estimate of the last estimate pass."""

    heads: tuple[HeadRef, ...]
    measured: dict[HeadRef, float]
    estimate: dict[HeadRef, float]
    base_loss: float
    method: str

    def take(self, k: int) -> tuple[HeadRef, ...]:
        return self.heads[: max(0, k)]


def ran(fn: HeadFn, ids: torch.Tensor, v: torch.Tensor, start: torch.Tensor, n_q: int) -> torch.Tensor:
    """What a replaced head outputs ``[B, n_q, D]``: ``fn``'s ``A @ V`` plus its head's constant on
    the real query rows (the layer adds it in ``apply_plan``; the probes here call ``fn`` alone)."""
    out = fn(ids, v, start, n_q)
    c = getattr(getattr(fn, "head", None), "constant", ())
    if not len(c):
        return out
    pos = torch.arange(v.shape[1] - n_q, v.shape[1], device=out.device)
    real = (pos[None, :] >= start.to(out.device)[:, None]).to(out.dtype)[..., None]       # [B, n_q, 1]
    return out + real * torch.tensor(c, dtype=out.dtype, device=out.device)


class _Probe:
    """Attached as ``_headcode_surrogate``: all heads neural, candidates mixed in by ``alpha``."""

    def __init__(self, fns: Mapping[int, HeadFn], alpha: torch.Tensor, slots: Mapping[int, int],
                 n_heads: int, n_kv: int, history: TokenHistory, fixed: Mapping[int, HeadFn]):
        self.fns, self.alpha, self.slots, self.fixed = fns, alpha, slots, fixed
        self.n_heads, self.group, self.history = n_heads, n_heads // n_kv, history

    def __call__(self, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 mask: torch.Tensor | None, scaling: float, dropout: float = 0.0) -> torch.Tensor:
        kv = torch.arange(self.n_heads, device=query.device) // self.group
        out = neural_attention(query, key, value, mask, scaling, kv, kv)
        ids, start = self.history.current(value.shape[2])
        T = ids.shape[1]
        heads = []
        for h in range(self.n_heads):
            o = out[:, h]
            if h in self.fixed:  # already chosen: replaced outright
                with torch.no_grad():
                    o = ran(self.fixed[h], ids, value[:, h // self.group, :T].detach(), start, query.shape[2])
                o = o.to(out.dtype)
            elif h in self.fns:
                with torch.no_grad():
                    sur = ran(self.fns[h], ids, value[:, h // self.group, :T].detach(), start, query.shape[2])
                o = o + self.alpha[self.slots[h]] * (sur.to(o.dtype) - o.detach())
            heads.append(o)
        return torch.stack(heads, dim=1)


def estimate_effects(loaded: Any, heads: Mapping[HeadRef, HeadFn], texts: Sequence[np.ndarray],
                     batch_size: int = 8, progress: bool = False,
                     fixed: Mapping[HeadRef, HeadFn] | None = None) -> dict[HeadRef, float]:
    """First-order change of the mean token loss on ``texts`` when each head alone is replaced
    (on top of the ``fixed`` heads, replaced throughout)."""
    fixed = dict(fixed or {})
    heads = {h: fn for h, fn in heads.items() if h not in fixed}
    model = loaded.model
    use_headcode_attention(model)
    order = sorted(heads)
    alpha = torch.zeros(len(order), dtype=torch.float32, requires_grad=True)
    slot = {h: i for i, h in enumerate(order)}
    history = TokenHistory()
    mods = attention_modules(model)
    layers = sorted({h.layer for h in order} | {h.layer for h in fixed})
    probes = [_Probe({h.head: heads[h] for h in order if h.layer == l}, alpha,
                     {h.head: slot[h] for h in order if h.layer == l}, loaded.n_heads, loaded.n_kv_heads, history,
                     {h.head: fn for h, fn in fixed.items() if h.layer == l})
              for l in layers]
    grads = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    hook = history.attach(model)
    n_tok = 0
    try:
        with attached([mods[l] for l in layers], "_headcode_surrogate", probes):
            for _, ids, mask in tqdm(PaddedBatches(texts, batch_size, pad_id(loaded.tokenizer)), desc="estimate",
                                     unit="batch", disable=not progress, leave=False):
                lp = _logprobs(model, ids, mask)
                m = mask[:, 1:].bool()
                (-lp[m].sum()).backward()
                n_tok += int(m.sum())
    finally:
        hook.remove()
        for p, g in zip(model.parameters(), grads):
            p.requires_grad_(g)
    if n_tok == 0 or alpha.grad is None:
        raise HeadcodeError("no tokens on the select split to rank heads on")
    g = (alpha.grad / n_tok).tolist()
    return {h: float(g[slot[h]]) for h in order}


def loss_with(loaded: Any, fns: Mapping[HeadRef, HeadFn], texts: Sequence[np.ndarray], batch_size: int = 8) -> float:
    """Mean token loss on ``texts`` with ``fns`` in place (the base model for none)."""
    with apply_plan(loaded.model, fns):
        return token_loss(loaded.model, texts, loaded.tokenizer, batch_size).mean


def choose_in_rounds(loaded: Any, heads: Mapping[HeadRef, HeadFn], units: Mapping[Any, tuple[HeadRef, ...]],
                     texts: Sequence[np.ndarray], sub: Sequence[np.ndarray], budget: int, n_measure: int,
                     rounds: int, batch_size: int, progress: bool,
                     executor: Executor | None = None) -> tuple[list, dict, dict, float]:
    """Choose ``budget`` units (a head, or the heads of a KV group) in ``rounds``: each round
    estimates every remaining unit (the sum of its heads' first-order estimates) on top of the
    units already chosen, measures the best candidates exactly on ``sub`` (through ``executor``:
    each candidate's loss is one forward pass, independent of the others), and keeps the best
    measured. Returns ``(chosen, measured, estimate, base loss)``."""
    chosen: list = []
    measured: dict = {}
    est: dict = {}
    base_loss = None
    losses = (executor or LOCAL).set_losses(loaded, heads, sub, batch_size)  # replays the base model below
    for r in range(rounds):
        left = [u for u in units if u not in chosen]
        fixed = {h: heads[h] for u in chosen for h in units[u]}
        n_meas = int(np.ceil(n_measure / rounds)) if r < rounds - 1 else max(0, n_measure - len(measured))
        n_pick = int(np.ceil(budget / rounds)) if r < rounds - 1 else budget - len(chosen)
        if n_meas >= len(left):
            cands = sorted(left)
        else:
            per_head = estimate_effects(loaded, {h: heads[h] for u in left for h in units[u]}, texts,
                                        batch_size, progress, fixed)
            est = {u: sum(per_head[h] for h in units[u]) for u in left}
            cands = sorted(left, key=lambda u: est[u])[:n_meas]
        base, *with_unit = losses([list(fixed)] + [list(fixed) + list(units[u]) for u in cands], progress)
        base_loss = base if base_loss is None else base_loss
        meas = {u: loss - base for u, loss in zip(cands, with_unit)}
        measured.update(meas)
        chosen += sorted(meas, key=lambda u: meas[u])[:n_pick]
    return chosen, measured, est, float(base_loss)


def select_texts_for_ranking(texts: Sequence[np.ndarray], measure_texts: int,
                             measure_tokens: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``(texts to estimate on, the shorter texts measured exactly)``; refuses an empty split."""
    texts = [t for t in texts if len(t) > 1]
    if not texts:
        raise HeadcodeError("the select split has no text to rank heads on: use a larger corpus")
    return texts, [t[:measure_tokens] for t in texts[:measure_texts]]


def rank_heads(loaded: Any, heads: Mapping[HeadRef, HeadFn], texts: Sequence[np.ndarray],
               n_measure: int, measure_texts: int = 8, measure_tokens: int = 128, batch_size: int = 8,
               progress: bool = False, budget: int | None = None, rounds: int = 1,
               executor: Executor | None = None) -> Ranking:
    """Rank ``heads`` by their effect on the loss over ``texts`` (the select split).

    ``rounds > 1``: the first ``budget`` heads are chosen in that many rounds, each estimating
    and measuring on top of the heads already chosen (replacements interact: two heads that
    are harmless alone can hurt together); ``n_measure`` heads are measured over all rounds.
    ``executor``: where the measured losses run (``runtime.evaluation.parallel``; default here)."""
    if not heads:
        raise HeadcodeError("no candidate heads to rank: the surrogate plan is empty")
    texts, sub = select_texts_for_ranking(texts, measure_texts, measure_tokens)
    budget = min(len(heads), n_measure if budget is None else budget)
    rounds = max(1, min(rounds, budget))
    chosen, measured, est, base_loss = choose_in_rounds(loaded, heads, {h: (h,) for h in heads}, texts, sub,
                                                        budget, n_measure, rounds, batch_size, progress,
                                                        executor)
    if len(chosen) < len(heads) and not est:
        est = estimate_effects(loaded, heads, texts, batch_size, progress, {h: heads[h] for h in chosen})
    rest = sorted((h for h in heads if h not in chosen), key=lambda h: (h not in measured, measured.get(h, est.get(h, 0.0))))
    method = (f"{rounds} round(s), each: first-order loss change of every remaining head on top of the heads "
              "already chosen (select split), then the loss increase measured for the best candidates "
              f"({len(measured)} heads measured in all)")
    return Ranking(tuple(chosen) + tuple(rest), measured, est, base_loss, method)
