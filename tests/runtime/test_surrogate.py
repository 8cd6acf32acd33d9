"""The surrogate runtime: exactness, no future leaks, KV-cache generation, padding, undo, plan files."""

from __future__ import annotations

import pytest
import torch

from headcode.api import from_pretrained
from headcode.compiler import SurrogatePlan, compile_source
from headcode.compiler.export import save_plan
from headcode.compiler.tokens import Tokens, vocabulary_pieces
from headcode.errors import HeadcodeError
from headcode.runtime.model.capture import capture
from headcode.runtime.model.heads import HeadRef
from headcode.runtime.model.loading import load_model
from headcode.runtime.surrogate.apply import apply_plan, build_surrogates, surrogates_applied
from headcode.runtime.surrogate.replacements import UniformHead, pattern_heads

TEXTS = ["Once upon a time, there was a little cat named Tom. Tom liked to play in the park.",
         "One day, Tom saw a big red ball! He ran to the ball and kicked it.",
         "His friend Lily laughed."]
SOURCES = {
    HeadRef(0, 0): "def attend(t):\n    return 0.7 * previous(t, 1) + 0.3 * first(t)\n",
    HeadRef(0, 3): "def attend(t):\n    return same_token(t) + 0.2 * uniform(t)\n",
    HeadRef(1, 1): "def attend(t):\n    return 0.5 * in_same_sentence(t) + 0.5 * most_recent(t, punct)\n",
    HeadRef(1, 2): "def attend(t):\n    return 0.6 * decay(t, 0.5) + 0.4 * first(t)\n",
    HeadRef(1, 3): "def attend(t):\n    return 0.9 * previous(t, 2) + 0.1 * current(t)\n",
}


def make_plan(lm, sources=SOURCES) -> SurrogatePlan:
    pieces = vocabulary_pieces(lm.tokenizer)
    heads = {str(h): compile_source(src, pieces, lm.fingerprint, name=str(h), model_id=lm.name, strict=True)
             for h, src in sources.items()}
    return SurrogatePlan(model_id=lm.name, fingerprint=lm.fingerprint, heads=heads)


def logits(model, ids, **kw):
    with torch.no_grad():
        return model(input_ids=ids, **kw).logits


def test_exact_patterns_reproduce_the_model(tiny_dir):
    lm = load_model(tiny_dir)
    toks = [Tokens.from_text(lm.tokenizer, t) for t in TEXTS]
    exact = pattern_heads(capture(lm, toks, progress=False))
    assert len(exact) == lm.n_layers * lm.n_heads
    layers = build_surrogates(exact, lm)
    for t in toks:
        ids = torch.from_numpy(t.ids)[None]
        base = logits(lm.model, ids)
        with apply_plan(lm.model, layers):
            ours = logits(lm.model, ids)
        torch.testing.assert_close(ours, base, rtol=0, atol=1e-4)
    # the replacement is really used: other weights give other logits
    with apply_plan(lm.model, {HeadRef(0, h): UniformHead() for h in range(4)}):
        other = logits(lm.model, ids)
    assert (other - base).abs().max() > 1e-3


def test_replaced_heads_skip_their_projection_rows(tiny_llama_dir):
    lm = load_model(tiny_llama_dir)
    attn = lm.model.model.layers[1].self_attn
    q0, k0 = attn.q_proj, attn.k_proj
    with surrogates_applied(lm, make_plan(lm)) as handle:
        # layer 1: heads 1, 2, 3 replaced -> one query row; KV group 1 (heads 2, 3) fully replaced
        assert attn.q_proj.out_features == 16 and attn.k_proj.out_features == 16
        torch.testing.assert_close(attn.q_proj.weight, q0.weight[:16])
        assert len(handle.heads) == len(SOURCES)
    assert attn.q_proj is q0 and attn.k_proj is k0


