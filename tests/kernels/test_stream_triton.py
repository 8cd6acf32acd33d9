"""Selector states in Triton (``stream_triton``; under ``TRITON_INTERPRET=1`` where no GPU is lent):
prefill then token-by-token decoding equals the dense reference, several heads in one call, beam
reordering, and a model decoding through the headcode cache with the ``triton`` backend equals
recompute."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from headcode.kernels.program_head.naive import program_head_naive
from headcode.kernels.program_head.spec import KIND_CODES as ALL_KINDS
from headcode.kernels.program_head.spec import HeadSpec
from headcode.kernels.program_head.stream import LayerProgram
from headcode.kernels.program_head.stream_cpu import STATE_OF_KIND
from headcode.kernels.program_head.stream_triton import TritonLayerState

# the kinds with a decoding state (the others are recomputed: tests/runtime/test_surrogate_cache.py)
KIND_CODES = {k: c for k, c in ALL_KINDS.items() if c in STATE_OF_KIND}

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _spec(terms: list[dict], seed: int) -> HeadSpec:
    rng = np.random.default_rng(seed)
    tables = (rng.random((4, 23)) < np.array([[0.5], [0.6], [0.15], [0.4]])).astype(np.uint8)
    terms = [{**t, "aux_tab": 2} if t["kind"] in ("segment_start", "anchor") else t for t in terms]  # row 2 ends a segment
    return HeadSpec.build(terms, tables, boundary_tab=2, new_word_tab=3)


def _mix(seed: int, strict: int) -> HeadSpec:
    w = np.random.default_rng(seed).uniform(0.1, 1.0, len(KIND_CODES))
    return _spec([dict(kind=k, k=seed % 3 + 1, rate=0.8, strict=strict, key_tab=0 if k in ("most_recent", "first",
                       "induction") or i % 2 else -1, query_tab=1 if i % 3 == seed % 3 else -1, weight=float(x))
                  for i, (k, x) in enumerate(zip(KIND_CODES, w))], seed)


def test_heads_of_a_layer_prefill_decode_and_reorder_match_reference():
    specs, groups = [_mix(0, 1), _mix(1, 0), _mix(2, 1)], [1, 0, 1]
    g = torch.Generator().manual_seed(3)
    B, T, D = 3, 26, 8
    ids = torch.randint(0, 6, (B, T), generator=g) * torch.randint(1, 4, (B, T), generator=g) % 23
    v = torch.randn(B, 2, T, D, generator=g)
    start = torch.tensor([0, 9, 15])
    st = TritonLayerState(LayerProgram.build(specs, groups), B, D, DEV)
    outs = [st.step(ids[:, :10].to(DEV), v[:, :, :10].to(DEV), start.to(DEV)).cpu()]
    for i in range(10, 18):
        outs.append(st.step(ids[:, i:i + 1].to(DEV), v[:, :, i:i + 1].to(DEV), start.to(DEV)).cpu())
    out = torch.cat(outs, 2)
    for h, sp in enumerate(specs):
        ref = program_head_naive(sp, ids[:, :18], v[:, groups[h], :18], start)
        torch.testing.assert_close(out[:, h], ref, atol=1e-5, rtol=0)
    order = torch.tensor([2, 0, 2])  # beam search: rows reordered, then decoding goes on
    st.map_apply(lambda t: t.index_select(0, order.to(t.device)))
    ids, v, start = ids[order], v[order], start[order]
    tail = torch.cat([st.step(ids[:, i:i + 1].to(DEV), v[:, :, i:i + 1].to(DEV), start.to(DEV)).cpu()
                      for i in range(18, T)], 2)
    for h, sp in enumerate(specs):
        ref = program_head_naive(sp, ids, v[:, groups[h]], start)
        torch.testing.assert_close(tail[:, h], ref[:, 18:], atol=1e-5, rtol=0)


@pytest.mark.slow
def test_a_model_decodes_through_triton_states(tiny_llama_dir):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))
    from test_surrogate import TEXTS, make_plan

    from headcode.runtime.model.loading import load_model
    from headcode.runtime.surrogate.apply import surrogates_applied
    from headcode.runtime.surrogate.cache import HeadcodeCache

    lm = load_model(tiny_llama_dir)
    lm.model.to(DEV)
    ids = lm.tokenizer(TEXTS[2], return_tensors="pt").input_ids.to(DEV)
    kw = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0, output_logits=True,
              return_dict_in_generate=True)
    with surrogates_applied(lm, make_plan(lm), backend="triton"), torch.no_grad():
        ours = lm.model.generate(ids, **kw)
        recompute = lm.model.generate(ids, use_cache=False, **kw)
    assert isinstance(getattr(ours, "cache", None) or ours.past_key_values, HeadcodeCache)
    assert torch.equal(ours.sequences, recompute.sequences)
    torch.testing.assert_close(torch.stack(ours.logits), torch.stack(recompute.logits), rtol=0, atol=1e-4)
