"""Loading checkpoints, headcode's attention registration, and capture."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from headcode.compiler.tokens import Tokens
from headcode.errors import HeadcodeError
from headcode.runtime.model.capture import capture
from headcode.runtime.model.heads import HeadRef, parse_heads
from headcode.runtime.model.loading import load_model

TEXTS = ["Once upon a time, there was a little cat named Tom.",
         "Tom liked to play in the park. One day, Tom saw a big red ball!",
         "His friend Lily laughed."]


def _leak_check(lm, T=12, t=5, seed=0):
    """Logits up to t must not move when the tokens after t change."""
    g = torch.Generator().manual_seed(seed)
    vocab = lm.model.config.vocab_size
    a = torch.randint(0, vocab, (2, T), generator=g)
    b = a.clone()
    b[:, t + 1:] = torch.randint(0, vocab, (2, T - t - 1), generator=g)
    assert not torch.equal(a, b)
    with torch.no_grad():
        la = lm.model(input_ids=a).logits
        lb = lm.model(input_ids=b).logits
    torch.testing.assert_close(la[:, : t + 1], lb[:, : t + 1], rtol=0, atol=1e-5)
    assert (la[:, t + 1:] - lb[:, t + 1:]).abs().max() > 1e-4  # the later tokens do matter


def test_tiny_models_load_through_headcode(tiny_dir):
    lm = load_model(tiny_dir)
    assert lm.model.config._attn_implementation == "headcode"
    assert lm.n_layers == 2 and lm.n_heads == 4
    assert lm.n_kv_heads in (2, 4) and lm.head_dim == 16


def test_no_future_leak_tiny(tiny_dir):
    _leak_check(load_model(tiny_dir))


def test_headcode_attention_matches_eager(tiny_dir):
    lm = load_model(tiny_dir)
    enc = lm.tokenizer(TEXTS[:2], return_tensors="pt", padding=True)
    with torch.no_grad():
        ours = lm.model(**enc).logits
        lm.model.set_attn_implementation("eager")
        ref = lm.model(**enc).logits
    m = enc.attention_mask.bool()
    torch.testing.assert_close(ours[m], ref[m], rtol=1e-4, atol=1e-5)


def test_capture_equals_eager_output_attentions(tiny_dir):
    lm = load_model(tiny_dir)
    toks = [Tokens.from_text(lm.tokenizer, t) for t in TEXTS]
    heads = (HeadRef(0, 1), HeadRef(1, 3), HeadRef(1, 0))
    hp = capture(lm, toks, heads=heads, batch_size=2, progress=False)
    lm.model.set_attn_implementation("eager")
    for i, t in enumerate(toks):
        with torch.no_grad():
            out = lm.model(input_ids=torch.from_numpy(t.ids)[None], output_attentions=True)
        for h in heads:
            ref = out.attentions[h.layer][0, h.head].numpy()
            np.testing.assert_allclose(hp.attention(i, h), ref, atol=1e-5, rtol=0)
            assert np.allclose(hp.attention(i, h).sum(1), 1, atol=1e-5)


def test_capture_values_are_the_heads_kv_values(tiny_llama_dir):
    lm = load_model(tiny_llama_dir)
    t = Tokens.from_text(lm.tokenizer, TEXTS[1])
    hp = capture(lm, [t], heads=(HeadRef(1, 0), HeadRef(1, 3)), progress=False)
    # heads 0 and 3 of a 4-head, 2-KV model read KV heads 0 and 1
    assert hp.kv_of_head[0] != hp.kv_of_head[1]
    attn = lm.model.model.layers[1].self_attn
    seen = {}
    attn.v_proj.register_forward_hook(lambda m, i, o: seen.setdefault("v", o))
    with torch.no_grad():
        lm.model(input_ids=torch.from_numpy(t.ids)[None])
    v = seen["v"][0].view(len(t), 2, 16)
    np.testing.assert_allclose(hp.value(0, HeadRef(1, 3)), v[:, 1].numpy(), atol=2e-3)


def test_patterns_save_load_roundtrip(tiny_gpt2_dir, tmp_path):
    from headcode.runtime.model.patterns import HeadPatterns

    lm = load_model(tiny_gpt2_dir)
    toks = [Tokens.from_text(lm.tokenizer, t) for t in TEXTS]
    hp = capture(lm, toks, splits=("fit", "select", "test"), progress=False)
    hp.save(str(tmp_path / "p.safetensors"))
    back = HeadPatterns.load(str(tmp_path / "p.safetensors"))
    assert back.heads == hp.heads and back.splits == hp.splits
    for i in range(3):
        assert back.tokens[i].pieces == hp.tokens[i].pieces
        np.testing.assert_array_equal(back.attention(i, HeadRef(1, 2)), hp.attention(i, HeadRef(1, 2)))


@pytest.mark.parametrize("spec, needle", [
    ("no/such/model/anywhere", "unknown model"),
    ("./missing-dir", "unknown model"),
])
def test_unknown_model_is_a_clear_error(spec, needle):
    with pytest.raises(HeadcodeError, match=needle):
        load_model(spec)


def test_fake_gguf_is_refused(tmp_path):
    p = tmp_path / "fake.gguf"
    p.write_bytes(b"not a gguf at all")
    with pytest.raises(HeadcodeError, match="not a GGUF"):
        load_model(str(p))


def test_head_parsing_and_range():
    assert str(HeadRef.parse("L3.H7")) == "L3.H7"
    assert parse_heads("L1,L0.H2", 2, 4) == tuple(sorted([HeadRef(1, h) for h in range(4)] + [HeadRef(0, 2)]))
    with pytest.raises(HeadcodeError, match="out of range"):
        parse_heads("L99.H0", 30, 9)
    with pytest.raises(HeadcodeError, match="L<layer>"):
        HeadRef.parse("layer3")


def test_capture_rejects_empty_and_out_of_range(tiny_gpt2_dir):
    lm = load_model(tiny_gpt2_dir)
    with pytest.raises(HeadcodeError, match="empty"):
        capture(lm, [], progress=False)
    t = Tokens.from_text(lm.tokenizer, TEXTS[0])
    with pytest.raises(HeadcodeError, match="out of range"):
        capture(lm, [t], heads=[HeadRef(5, 0)], progress=False)


@pytest.mark.slow
def test_default_model_loads_and_does_not_leak(default_model):
    lm = default_model
    assert (lm.n_layers, lm.n_heads, lm.n_kv_heads) == (30, 9, 3)
    _leak_check(lm, T=16, t=7)
    # a second load reads the safetensors cache instead of de-quantising again
    import time
    t0 = time.time()
    load_model("smollm2-135m")
    assert time.time() - t0 < 15


def test_hub_id_resolves_through_the_hub_cache(tiny_gpt2_dir, tmp_path, monkeypatch):
    """A hub id goes through from_pretrained's hub path; here the 'hub' is a cache the test makes."""
    import shutil
    from pathlib import Path

    import huggingface_hub.constants as hc

    commit = "0" * 40
    snap = tmp_path / "models--tiny-org--tiny-gpt2" / "snapshots" / commit
    shutil.copytree(tiny_gpt2_dir, snap)
    (tmp_path / "models--tiny-org--tiny-gpt2" / "refs").mkdir()
    (tmp_path / "models--tiny-org--tiny-gpt2" / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    assert not Path("tiny-org/tiny-gpt2").exists()
    lm = load_model("tiny-org/tiny-gpt2")
    assert lm.name == "tiny-org/tiny-gpt2" and lm.n_layers == 2
    with pytest.raises(HeadcodeError, match="hub"):
        load_model("tiny-org/not-in-the-cache")


def test_float16_capture_is_close_and_half_the_size(tiny_gpt2_dir):
    lm = load_model(tiny_gpt2_dir)
    toks = [Tokens.from_text(lm.tokenizer, t) for t in TEXTS]
    exact = capture(lm, toks, progress=False)
    half = capture(lm, toks, progress=False, dtype=np.float16)
    assert half.packed[0].nbytes * 2 == exact.packed[0].nbytes
    for i in range(len(toks)):
        np.testing.assert_allclose(half.attention(i, HeadRef(1, 2)), exact.attention(i, HeadRef(1, 2)), atol=1e-3)


def test_an_unknown_hub_id_fails_fast_with_one_line(monkeypatch):
    """With no hub answering, a name that is not cached fails at once: no ~45 s of retries."""
    import os
    import subprocess
    import sys
    import time

    from headcode.runtime.model import loading

    monkeypatch.setattr(loading, "hub_reachable", lambda timeout=3.0: False)
    t0 = time.monotonic()
    with pytest.raises(HeadcodeError, match="hub does not answer"):
        load_model("no-such-model")
    assert time.monotonic() - t0 < 2.0   # no network call was made: resolving is a cache lookup
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"   # nothing listens on the discard port
    out = subprocess.run([sys.executable, "-m", "headcode.cli", "heads", "org/no-such-model"],
                         capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 1
    assert out.stdout == "" and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "unknown model 'org/no-such-model'" in out.stderr