def _leak(model, vocab, T=14, t=6):
    g = torch.Generator().manual_seed(1)
    a = torch.randint(0, vocab, (2, T), generator=g)
    a[:, 3] = a[:, 9] = a[:, 1]  # repeated tokens: same_token / induction-like terms get work
    b = a.clone()
    b[:, t + 1:] = torch.randint(0, vocab, (2, T - t - 1), generator=g)
    la, lb = logits(model, a), logits(model, b)
    torch.testing.assert_close(la[:, : t + 1], lb[:, : t + 1], rtol=0, atol=1e-5)
    assert (la[:, t + 1:] - lb[:, t + 1:]).abs().max() > 1e-4
    return a


def test_surrogate_model_does_not_leak_prefill_or_decode(tiny_dir):
    lm = load_model(tiny_dir)
    with surrogates_applied(lm, make_plan(lm)):
        a = _leak(lm.model, lm.model.config.vocab_size)
        full = logits(lm.model, a)
        # decoding step by step with the cache gives the same logits as the full pass, so each
        # step sees exactly its own past (and the full pass does not leak, above)
        out = lm.model(input_ids=a[:, :5], use_cache=True)
        steps, cache = [out.logits], out.past_key_values
        for i in range(5, a.shape[1]):
            out = lm.model(input_ids=a[:, i:i + 1], past_key_values=cache, use_cache=True)
            steps.append(out.logits)
        torch.testing.assert_close(torch.cat(steps, 1), full, rtol=0, atol=1e-4)


def test_greedy_generation_with_cache_equals_without(tiny_dir):
    lm = load_model(tiny_dir)
    ids = torch.from_numpy(Tokens.from_text(lm.tokenizer, TEXTS[0]).ids)[None]
    kw = dict(max_new_tokens=12, do_sample=False, pad_token_id=0, output_scores=True,
              return_dict_in_generate=True)
    with torch.no_grad():
        base = lm.model.generate(ids, **kw)
        with surrogates_applied(lm, make_plan(lm)):
            cached = lm.model.generate(ids, use_cache=True, **kw)
            uncached = lm.model.generate(ids, use_cache=False, **kw)
    assert torch.equal(cached.sequences, uncached.sequences)
    assert cached.sequences.shape[1] == ids.shape[1] + 12
    torch.testing.assert_close(torch.stack(cached.scores), torch.stack(uncached.scores), rtol=0, atol=1e-4)
    # the programs changed what the model computes at every step
    assert all((a - b).abs().max() > 1e-3 for a, b in zip(cached.scores, base.scores))


def test_left_padded_batch_equals_each_row_alone(tiny_dir):
    lm = load_model(tiny_dir)
    lm.tokenizer.padding_side = "left"
    enc = lm.tokenizer(TEXTS, return_tensors="pt", padding=True)
    pos = (enc.attention_mask.cumsum(-1) - 1).clamp(min=0)
    with surrogates_applied(lm, make_plan(lm)):
        batch = logits(lm.model, enc.input_ids, attention_mask=enc.attention_mask, position_ids=pos)
        for b, text in enumerate(TEXTS):
            ids = lm.tokenizer(text, return_tensors="pt").input_ids
            alone = logits(lm.model, ids)
            torch.testing.assert_close(batch[b, -ids.shape[1]:], alone[0], rtol=0, atol=1e-4)
        gen = lm.model.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=0)
        for b, text in enumerate(TEXTS):
            ids = lm.tokenizer(text, return_tensors="pt").input_ids
            one = lm.model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
            assert torch.equal(gen[b, -6:], one[0, -6:])


def test_apply_and_undo_restore_the_model_exactly(tiny_dir):
    lm = load_model(tiny_dir)
    lm.model.set_attn_implementation("sdpa")
    ids = torch.from_numpy(Tokens.from_text(lm.tokenizer, TEXTS[1]).ids)[None]
    before = logits(lm.model, ids)
    shapes = {k: v.shape for k, v in lm.model.state_dict().items()}
    handle = apply_plan(lm.model, build_surrogates(make_plan(lm), lm))
    during = logits(lm.model, ids)
    with pytest.raises(HeadcodeError, match="already applied"):
        apply_plan(lm.model, build_surrogates(make_plan(lm), lm))
    handle.remove()
    handle.remove()  # idempotent
    after = logits(lm.model, ids)
    assert lm.model.config._attn_implementation == "sdpa"
    assert {k: v.shape for k, v in lm.model.state_dict().items()} == shapes
    assert torch.equal(before, after)
    assert (during - before).abs().max() > 1e-3


