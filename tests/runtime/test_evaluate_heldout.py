"""The evaluation a reviewer trusts: test text held out from every choice, baselines at the heads of
their own choosing, QA intervals checked against values computed elsewhere."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from headcode.cli import main
from headcode.runtime.evaluation.driver import run_evaluation
from headcode.runtime.evaluation.heldout import eval_texts, overlapping, read_test_text
from headcode.runtime.evaluation.intervals import paired_difference, wilson
from headcode.runtime.evaluation.settings import EvalSettings, RankSettings
from headcode.runtime.model.capture import capture
from headcode.runtime.model.heads import HeadRef
from headcode.runtime.model.loading import load_model
from headcode.runtime.surrogate.replacements import FirstTokenHead, MeanHead, pattern_heads
from headcode.runtime.text.corpus import load_corpus, sentences
from tests.runtime.test_evaluate import PARAGRAPHS, _split_texts


# intervals ---------------------------------------------------------------------------------
@pytest.mark.parametrize("k, n, low, high", [
    (81, 263, 0.2553, 0.3662),   # Newcombe (1998), Stat. Med. 17:857, table I, method 3 (Wilson score)
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1611),
])
def test_wilson_interval_matches_published_values(k, n, low, high):
    iv = wilson([1.0] * k + [0.0] * (n - k))
    assert iv.value == pytest.approx(k / n)
    assert iv.low == pytest.approx(low, abs=6e-5) and iv.high == pytest.approx(high, abs=6e-5)


def test_paired_bootstrap_agrees_with_the_normal_approximation():
    # 400 questions: the variant alone right on 60, the base alone right on 20, both on 200.
    base = np.array([0] * 60 + [1] * 20 + [1] * 200 + [0] * 120, float)
    var = np.array([1] * 60 + [0] * 20 + [1] * 200 + [0] * 120, float)
    d = paired_difference(var, base)
    # by hand: differences are +1 (60), -1 (20), 0 (320); mean 0.1, sd sqrt(0.2 - 0.01)
    se = math.sqrt((80 / 400 - 0.1 ** 2) / 400)
    assert d.value == pytest.approx(0.1)
    assert d.low == pytest.approx(0.1 - 1.96 * se, abs=0.006) and d.high == pytest.approx(0.1 + 1.96 * se, abs=0.006)
    # pairing matters: two variants that differ on 4 of 400 questions have a far narrower interval
    # for their difference than either accuracy's own interval
    near = var.copy()
    near[[0, 1, 2, 3]] = 0.0
    dn, w = paired_difference(near, var), wilson(var)
    assert dn.high - dn.low < 0.2 * (w.high - w.low)
    same = paired_difference(var, var)
    assert (same.value, same.low, same.high) == (0.0, 0.0, 0.0)


# held-out text -----------------------------------------------------------------------------
def _corpus_file(tmp_path, n=24):
    path = tmp_path / "c.txt"
    path.write_text("\n\n".join(f"{p} ({i})" for i, p in enumerate(PARAGRAPHS * (n // len(PARAGRAPHS)))))
    return path


def test_test_text_is_all_test_and_never_in_select(tiny_gpt2_dir, tmp_path):
    lm = load_model(tiny_gpt2_dir)
    corpus = load_corpus(str(_corpus_file(tmp_path)))
    chosen_from = corpus.split("select")[:2] + corpus.split("fit")[:1]
    long = " ".join(PARAGRAPHS) * 3  # longer than the context: cut into windows, not dropped
    test_file = tmp_path / "t.txt"
    test_file.write_text("\n\n".join(chosen_from + ["A new paragraph nobody chose on.", long]))
    et = eval_texts(corpus, lm.tokenizer, max_tokens=64, extra=[read_test_text(str(test_file))])
    extra = et.tests[1]
    # all of the file is test: every token of every paragraph, in windows of 64
    whole = [len(lm.tokenizer(p)["input_ids"]) for p in read_test_text(str(test_file)).texts]
    assert extra.n_tokens == sum(whole) and max(len(t) for t in extra.texts) == 64
    assert et.dropped_for_overlap == 3
    # no select (or fit) text is any test text, nor a window of one
    test_rows = {t.tobytes() for t in extra.texts}
    assert not any(t.tobytes() in test_rows for t in et.select + et.fit)
    select_strings = [lm.tokenizer.decode(t) for t in et.select]
    assert not any(overlapping(select_strings, chosen_from))
    assert len(et.select) == len(corpus.split("select")) - 2


def test_test_text_does_not_move_the_choice_of_heads(tiny_gpt2_dir, tmp_path):
    from headcode.compiler.export import save_plan
    from tests.runtime.test_surrogate import make_plan

    lm = load_model(tiny_gpt2_dir)
    save_plan(make_plan(lm), tmp_path / "s.safetensors")
    corpus = _corpus_file(tmp_path)
    reports = []
    for i, text in enumerate(["The dog and the cat ran home.", "Lily read a book about a brave dog."]):
        (tmp_path / f"t{i}.txt").write_text(text + "\n\nThen it rained all day.")
        out = tmp_path / f"e{i}.json"
        assert main(["evaluate", tiny_gpt2_dir, "--surrogates", str(tmp_path / "s.safetensors"), "--fraction", "0.25",
                     "--text", str(corpus), "--test-text", str(tmp_path / f"t{i}.txt"), "--out", str(out), "--quiet",
                     "--measure-texts", "2", "--baselines", "mean_ablation", "--own-choice", "mean_ablation"]) == 0
        reports.append(json.loads(out.read_text()))
        assert not (tmp_path / f"e{i}.json.state.json").exists()  # kept only until the report is written
    a, b = reports
    assert [h["head"] for h in a["heads_replaced"]] == [h["head"] for h in b["heads_replaced"]]
    assert a["own_choice"] == b["own_choice"]
    assert list(a["test_sets"]) == [str(corpus), "t0.txt"]
    assert a["test_sets"]["t0.txt"]["source"].startswith("all of")
    assert a["test_sets"]["t0.txt"]["base"] != b["test_sets"]["t1.txt"]["base"]


@pytest.mark.parametrize("argv, needle", [
    (["--test-text", "MISSING"], "no such file"),
    (["--test-text", "EMPTY"], "the file has no text"),
    (["--own-choice", "mean"], "unknown baseline 'mean'"),
])
def test_bad_test_text_is_one_line_and_nonzero(argv, needle, tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("\n \n\n")
    subs = {"MISSING": str(tmp_path / "nope.txt"), "EMPTY": str(tmp_path / "empty.txt")}
    out = tmp_path / "e.json"
    rc = main(["evaluate", "no/model/needed", "--surrogates", "x.safetensors", "--out", str(out)]
              + [subs.get(a, a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and needle in err and len(err.splitlines()) == 1 and not out.exists()


def test_lambada_test_passages_are_disjoint_from_select():
    lam = load_corpus("lambada")
    select, test = lam.split("select"), lam.split("test")
    assert len(test) > 1000 and not set(select) & set(test)
    # LAMBADA has overlapping passages of one novel: none may share a sentence across the two
    long_sentences = lambda texts: {s for t in texts for s in sentences(t) if len(s) >= 40}  # noqa: E731
    assert not long_sentences(select) & long_sentences(test)


def test_lambada_test_split_reaches_20k_tokens(tiny_tokenizer):
    et = eval_texts(load_corpus("lambada"), tiny_tokenizer, max_texts=5, test_tokens=20_000)
    assert 20_000 <= et.tests[0].n_predicted < 20_000 + 256 and len(et.select) == 5


# baselines at their own heads ---------------------------------------------------------------
def _fit_with_dead_kv_head(lm, toks) -> None:
    """Zero KV head 1 (query heads 2, 3 then always output zero) and fit the rest to the texts (so
    that taking away what a live head does raises the loss)."""
    from headcode.runtime.model.batching import right_pad

    D = lm.head_dim
    layers = lm.model.model.layers
    with torch.no_grad():
        for layer in layers:
            layer.self_attn.v_proj.weight[D:] = 0.0
    torch.manual_seed(0)
    opt = torch.optim.Adam(lm.model.parameters(), lr=3e-3)
    ids, mask = right_pad([t.ids for t in toks], 0)
    labels = ids.masked_fill(mask == 0, -100)
    for _ in range(60):
        opt.zero_grad()
        lm.model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        for layer in layers:
            layer.self_attn.v_proj.weight.grad[D:] = 0.0
        opt.step()
    lm.model.eval()


def test_mean_ablation_chooses_its_own_heads(tiny_llama_dir):
    """Mean-ablation is exact at the dead heads 2 and 3; the programs are exact at heads 0 and
    harmful elsewhere. Each criterion must find its own heads."""
    lm = load_model(tiny_llama_dir)
    toks, splits, texts = _split_texts(lm)
    _fit_with_dead_kv_head(lm, toks)
    exact = pattern_heads(capture(lm, toks, heads=[HeadRef(0, 0), HeadRef(1, 0)], splits=splits, progress=False))
    g = torch.Generator().manual_seed(0)
    harmful = {HeadRef(l, h): MeanHead(5 * torch.randn(lm.head_dim, generator=g)) for l in (0, 1) for h in (1, 2, 3)}
    s = EvalSettings(fraction=0.25, curve=(0.0, 0.25), baselines=("mean_ablation",), own_choice=("mean_ablation",),
                     rank=RankSettings(measure_factor=4.0, measure_texts=4, rounds=1), progress=False)
    r = run_evaluation(lm, {**exact, **harmful}, texts, s)
    ours = {h["head"] for h in r["heads_replaced"]}
    own = set(r["own_choice"]["mean_ablation"]["heads"])
    assert ours == {"L0.H0", "L1.H0"}
    assert len(own) == 2 and own <= {"L0.H2", "L0.H3", "L1.H2", "L1.H3"}
    ppl = r["perplexity"]
    assert math.isclose(ppl["mean_ablation_own"], ppl["base"], rel_tol=1e-5)
    assert math.isclose(ppl["surrogate"], ppl["base"], rel_tol=1e-5)
    assert ppl["mean_ablation"] > 1.01 * ppl["base"]


# resuming ----------------------------------------------------------------------------------
def test_an_interrupted_evaluation_resumes_from_its_state(tiny_gpt2_dir, tmp_path, monkeypatch):
    import headcode.runtime.evaluation.driver as er
    import headcode.runtime.evaluation.qa as eqa
    from headcode.runtime.evaluation.state import EvalState

    lm = load_model(tiny_gpt2_dir)
    _, _, texts = _split_texts(lm)
    g = torch.Generator().manual_seed(1)  # stand-ins for programs that run on any text (QA too)
    heads = {HeadRef(l, h): FirstTokenHead() if h % 2 else MeanHead(torch.randn(lm.head_dim, generator=g))
             for l in range(2) for h in range(4)}
    s = EvalSettings(fraction=0.5, curve=(0.0, 0.25, 0.5), baselines=("mean_ablation",), own_choice=("uniform",),
                     qa_tasks=("arc_easy",), qa_limit=3, rank=RankSettings(measure_texts=2), progress=False)
    path = tmp_path / "e.json.state.json"
    first = run_evaluation(lm, heads, texts, s, state=EvalState(path, "k"))

    def fail(*a, **k):
        raise AssertionError("recomputed a finished piece")

    with monkeypatch.context() as m:
        for mod, name in ((er, "rank_heads"), (er, "token_loss"), (eqa, "choice_logprobs")):
            m.setattr(mod, name, fail)
        again = run_evaluation(lm, heads, texts, s, state=EvalState(path, "k"))
        for key in ("heads_replaced", "own_choice", "test_sets", "qa", "qa_at"):
            assert again[key] == first[key], key
        with pytest.raises(AssertionError, match="recomputed"):  # another key: nothing reused
            run_evaluation(lm, heads, texts, s, state=EvalState(path, "other"))
