"""Choose the heads to replace and write a plan with only them.

  headcode select --surrogates out/explain/surrogates.safetensors --fraction 0.25 --out out/select/plan.safetensors
  headcode select --surrogates s.safetensors --fraction 0.5 --whole-groups --out plan50.safetensors

Heads are chosen on the corpus's select split by what replacing them does to the loss (a
first-order estimate for every head, then the best candidates measured one by one, in rounds on
top of the heads already chosen). --whole-groups chooses only whole KV groups (every query head
sharing a key/value head), so that the KV cache keeps nothing for them; the KV-cache bytes per
token saved are printed and reported. --cluster ray[:ADDRESS] measures the candidates on Ray
(one task per candidate; the same heads as a local run). The plan written holds only the chosen heads, so
`headcode serve`, `headcode bench --surrogates` and `headcode.from_pretrained` use it as is.
A JSON report (heads, measured losses, cache saving) goes next to it (--report to choose).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from headcode.commands._options import add_cluster, add_model, add_rank, rank_from
from headcode.files import write_json
from headcode.kernels.program_head import backends

HELP = "choose the heads to replace (optionally whole KV groups) and write a plan with only them"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from headcode.runtime.evaluation.select_plan import SelectSettings

    d = SelectSettings()
    add_model(p)
    p.add_argument("--surrogates", required=True, help="the plan to choose from (from `headcode compile`)")
    p.add_argument("--fraction", type=float, default=d.fraction, help=f"share of all heads to replace (default {d.fraction})")
    p.add_argument("--whole-groups", action="store_true",
                   help="replace whole KV groups only (the KV cache shrinks); the budget rounds to groups")
    p.add_argument("--text", default="stories", help="corpus: stories | lambada | FILE.txt | hf:<dataset>")
    p.add_argument("--unit", default="paragraph", choices=["sentence", "paragraph"])
    p.add_argument("--max-texts", type=int, default=None, help="at most this many texts per split")
    p.add_argument("--max-tokens", type=int, default=256, help="truncate each text to this many tokens")
    add_rank(p, "heads (groups)", d.rank)
    p.add_argument("--backend", default=backends.DEFAULT, choices=backends.names(),
                   help="; ".join(f"{b.name}: {b.summary}" for b in backends.BACKENDS.values()))
    p.add_argument("--warm", action="store_true",
                   help="choose with each head's warm constant (its mean residual on the fit split) added; "
                        "the plan written keeps the constants (calibrate it next)")
    p.add_argument("--out", required=True, help="the plan to write (.safetensors), only the chosen heads")
    p.add_argument("--report", default=None, help="report file (default: next to --out, .json)")
    add_cluster(p, "the candidates' measured losses")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def summary(report: dict, out: str) -> str:
    kv, loss = report["kv_cache"], report["select_loss"]
    groups = f" as {len(report['groups'])} whole KV groups" if report["whole_groups"] else ""
    return (f"{report['model']}: chose {len(report['heads'])} of {report['total_heads']} heads{groups}; "
            f"select-split loss {loss['base']:.4f} -> {loss['chosen']:.4f} nats/token ({loss['increase']:+.4f}); "
            f"KV cache {kv['saved_bytes_per_token']} of {kv['base_bytes_per_token']} bytes/token saved "
            f"({100 * kv['saved_share']:.1f}%, {kv['whole_groups_replaced']} whole groups)\nplan: {out}")


def run(args: argparse.Namespace) -> int:
    from headcode.cluster.evaluate import executor
    from headcode.compiler.export import save_plan
    from headcode.errors import HeadcodeError
    from headcode.runtime.evaluation.select_plan import SelectSettings, select_plan
    from headcode.runtime.model.loading import load_model
    from headcode.runtime.surrogate.apply import plan_for_model
    from headcode.runtime.text.corpus import load_corpus

    if not 0.0 < args.fraction <= 1.0:
        raise HeadcodeError(f"--fraction {args.fraction} is not in (0, 1]: give the share of all heads")
    if Path(args.out).resolve() == Path(args.surrogates).resolve():
        raise HeadcodeError("--out is the plan being chosen from: write the chosen heads to another file")
    ex = executor(args.cluster)  # a bad --cluster (or no Ray) is said before the model loads
    lm = load_model(args.model)
    plan = plan_for_model(args.surrogates, lm)
    splits = load_corpus(args.text, args.unit).take(args.max_texts).ids_by_split(lm.tokenizer, args.max_tokens)
    select = splits["select"]
    settings = SelectSettings(fraction=args.fraction, whole_groups=args.whole_groups, rank=rank_from(args),
                              backend=args.backend, warm=args.warm, progress=not args.quiet,
                              executor=ex)
    sel = select_plan(lm, plan, select, settings, splits.get("fit", ()))
    report = {**sel.report, "surrogates": str(args.surrogates), "corpus": args.text, "unit": args.unit,
              "plan": str(args.out)}
    save_plan(sel.plan, args.out)
    write_json(args.report or Path(args.out).with_suffix(".json"), report)
    print(summary(report, args.out))
    return 0
