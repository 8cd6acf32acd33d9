"""``headcode select``: a plan with only the chosen heads (whole KV groups when asked) that loads as
is and gives the same logits as those heads taken from the full plan; group ranking by loss."""

from __future__ import annotations

import json

import pytest
import torch

from headcode.api import from_pretrained
from headcode.cli import main
from headcode.compiler import SurrogatePlan, compile_source, save_plan
from headcode.compiler.export import load_plan
from headcode.compiler.tokens import Tokens, vocabulary_pieces
from headcode.runtime.evaluation.measures import token_loss
from headcode.runtime.evaluation.selection_groups import cache_saving, kv_groups, rank_groups
from headcode.runtime.model.capture import capture
from headcode.runtime.model.heads import HeadRef
from headcode.runtime.model.loading import load_model
from headcode.runtime.surrogate.apply import apply_plan
from headcode.runtime.surrogate.replacements import MeanHead, pattern_heads
from tests.runtime.test_evaluate import PARAGRAPHS

PROGRAMS = [
    "def attend(t):\n    return 0.7 * previous(t, 1) + 0.3 * first(t)\n",
    "def attend(t):\n    return same_token(t) + 0.2 * uniform(t)\n",
    "def attend(t):\n    return 0.6 * decay(t, 0.5) + 0.4 * first(t)\n",
    "def attend(t):\n    return 0.9 * previous(t, 2) + 0.1 * current(t)\n",
]


def full_plan(lm) -> SurrogatePlan:
    pieces = vocabulary_pieces(lm.tokenizer)
    heads = {}
    for i, h in enumerate(HeadRef(l, h) for l in range(lm.n_layers) for h in range(lm.n_heads)):
        heads[str(h)] = compile_source(PROGRAMS[(i * 3) % len(PROGRAMS)], pieces, lm.fingerprint, name=str(h),
                                       model_id=lm.name, strict=True)
    return SurrogatePlan(lm.name, lm.fingerprint, heads)


def cache_bytes_per_token(lm, ids: torch.Tensor) -> float:
    """Bytes of the key and value tensors in the cache the base model returns, per token."""
    with torch.no_grad():
        cache = lm.model(input_ids=ids, use_cache=True).past_key_values
    total = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    return total / ids.shape[1]


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("whole_groups", [False, True])
def test_select_writes_a_plan_with_only_the_chosen_heads(tiny_dir, tmp_path, whole_groups):
    lm = load_model(tiny_dir)
    full = tmp_path / "full.safetensors"
    save_plan(full_plan(lm), full)
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(f"{p} ({i})" for i, p in enumerate(PARAGRAPHS * 3)))
    out = tmp_path / "chosen.safetensors"
    args = ["select", tiny_dir, "--surrogates", str(full), "--fraction", "0.5", "--text", str(corpus),
            "--out", str(out), "--quiet", "--measure-texts", "3", "--rounds", "2"]
    assert main(args + (["--whole-groups"] if whole_groups else [])) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    plan = load_plan(out)
    chosen = [HeadRef.parse(k) for k in plan.heads]
    assert [h["head"] for h in report["heads"]] == list(plan.heads) and len(chosen) == 4
    whole = load_plan(full)
    for k, ch in plan.heads.items():
        assert ch.source == whole.heads[k].source and (ch.tables == whole.heads[k].tables).all()
    groups = kv_groups(chosen, lm.n_heads, lm.n_kv_heads)
    if whole_groups:  # every chosen head's group is complete
        assert sum(len(g.heads) for g in groups) == len(chosen)
    ids = torch.from_numpy(Tokens.from_text(lm.tokenizer, PARAGRAPHS[0]).ids)[None]
    base = cache_bytes_per_token(lm, ids)
    kv = report["kv_cache"]
    assert kv["base_bytes_per_token"] == base and kv["whole_groups_replaced"] == len(groups)
    assert kv["saved_bytes_per_token"] == len(groups) * base / (lm.n_layers * lm.n_kv_heads)
    as_is = logits(from_pretrained(tiny_dir, surrogates=str(out)), ids)
    picked = logits(from_pretrained(tiny_dir, surrogates=str(full), heads=[str(h) for h in chosen]), ids)
    assert torch.equal(as_is, picked)
    assert (as_is - logits(lm.model, ids)).abs().max() > 1e-4  # the plan is in use


def test_select_refuses_to_overwrite_its_input_and_a_plan_without_whole_groups(tiny_llama_dir, tmp_path, capsys):
    lm = load_model(tiny_llama_dir)
    pieces = vocabulary_pieces(lm.tokenizer)
    one = {"L0.H0": compile_source(PROGRAMS[0], pieces, lm.fingerprint, name="L0.H0", model_id=lm.name)}
    path = tmp_path / "p.safetensors"
    save_plan(SurrogatePlan(lm.name, lm.fingerprint, one), path)
    assert main(["select", tiny_llama_dir, "--surrogates", str(path), "--out", str(path)]) == 1
    assert "--out" in capsys.readouterr().err
    out = tmp_path / "o.safetensors"
    rc = main(["select", tiny_llama_dir, "--surrogates", str(path), "--out", str(out), "--whole-groups",
               "--quiet", "--text", "stories", "--max-texts", "4"])
    assert rc == 1 and "no KV group" in capsys.readouterr().err and not out.exists()


def test_group_ranking_chooses_the_groups_that_cost_least(tiny_llama_dir):
    lm = load_model(tiny_llama_dir)
    toks = [Tokens.from_text(lm.tokenizer, t) for t in PARAGRAPHS]
    exact_heads = [HeadRef(0, 0), HeadRef(0, 1), HeadRef(1, 2), HeadRef(1, 3)]
    fns = dict(pattern_heads(capture(lm, toks, heads=exact_heads, progress=False)))
    g = torch.Generator().manual_seed(0)
    for h in (HeadRef(0, 2), HeadRef(0, 3), HeadRef(1, 0), HeadRef(1, 1)):
        fns[h] = MeanHead(20 * torch.randn(lm.head_dim, generator=g))
    texts = [t.ids for t in toks]
    sub = [t[:128] for t in texts[:4]]
    base = token_loss(lm.model, sub, lm.tokenizer).mean
    brute = {}
    for grp in kv_groups(fns, lm.n_heads, lm.n_kv_heads):  # each group alone, measured the plain way
        with apply_plan(lm.model, {h: fns[h] for h in grp.heads}):
            brute[grp] = token_loss(lm.model, sub, lm.tokenizer).mean - base
    assert len(brute) == 4
    r = rank_groups(lm, fns, texts, budget=2, n_measure=4, measure_texts=4)
    assert set(r.groups) == set(sorted(brute, key=brute.get)[:2])
    assert all(abs(r.measured[grp] - brute[grp]) < 1e-6 for grp in brute)
    assert all(abs(brute[grp]) < 1e-5 for grp in brute if set(grp.heads) <= set(exact_heads))
    assert set(r.heads) == {h for grp in r.groups for h in grp.heads}
    est = rank_groups(lm, fns, texts, budget=2, n_measure=1, measure_texts=4)  # candidates by the estimate
    assert len(est.groups) == 2 and len(est.measured) == 2 and len(est.estimate) == 4
    assert all(abs(est.measured[grp] - brute[grp]) < 1e-6 for grp in est.measured)
    assert all(abs(v) < 1e-6 for grp, v in est.estimate.items() if set(grp.heads) <= set(exact_heads))
    assert all(abs(v) > 1e-3 for grp, v in est.estimate.items() if not set(grp.heads) <= set(exact_heads))
    assert cache_saving(lm, exact_heads).groups == 2
