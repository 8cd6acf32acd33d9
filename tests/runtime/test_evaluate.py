"""Evaluation: perplexity with surrogates and baselines, head selection by loss, QA, the command."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from headcode.cli import main
from headcode.compiler.tokens import Tokens
from headcode.runtime.evaluation.driver import run_evaluation
from headcode.runtime.evaluation.measures import (
    Question,
    choice_logprobs,
    head_output_means,
    qa_accuracy,
    token_loss,
)
from headcode.runtime.evaluation.selection import rank_heads
from headcode.runtime.evaluation.settings import EvalSettings, RankSettings
from headcode.runtime.model.capture import capture
from headcode.runtime.model.heads import HeadRef
from headcode.runtime.model.loading import load_model
from headcode.runtime.surrogate.replacements import MeanHead, pattern_heads

PARAGRAPHS = [
    "Once upon a time, there was a little cat named Tom. Tom liked to play in the park.",
    "One day, Tom saw a big red ball! He ran to the ball and kicked it.",
    "\"Look at me,\" said Tom. His friend Lily laughed.",
    "They played until the sun went down. The next day, it rained.",
    "Tom and Lily stayed at home and read a book about a brave dog.",
    "The brave dog ran to the park. He saw a big red ball and a little cat.",
    "Lily liked the book. She read it again and again until the sun went down.",
    "One day, it rained in the park. Tom and the dog stayed at home.",
]


def _split_texts(lm):
    toks = [Tokens.from_text(lm.tokenizer, t) for t in PARAGRAPHS]
    splits = ("fit", "select", "test", "fit", "select", "test", "fit", "test")
    texts = {s: [t.ids for t, sp in zip(toks, splits) if sp == s] for s in ("fit", "select", "test")}
    return toks, splits, texts


def test_evaluate_with_exact_patterns_equals_base(tiny_llama_dir, tmp_path):
    lm = load_model(tiny_llama_dir)
    toks, splits, texts = _split_texts(lm)
    heads = pattern_heads(capture(lm, toks, splits=splits, progress=False))
    plot = str(tmp_path / "curve.png")
    s = EvalSettings(fraction=0.5, curve=(0.0, 0.25, 0.5), rank=RankSettings(measure_factor=1.0, measure_texts=2), progress=False,
                     own_choice=("mean_ablation", "first_token", "uniform"))
    r = run_evaluation(lm, heads, texts, s, programs={h: "exact" for h in heads}, plot=plot)
    json.dumps(r)  # JSON-ready
    for key in ("model", "total_heads", "fraction", "heads_replaced", "perplexity", "perplexity_increase",
                "curve", "qa", "selection", "plot"):
        assert key in r
    assert r["total_heads"] == 8 and len(r["heads_replaced"]) == 4
    baselines = {"mean_ablation", "first_token", "uniform"}
    assert set(r["perplexity"]) == {"base", "surrogate"} | baselines | {b + "_own" for b in baselines}
    assert math.isclose(r["perplexity"]["surrogate"], r["perplexity"]["base"], rel_tol=1e-5)
    for row in r["curve"]:
        assert math.isclose(row["surrogate"], r["perplexity"]["base"], rel_tol=1e-5)
    assert not math.isclose(r["perplexity"]["mean_ablation"], r["perplexity"]["base"], rel_tol=1e-4)
    assert [c["k"] for c in r["curve"]] == [0, 2, 4]
    assert r["heads_replaced"][0]["program"] == "exact"
    assert (tmp_path / "curve.png").stat().st_size > 1000


@pytest.mark.parametrize("n_measure, rounds", [(1, 1), (8, 1), (3, 2)])
def test_ranking_puts_harmless_heads_first(tiny_gpt2_dir, n_measure, rounds):
    lm = load_model(tiny_gpt2_dir)
    toks, splits, texts = _split_texts(lm)
    exact = pattern_heads(capture(lm, toks, heads=[HeadRef(0, 1), HeadRef(1, 2)], progress=False))
    g = torch.Generator().manual_seed(0)
    harmful = {h: MeanHead(5 * torch.randn(16, generator=g)) for h in (HeadRef(0, 0), HeadRef(1, 0))}
    r = rank_heads(lm, {**exact, **harmful}, texts["select"], n_measure=n_measure, measure_texts=4,
                   budget=min(n_measure, 2), rounds=rounds)
    assert set(r.heads[:2]) == {HeadRef(0, 1), HeadRef(1, 2)}
    assert len(r.heads) == 4 and min(n_measure, 2) <= len(r.measured) <= min(n_measure, 4)
    if n_measure == 1:  # the first-order estimate already separates them
        assert max(r.estimate[h] for h in exact) < min(r.estimate[h] for h in harmful)


def test_head_means_and_losses(tiny_llama_dir):
    lm = load_model(tiny_llama_dir)
    _, _, texts = _split_texts(lm)
    means = head_output_means(lm, texts["fit"])
    assert means.shape == (2, 4, 16) and means.abs().sum() > 0
    loss = token_loss(lm.model, texts["test"], lm.tokenizer, batch_size=2)
    assert loss.n_tokens == sum(len(t) - 1 for t in texts["test"])
    one = token_loss(lm.model, texts["test"][:1], lm.tokenizer)
    with torch.no_grad():
        ids = torch.from_numpy(texts["test"][0])[None]
        ref = torch.nn.functional.cross_entropy(lm.model(ids).logits[0, :-1], ids[0, 1:]).item()
    assert math.isclose(one.mean, ref, rel_tol=1e-5)


def test_choice_logprobs_and_accuracy(tiny_llama_dir):
    lm = load_model(tiny_llama_dir)
    enc = lambda s, sp=False: np.asarray(lm.tokenizer(s, add_special_tokens=sp)["input_ids"])  # noqa: E731
    q = Question("t", 0, enc("Tom saw a big"), (enc(" red ball"), enc(" dog")), (9, 4), gold=1)
    (scores,) = choice_logprobs(lm.model, [q], lm.tokenizer)
    seq = torch.from_numpy(np.concatenate([q.context, q.continuations[0]]))[None]
    with torch.no_grad():
        lp = torch.log_softmax(lm.model(seq).logits[0, :-1], -1)
    n = len(q.context)
    ref = sum(lp[i - 1, seq[0, i]].item() for i in range(n, seq.shape[1]))
    assert math.isclose(scores[0], ref, rel_tol=1e-5)
    acc = qa_accuracy([q, q], [np.array([0.0, -1.0]), np.array([-9.0, -1.0])])
    assert acc["acc"] == 0.5 and acc["n"] == 2


def test_evaluate_command_writes_report(tiny_gpt2_dir, tmp_path):
    from headcode.compiler.export import load_plan, save_plan
    from tests.runtime.test_surrogate import make_plan

    lm = load_model(tiny_gpt2_dir)
    save_plan(make_plan(lm), tmp_path / "s.safetensors")
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(f"{p} ({i})" for i, p in enumerate(PARAGRAPHS * 3)))
    out = tmp_path / "eval.json"
    rc = main(["evaluate", tiny_gpt2_dir, "--surrogates", str(tmp_path / "s.safetensors"), "--fraction", "0.25",
               "--text", str(corpus), "--qa", "arc_easy", "--qa-limit", "3", "--out", str(out), "--quiet",
               "--measure-texts", "2", "--save-plan", str(tmp_path / "chosen.safetensors")])
    assert rc == 0
    r = json.loads(out.read_text())
    assert len(r["heads_replaced"]) == 2 and r["qa"]["arc_easy"]["n"] == 3
    chosen = load_plan(tmp_path / "chosen.safetensors")
    assert list(chosen.heads) == [h["head"] for h in r["heads_replaced"]]
    assert set(r["qa"]["arc_easy"]) == {"n", "base", "surrogate", "mean_ablation", "mean_ablation_own"}
    sur = r["qa"]["arc_easy"]["surrogate"]
    assert sur["acc_ci95"][0] <= sur["acc"] <= sur["acc_ci95"][1]
    assert sur["acc_diff_ci95"][0] <= sur["acc_diff"] <= sur["acc_diff_ci95"][1]
    assert "Wilson" in r["qa_interval"] and "paired bootstrap" in r["qa_interval"]
    assert all(h["program"].startswith("def attend") for h in r["heads_replaced"])
    assert r["texts"]["test"] > 0 and (tmp_path / "eval.png").is_file()


def test_demo_runs_the_steps_as_functions_and_prints_a_table(tiny_gpt2_dir, tmp_path):
    from headcode.compiler.export import load_plan
    from headcode.pipeline.demo import DemoSettings, run_demo
    from headcode.pipeline.evaluate import summary

    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(f"{p} ({i})" for i, p in enumerate(PARAGRAPHS * 3)))
    res = run_demo(DemoSettings(out=tmp_path / "demo", model=tiny_gpt2_dir, corpus=str(corpus), max_texts=3,
                                calibrate_steps=4, progress=False))
    assert res.explain.heads == 8 and res.compile.compiled + res.compile.refused == 8
    assert set(load_plan(res.compile.out).heads) == {h.head for h in res.compile.heads if h.compiled}
    assert json.loads(res.evaluate.out.read_text()) == res.evaluate.report  # the report written is the one returned
    assert all(p.exists() for p in res.outputs) and set(res.seconds) == {"load", "explain", "compile", "evaluate"}
    table = summary(res.evaluate.report)  # what `headcode demo` prints: every variant at every share
    test = res.evaluate.report["test_sets"][next(iter(res.evaluate.report["test_sets"]))]
    for row in test["curve"]:
        assert f"{row['surrogate']:.2f}" in table and f"{row['mean_ablation']:.2f}" in table
        assert f"{row['calibrated']:.2f}" in table and f"{row['optimal_ablation']:.2f}" in table
    cal = load_plan(res.outputs[-1])  # the demo calibrates its plan: what it saves is what runs
    assert res.outputs[-1].name == "calibrated.safetensors" and all(h.surrogate for h in cal.heads.values())


def test_evaluate_reports_optimal_ablation_at_the_surrogates_heads(tiny_gpt2_dir, tmp_path):
    """Issue 19: optimal ablation (a constant per head fitted on KL to the base model) beside
    mean-ablation at the same heads; it may not be asked for at its own heads (one line, exit 1)."""
    from headcode.compiler.export import save_plan
    from tests.runtime.test_surrogate import make_plan

    lm = load_model(tiny_gpt2_dir)
    save_plan(make_plan(lm), tmp_path / "s.safetensors")
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(f"{p} ({i})" for i, p in enumerate(PARAGRAPHS * 3)))
    out = tmp_path / "eval.json"
    args = ["evaluate", tiny_gpt2_dir, "--surrogates", str(tmp_path / "s.safetensors"), "--fraction", "0.25",
            "--text", str(corpus), "--out", str(out), "--quiet", "--measure-texts", "2",
            "--baselines", "mean_ablation,optimal_ablation", "--own-choice", "none"]
    assert main(args) == 0
    r = json.loads(out.read_text())
    ppl = r["perplexity"]
    assert {"optimal_ablation", "mean_ablation"} <= set(ppl) and ppl["optimal_ablation"] > 1
    assert main(args[:-2] + ["--own-choice", "uniform,optimal"]) == 1


@pytest.mark.parametrize("warm_choice", [False, True], ids=["programs-choose", "warm-choice"])
def test_evaluate_calibrate_reports_every_variant_and_saves_what_it_measured(tiny_gpt2_dir, tmp_path, warm_choice):
    """``--calibrate``: heads chosen with the programs as explained (or with warm constants, and then
    the programs as explained beside them); at each share the calibrated surrogates, optimal
    ablation at the same heads and at its own; the plan saved at the headline share is the
    calibrated one, and gives the perplexity reported for it."""
    from headcode.compiler.export import load_plan, save_plan
    from headcode.runtime.evaluation.heldout import eval_texts
    from headcode.runtime.surrogate.apply import surrogates_applied
    from headcode.runtime.text.corpus import load_corpus
    from tests.runtime.test_surrogate import make_plan

    lm = load_model(tiny_gpt2_dir)
    save_plan(make_plan(lm), tmp_path / "s.safetensors")
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(f"{p} ({i})" for i, p in enumerate(PARAGRAPHS * 3)))
    out, saved = tmp_path / "eval.json", tmp_path / "cal.safetensors"
    assert main(["evaluate", tiny_gpt2_dir, "--surrogates", str(tmp_path / "s.safetensors"), "--fraction", "0.25",
                 "--text", str(corpus), "--out", str(out), "--quiet", "--measure-texts", "2", "--curve", "0,0.25",
                 "--baselines", "mean_ablation", "--calibrate", "--calibrate-steps", "4",
                 "--save-plan", str(saved), "--qa", "arc_easy", "--qa-limit", "3", "--qa-baselines", "none"]
                + ["--warm-choice"] * warm_choice) == 0
    r = json.loads(out.read_text())
    row = r["curve"][-1]
    want = {"surrogate", "calibrated", "mean_ablation", "mean_ablation_own", "optimal_ablation",
            "optimal_ablation_own"} | ({"explained"} if warm_choice else set())
    assert want <= set(row) and all(row[k] > 1 for k in want)
    assert ("explained" in row) == warm_choice  # without the warm choice, the surrogates as chosen are the programs
    assert r["calibration"]["fits"]["calibrated@2"]["steps"] == 4
    qa = r["qa"]["arc_easy"]  # QA scores the calibrated surrogates too, with their paired difference
    assert {"surrogate", "calibrated"} | ({"explained"} if warm_choice else set()) <= set(qa)
    assert qa["n"] == 3 and qa["calibrated"].keys() == qa["surrogate"].keys()
    plan = load_plan(saved)
    assert list(plan.heads) == [h["head"] for h in r["heads_replaced"]]
    assert all("jointly" in h.surrogate.fitted for h in plan.heads.values())
    test = eval_texts(load_corpus(str(corpus), "paragraph"), lm.tokenizer, None, 256).tests[0].texts
    with surrogates_applied(lm, plan):
        ppl = token_loss(lm.model, test, lm.tokenizer).perplexity
    assert ppl == pytest.approx(row["calibrated"], rel=1e-6)
