"""Decoding through ``HeadcodeCache`` (decoding states, a smaller cache) against the recompute path:
greedy and beam search token for token, logits at every decoded position, left padding, the
cache's bytes, its refusals, and heads built from primitive ``HeadSpec``s directly (no compiler)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_surrogate import SOURCES, TEXTS, make_plan
from transformers import DynamicCache

from headcode.errors import HeadcodeError
from headcode.kernels.program_head.naive import program_head_naive
from headcode.kernels.program_head.spec import EVERY, HeadSpec
from headcode.runtime.model.heads import HeadRef
from headcode.runtime.model.loading import load_model
from headcode.runtime.surrogate.apply import apply_plan, build_surrogates, surrogates_applied
from headcode.runtime.surrogate.cache import HeadcodeCache, cache_nbytes
from headcode.runtime.surrogate.replacements import CompiledHeadFn, UniformHead

STEPS = 64
# half the heads of every layer, as whole KV groups (Llama: group 1 = heads 2, 3; GPT-2: one head per group)
HALF = {
    HeadRef(layer, head): src for layer in (0, 1) for head, src in (
        (2, "def attend(t):\n    return 0.6 * first(t) + 0.3 * previous(t, 1) + 0.1 * most_recent(t, punct)\n"),
        (3, "def attend(t):\n    return 0.5 * decay(t, 0.7) + 0.3 * in_same_sentence(t) + 0.2 * uniform(t)\n"))
}


def _cache_of(out):
    return getattr(out, "cache", None) or out.past_key_values


def _gen(model, ids, **kw):
    args = dict(max_new_tokens=STEPS, min_new_tokens=STEPS, do_sample=False, pad_token_id=0, output_logits=True,
                return_dict_in_generate=True)
    with torch.no_grad():
        return model.generate(ids, **{**args, **kw})


def test_greedy_decoding_through_the_states_equals_recompute_and_prefill(tiny_dir):
    lm = load_model(tiny_dir)
    ids = lm.tokenizer(TEXTS[0], return_tensors="pt").input_ids
    with surrogates_applied(lm, make_plan(lm)):
        ours = _gen(lm.model, ids)
        recompute = _gen(lm.model, ids, use_cache=False)
        assert isinstance(_cache_of(ours), HeadcodeCache)
        assert torch.equal(ours.sequences, recompute.sequences)
        assert ours.sequences.shape[1] == ids.shape[1] + STEPS
        # the logits of every decoded position equal one prefill over the whole sequence
        with torch.no_grad():
            full = lm.model(input_ids=ours.sequences).logits
        decoded = torch.stack(ours.logits, 1)
        torch.testing.assert_close(decoded, full[:, ids.shape[1] - 1:-1], rtol=0, atol=1e-4)
        torch.testing.assert_close(decoded, torch.stack(recompute.logits, 1), rtol=0, atol=1e-4)
    base = _gen(lm.model, ids)
    assert (torch.stack(base.logits, 1) - decoded).abs().max() > 1e-3  # the programs are in use


def test_left_padded_batch_and_beam_search_equal_recompute(tiny_dir):
    lm = load_model(tiny_dir)
    lm.tokenizer.padding_side = "left"
    enc = lm.tokenizer(TEXTS, return_tensors="pt", padding=True)
    assert (enc.attention_mask == 0).any()
    with surrogates_applied(lm, make_plan(lm)):
        ours = _gen(lm.model, enc.input_ids, attention_mask=enc.attention_mask)
        recompute = _gen(lm.model, enc.input_ids, attention_mask=enc.attention_mask, use_cache=False)
        assert isinstance(_cache_of(ours), HeadcodeCache)
        assert torch.equal(ours.sequences, recompute.sequences)
        torch.testing.assert_close(torch.stack(ours.logits), torch.stack(recompute.logits), rtol=0, atol=1e-4)
        beam = dict(num_beams=2, max_new_tokens=16, min_new_tokens=16, output_logits=False)
        ours = _gen(lm.model, enc.input_ids, attention_mask=enc.attention_mask, **beam)
        recompute = _gen(lm.model, enc.input_ids, attention_mask=enc.attention_mask, use_cache=False, **beam)
        assert isinstance(_cache_of(ours), HeadcodeCache)
        assert torch.equal(ours.sequences, recompute.sequences)
        torch.testing.assert_close(ours.sequences_scores, recompute.sequences_scores, rtol=0, atol=1e-4)


def test_half_the_heads_as_whole_groups_halve_the_cache(tiny_dir):
    lm = load_model(tiny_dir)
    ids = lm.tokenizer(" ".join(TEXTS * 3), return_tensors="pt").input_ids[:, :200]
    base = _gen(lm.model, ids)
    with surrogates_applied(lm, make_plan(lm, HALF)):
        ours = _gen(lm.model, ids)
        recompute = _gen(lm.model, ids, use_cache=False, max_new_tokens=8, min_new_tokens=8)
    assert torch.equal(ours.sequences[:, :ids.shape[1] + 8], recompute.sequences)
    torch.testing.assert_close(torch.stack(ours.logits[:8]), torch.stack(recompute.logits), rtol=0, atol=1e-4)
    cache, base_cache = _cache_of(ours), _cache_of(base)
    assert isinstance(cache, HeadcodeCache) and type(base_cache) is DynamicCache
    ratio = cache_nbytes(cache) / cache_nbytes(base_cache)
    assert ratio <= 0.55, ratio
    # the groups' own K/V are gone: one of two KV rows left per layer (GPT-2: two of four heads)
    kv = lm.model.config.num_key_value_heads if hasattr(lm.model.config, "num_key_value_heads") else 4
    assert all(layer.keys.shape[1] == kv // 2 and layer.values.shape[1] == kv // 2 for layer in cache.layers)


def test_a_hand_written_loop_and_a_head_that_must_be_recomputed(tiny_llama_dir):
    lm = load_model(tiny_llama_dir)
    heads = build_surrogates(make_plan(lm), lm)
    heads[HeadRef(0, 1)] = UniformHead()  # not a compiled program: recomputed from its group's cached values
    seq = lm.tokenizer(TEXTS[1], return_tensors="pt").input_ids
    with apply_plan(lm.model, heads) as handle, torch.no_grad():
        full = lm.model(input_ids=seq).logits
        cache = handle.new_cache()
        out = lm.model(input_ids=seq[:, :6], cache=cache, use_cache=True)
        steps = [out.logits]
        for i in range(6, seq.shape[1]):
            steps.append(lm.model(input_ids=seq[:, i:i + 1], cache=cache, use_cache=True).logits)
        torch.testing.assert_close(torch.cat(steps, 1), full, rtol=0, atol=1e-4)
        assert cache.ids is not None and cache.ids.shape[1] == seq.shape[1]  # kept only for that head
        with pytest.raises(HeadcodeError, match="cannot be cropped"):
            cache.crop(-1)
    with pytest.raises(HeadcodeError, match="removed"), torch.no_grad():
        apply_plan(lm.model, build_surrogates(make_plan(lm), lm))
        lm.model(input_ids=seq[:, :1], cache=cache, use_cache=True)


def test_a_dynamic_cache_given_by_hand_keeps_the_recompute_path(tiny_gpt2_dir):
    lm = load_model(tiny_gpt2_dir)
    ids = lm.tokenizer(TEXTS[2], return_tensors="pt").input_ids
    with surrogates_applied(lm, make_plan(lm)):
        out = _gen(lm.model, ids, max_new_tokens=4, min_new_tokens=4, cache=DynamicCache(config=lm.model.config))
    assert type(_cache_of(out)) is DynamicCache
    assert len(SOURCES) == 5


def test_concurrent_generations_on_one_model_each_get_their_own_tokens(tiny_llama_dir):
    from concurrent.futures import ThreadPoolExecutor

    lm = load_model(tiny_llama_dir)
    prompts = [lm.tokenizer(t, return_tensors="pt").input_ids for t in TEXTS + [TEXTS[0][:40]]]
    kw = dict(max_new_tokens=16, min_new_tokens=16, output_logits=False)
    with surrogates_applied(lm, make_plan(lm)):
        alone = [_gen(lm.model, p, **kw).sequences for p in prompts]
        with ThreadPoolExecutor(4) as pool:
            together = list(pool.map(lambda p: _gen(lm.model, p, **kw).sequences, prompts))
    for a, b in zip(alone, together):
        assert torch.equal(a, b)


def test_every_compiled_head_keeps_a_decoding_state(tiny_llama_dir):
    """Every primitive has a decoding state, so anchors (after_last / before_last:
    pointers with a shift) and segment starts keep states too, and none is recomputed."""
    lm = load_model(tiny_llama_dir)
    sources = {
        HeadRef(0, 1): "def attend(t):\n    return 0.6 * clause_start(t) + 0.4 * previous(t, 1)\n",
        HeadRef(1, 0): "def attend(t):\n    return 0.5 * after_last(t, punct) + 0.5 * before_last(t, punct)\n",
        HeadRef(1, 2): "def attend(t):\n    return 0.8 * first(t) + 0.2 * previous(t, 1)\n",
    }
    ids = lm.tokenizer(TEXTS[0], return_tensors="pt").input_ids
    with surrogates_applied(lm, make_plan(lm, sources)) as handle:
        layers = handle.layers
        assert layers[0].stateful == [1] and layers[1].stateful == [0, 2]
        assert layers[0].recompute == [] and layers[1].recompute == []
        ours = _gen(lm.model, ids, max_new_tokens=16, min_new_tokens=16)
        recompute = _gen(lm.model, ids, max_new_tokens=16, min_new_tokens=16, use_cache=False)
    assert isinstance(_cache_of(ours), HeadcodeCache)
    assert torch.equal(ours.sequences, recompute.sequences)
    torch.testing.assert_close(torch.stack(ours.logits, 1), torch.stack(recompute.logits, 1), rtol=0, atol=1e-4)


class _ReferenceHead(CompiledHeadFn):
    """A compiled head built from a ``HeadSpec`` directly (no compiler): its states run in the cache,
    its recompute path is the dense reference (backend ``reference``: no one-call kernel path)."""

    def __init__(self, spec: HeadSpec):
        self.head, self.backend = SimpleNamespace(spec=spec, run_spec=spec, constant=(), name="reference"), "reference"

    def __call__(self, ids: torch.Tensor, v: torch.Tensor, start: torch.Tensor, n_q: int) -> torch.Tensor:
        return program_head_naive(self.head.spec, ids, v, start, n_q)


# tables: 0 key, 1 query, 2 sparse (a boundary), 3 dense (a new word); every primitive, shifts either side
PRIMITIVE_HEADS = [
    [dict(kind="pointer", ev_tab=EVERY, shift=-1), dict(kind="pointer", ev_start=1, key_tab=0),
     dict(kind="pointer", ev_tab=2, ev_lag=1, ev_start=1, query_tab=1), dict(kind="scan", rate=0.7)],
    [dict(kind="pointer", ev_tab=2, strict=1, shift=2), dict(kind="pointer", ev_tab=0, strict=1),
     dict(kind="scan", ev_tab=2, ev_lag=1, ev_start=1, key_tab=0), dict(kind="same_token", query_tab=1)],
    [dict(kind="pointer", ev_tab=3), dict(kind="pointer", ev_tab=2, shift=-3, key_tab=0),
     dict(kind="induction"), dict(kind="scan", ev_tab=3, rate=0.8, query_tab=1)],
]


def _spec_of_primitives(vocab: int, terms: list[dict], seed: int) -> HeadSpec:
    rng = np.random.default_rng(seed)
    tables = (rng.random((4, vocab)) < np.array([[0.5], [0.6], [0.15], [0.4]])).astype(np.uint8)
    weights = rng.uniform(0.2, 1.0, len(terms))
    return HeadSpec.build([dict(t, weight=float(w)) for t, w in zip(terms, weights)], tables)


def test_heads_built_from_primitives_decode_like_their_reference(tiny_dir):
    """Every primitive (pointers, scans, same_token, induction) in a model's heads, built directly:
    greedy decoding of a left-padded batch through the states equals recomputing every head with the
    dense reference each step; a head that is not a compiled program is recomputed beside them."""
    lm = load_model(tiny_dir)
    specs = [_spec_of_primitives(lm.model.config.vocab_size, terms, h) for h, terms in enumerate(PRIMITIVE_HEADS)]
    layers = {HeadRef(0, 0): _ReferenceHead(specs[0]), HeadRef(0, 2): _ReferenceHead(specs[1]),
              HeadRef(1, 1): _ReferenceHead(specs[2]), HeadRef(1, 3): UniformHead()}
    lm.tokenizer.padding_side = "left"
    enc = lm.tokenizer(TEXTS, return_tensors="pt", padding=True)
    kw = dict(attention_mask=enc.attention_mask, max_new_tokens=16, min_new_tokens=16)
    with apply_plan(lm.model, layers) as handle:
        assert handle.layers[0].stateful == [0, 2] and handle.layers[1].stateful == [1]
        assert handle.layers[1].recompute == [3]
        ours = _gen(lm.model, enc.input_ids, **kw)
        recompute = _gen(lm.model, enc.input_ids, use_cache=False, **kw)
    assert isinstance(_cache_of(ours), HeadcodeCache)
    assert torch.equal(ours.sequences, recompute.sequences)
    torch.testing.assert_close(torch.stack(ours.logits, 1), torch.stack(recompute.logits, 1), rtol=0, atol=1e-4)


def test_a_plan_that_replaces_a_whole_layer_decodes_like_recompute(tiny_dir):
    """Issue 20: every head of layer 0 replaced (``select --whole-groups`` can choose this): the
    layer keeps no K and no V rows; ``generate`` through ``HeadcodeCache`` still equals recompute."""
    lm = load_model(tiny_dir)
    src = "def attend(t):\n    return 0.6 * first(t) + 0.4 * previous(t, 1)\n"
    plan = make_plan(lm, {HeadRef(0, h): src for h in range(lm.n_heads)})
    ids = lm.tokenizer(TEXTS[0], return_tensors="pt").input_ids
    with surrogates_applied(lm, plan):
        ours = _gen(lm.model, ids, max_new_tokens=16, min_new_tokens=16)
        recompute = _gen(lm.model, ids, use_cache=False, max_new_tokens=16, min_new_tokens=16)
    assert isinstance(_cache_of(ours), HeadcodeCache)
    assert torch.equal(ours.sequences, recompute.sequences)


# every head of layer 0 (both KV groups: the layer keeps no K/V at all), half of layer 1
WHOLE_LAYER = {**{HeadRef(0, h): src for h, src in enumerate(
    ["def attend(t):\n    return 0.7 * previous(t, 1) + 0.3 * first(t)\n",
     "def attend(t):\n    return same_token(t) + 0.2 * uniform(t)\n",
     "def attend(t):\n    return 0.6 * decay(t, 0.5) + 0.4 * first(t)\n",
     "def attend(t):\n    return 0.5 * induction(t) + 0.5 * previous(t, 2)\n"])},
    **{h: src for h, src in HALF.items() if h.layer == 1}}


def test_a_plan_that_replaces_a_whole_layer_decodes(tiny_llama_dir):
    """The plan ``select --whole-groups`` can choose: every head of a layer. ``generate`` used to crash
    on the empty (float) row index of that layer's K/V."""
    lm = load_model(tiny_llama_dir)
    ids = lm.tokenizer(TEXTS[0], return_tensors="pt").input_ids
    with surrogates_applied(lm, make_plan(lm, WHOLE_LAYER)):
        ours = _gen(lm.model, ids, max_new_tokens=16, min_new_tokens=16)
        recompute = _gen(lm.model, ids, max_new_tokens=16, min_new_tokens=16, use_cache=False)
    cache = _cache_of(ours)
    assert isinstance(cache, HeadcodeCache)
    assert cache.layers[0].keys.shape[1] == 0 and cache.layers[0].values.shape[1] == 0
    assert torch.equal(ours.sequences, recompute.sequences)
    torch.testing.assert_close(torch.stack(ours.logits), torch.stack(recompute.logits), rtol=0, atol=1e-4)


def test_generate_with_a_cache_implementation_or_no_cache_is_left_alone(tiny_llama_dir):
    """The handle gives ``generate`` a headcode cache only where it would make its default one."""
    lm = load_model(tiny_llama_dir)
    ids = lm.tokenizer(TEXTS[2], return_tensors="pt").input_ids
    with surrogates_applied(lm, make_plan(lm)):
        static = _gen(lm.model, ids, max_new_tokens=4, min_new_tokens=4, cache_implementation="dynamic")
        assert type(_cache_of(static)) is DynamicCache
        assert _cache_of(_gen(lm.model, ids, max_new_tokens=4, min_new_tokens=4, use_cache=False)) is None
    assert "generate" not in lm.model.__dict__  # removed with the plan
