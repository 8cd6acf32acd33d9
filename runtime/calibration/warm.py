"""The cheap calibration every candidate head gets before heads are chosen: a warm constant.

A head's warm constant is its mean residual — its true output minus what it runs (the program,
plus any constant it already has), averaged over every real token of the fit split with the base
model running (every head neural, so each head is calibrated alone, not jointly). The choice of
heads by measured loss then sees each program with its constant (issue 19, item 3), and a joint
calibration of the chosen heads starts from it. One forward pass per batch of fit texts; the
program of each head runs once on the base model's values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from headcode.compiler.head import SurrogatePlan
from headcode.errors import HeadcodeError
from headcode.runtime.model.attention import use_headcode_attention
from headcode.runtime.model.batching import PaddedBatches, pad_id
from headcode.runtime.model.capture import attached, attention_modules
from headcode.runtime.model.heads import HeadRef
from headcode.runtime.surrogate.replacements import HeadFn

WARM = "warm start: the explanation's weights plus the head's mean residual on the fit split as its constant " \
       "(each head alone, not fitted jointly)"


def _constant_of(fn: HeadFn) -> torch.Tensor | None:
    c = getattr(getattr(fn, "head", None), "constant", ())
    return torch.tensor(c, dtype=torch.float64) if len(c) else None


def mean_residuals(loaded: Any, heads: Mapping[HeadRef, HeadFn], texts: Sequence[np.ndarray],
                   batch_size: int = 8, progress: bool = False) -> dict[HeadRef, torch.Tensor]:
    """Per head ``[D]`` float64: the mean over real tokens of ``texts`` of (true output − ``fn``'s
    output − its constant), every head of the model neural."""
    if not heads:
        return {}
    texts = [t for t in texts if len(t) > 0]
    if not texts:
        raise HeadcodeError("no fit text to compute warm constants on: give a corpus with a fit split")
    model = loaded.model
    use_headcode_attention(model)
    mods = attention_modules(model)
    group = loaded.n_heads // loaded.n_kv_heads
    layers = sorted({h.layer for h in heads})
    sums = {h: torch.zeros(loaded.head_dim, dtype=torch.float64) for h in heads}
    consts = {h: _constant_of(fn) for h, fn in heads.items()}
    now: dict[str, torch.Tensor] = {}

    def hook_for(layer: int):
        def hook(probs: torch.Tensor, value: torch.Tensor) -> None:
            ids, mask = now["ids"], now["mask"][..., None].double()   # [B, T], [B, T, 1]
            T = ids.shape[1]
            start = torch.zeros(ids.shape[0], dtype=torch.long)      # right padding: rows start at 0
            for h in (h for h in heads if h.layer == layer):
                v = value[:, h.head // group, :T].detach()           # [B, T, D]
                true = torch.matmul(probs[:, h.head, :T, :T].double(), v.double())
                ran = heads[h](ids, v, start, T).double()
                res = (true - ran) * mask
                sums[h] += res.sum((0, 1)).cpu() - (0 if consts[h] is None else consts[h] * mask.sum())
        return hook

    n = 0
    batches = PaddedBatches(list(texts), batch_size, pad_id(loaded.tokenizer))
    with attached([mods[l] for l in layers], "_headcode_capture", [hook_for(l) for l in layers]), torch.no_grad():
        for _, ids, mask in tqdm(batches, desc="warm constants", unit="batch", disable=not progress, leave=False):
            now["ids"], now["mask"] = ids, mask
            n += int(mask.sum())
            model(input_ids=ids, attention_mask=mask, use_cache=False)
    return {h: s / n for h, s in sums.items()}


def warm_plan(loaded: Any, plan: SurrogatePlan, fit: Sequence[np.ndarray], batch_size: int = 8,
              backend: str = "numba", progress: bool = False) -> SurrogatePlan:
    """``plan``'s compiled heads, each without a surrogate given the explanation's weights and its
    mean residual on ``fit`` as a constant (heads already calibrated are kept as they are)."""
    from headcode.runtime.surrogate.apply import build_surrogates

    compiled = plan.compiled_heads()
    todo = {k: h for k, h in compiled.items() if h.surrogate is None}
    fns = build_surrogates(SurrogatePlan(plan.model_id, plan.fingerprint, todo), loaded, backend)
    res = mean_residuals(loaded, fns, fit, batch_size, progress)
    heads = {k: (h.calibrated([t.weight for t in h.terms], res[HeadRef.parse(k)].tolist(), WARM) if k in todo else h)
             for k, h in compiled.items()}
    return SurrogatePlan(plan.model_id, plan.fingerprint, heads)