def test_from_pretrained_generates_and_refuses_another_models_plan(tiny_gpt2_dir, tiny_llama_dir, tmp_path):
    gpt2 = load_model(tiny_gpt2_dir)
    path = tmp_path / "surrogates.safetensors"
    save_plan(make_plan(gpt2), path)
    model = from_pretrained(tiny_gpt2_dir, surrogates=str(path))
    assert len(model.headcode_handle.heads) == len(SOURCES)
    ids = torch.from_numpy(Tokens.from_text(gpt2.tokenizer, TEXTS[2]).ids)[None]
    out = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert out.shape[1] == ids.shape[1] + 4
    with pytest.raises(HeadcodeError, match="compiled for model|made for model"):
        from_pretrained(tiny_llama_dir, surrogates=str(path))
    other = SurrogatePlan(model_id=gpt2.name, fingerprint="0123456789abcdef", heads=make_plan(gpt2).heads)
    save_plan(other, tmp_path / "other.safetensors")
    with pytest.raises(HeadcodeError, match="another tokenizer"):
        from_pretrained(tiny_gpt2_dir, surrogates=str(tmp_path / "other.safetensors"))


def test_a_cache_from_another_sequence_is_refused(tiny_llama_dir):
    lm = load_model(tiny_llama_dir)
    ids = torch.from_numpy(Tokens.from_text(lm.tokenizer, TEXTS[0]).ids)[None]
    with surrogates_applied(lm, make_plan(lm)), torch.no_grad():
        first = lm.model(input_ids=ids, use_cache=True)
        lm.model(input_ids=ids[:, :4], use_cache=True)  # another sequence in between
        with pytest.raises(HeadcodeError, match="KV cache"):
            lm.model(input_ids=ids[:, :1], past_key_values=first.past_key_values, use_cache=True)


def cache_keywords(model) -> list[str]:
    """The keywords the installed transformers accepts for a cache: the current one (``cache`` from
    5.24) and the deprecated ``past_key_values`` while it is still accepted (removed in 5.40)."""
    import inspect

    import transformers
    from packaging.version import Version

    params = inspect.signature(model.forward).parameters
    if "cache" not in params:
        return ["past_key_values"]
    return ["cache"] + (["past_key_values"] if Version(transformers.__version__) < Version("5.40") else [])


@pytest.mark.parametrize("spelling", ["current", "deprecated"])
def test_decoding_through_either_cache_keyword_equals_recompute(tiny_dir, spelling):
    from transformers import DynamicCache

    lm = load_model(tiny_dir)
    names = cache_keywords(lm.model)
    if spelling == "deprecated" and (len(names) < 2 and names[0] == "cache"):
        pytest.skip("this transformers no longer accepts past_key_values")
    kw = names[0] if spelling == "current" else names[-1]
    ids = torch.from_numpy(Tokens.from_text(lm.tokenizer, TEXTS[0]).ids)[None]
    gen = dict(max_new_tokens=10, do_sample=False, pad_token_id=0, output_scores=True,
               return_dict_in_generate=True)
    with surrogates_applied(lm, make_plan(lm)), torch.no_grad():
        recompute = lm.model.generate(ids, use_cache=False, **gen)
        given = lm.model.generate(ids, use_cache=True, **{kw: DynamicCache(config=lm.model.config)}, **gen)
        assert torch.equal(given.sequences, recompute.sequences)
        torch.testing.assert_close(torch.stack(given.scores), torch.stack(recompute.scores), rtol=0, atol=1e-4)
        # a hand-written decoding loop, passing the cache back under that keyword
        seq = recompute.sequences
        out = lm.model(input_ids=seq[:, :5], use_cache=True)
        steps, cache = [out.logits], out.past_key_values
        for i in range(5, seq.shape[1]):
            out = lm.model(input_ids=seq[:, i:i + 1], use_cache=True, **{kw: cache})
            steps.append(out.logits)
        torch.testing.assert_close(torch.cat(steps, 1), logits(lm.model, seq), rtol=0, atol=1e-4)
