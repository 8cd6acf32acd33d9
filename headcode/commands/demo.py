"""The whole flow on one model: explain heads -> compile the programs -> evaluate the model
with them in place, then a short summary table and where the results are.

  headcode demo --out out/demo                       # the default model and the bundled stories
  headcode demo --out out/demo --heads L0-9 --max-texts 20 --qa arc_easy

One progress bar per step; the outputs land in DIR/explain/ (programs, report, plan) and
DIR/eval.json (with its plot). The default workload (40 texts per split, no QA) is sized to
finish in about 12 minutes on two quiet CPU cores (setup included). Explain is resumable, so running the demo
again continues an interrupted run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from headcode.commands._options import add_model

HELP = "explain -> compile -> evaluate on a model and the bundled stories, with a summary"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model(p)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--corpus", default="stories", help="stories | lambada | FILE.txt | hf:<dataset>")
    p.add_argument("--heads", default=None, help="heads to explain: all (default), or e.g. L0-9,L12.H3")
    p.add_argument("--max-texts", type=int, default=40, help="texts per split (default 40)")
    p.add_argument("--fraction", type=float, default=0.25, help="share of all heads to replace (default 0.25)")
    p.add_argument("--qa", default=None, help="comma list of QA tasks (default none: faster)")
    p.add_argument("--qa-limit", type=int, default=100)
    p.add_argument("--no-calibrate", action="store_true",
                   help="evaluate the programs as explained only (default: calibrate the chosen heads for the model "
                        "and compare with optimal ablation; DIR/calibrated.safetensors is the plan to serve)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from headcode.pipeline.demo import DemoSettings, run_demo
    from headcode.pipeline.evaluate import summary

    qa = tuple(t.strip() for t in args.qa.split(",") if t.strip()) if args.qa else ()
    res = run_demo(DemoSettings(out=Path(args.out), model=args.model, corpus=args.corpus, heads=args.heads,
                                max_texts=args.max_texts, fraction=args.fraction, qa=qa, qa_limit=args.qa_limit,
                                calibrate=not args.no_calibrate, progress=not args.quiet))
    print()
    print(f"{res.explain.heads} heads explained (mean test IoU {res.explain.summary.get('mean_iou_test') or 0:.3f}, "
          f"median program size {res.explain.summary.get('median_size')}); {res.compile.compiled} compiled, "
          f"{res.compile.refused} refused")
    print(summary(res.evaluate.report))
    print("time: " + ", ".join(f"{k} {v:.0f}s" for k, v in res.seconds.items()))
    print(f"results in {args.out}:")
    for p in res.outputs:
        print(f"  {p}")
    return 0
