"""The whole flow on one model: explain heads -> compile the programs -> evaluate the model
with them in place, then a short summary table.

  headcode demo --out out/demo                       # the default model and the bundled stories
  headcode demo --out out/demo --heads L0-9 --max-texts 20 --qa arc_easy

Each step is the matching command (``headcode explain``, ``compile``, ``evaluate``) run with
the settings below; their outputs land in DIR/explain/ and DIR/eval.json. The default workload
(40 texts per split, no QA) is sized to finish in well under 15 minutes on two CPU cores.
Explain is resumable, so running the demo again continues an interrupted run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import time
from pathlib import Path

from headcode.errors import HeadcodeError

HELP = "explain -> compile -> evaluate on a model and the bundled stories, with a summary"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default="smollm2-135m", help="model spec (default: smollm2-135m)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--corpus", default="stories", help="stories | lambada | FILE.txt | hf:<dataset>")
    p.add_argument("--heads", default=None, help="heads to explain: all (default), or e.g. L0-9,L12.H3")
    p.add_argument("--max-texts", type=int, default=40, help="texts per split (default 40)")
    p.add_argument("--fraction", type=float, default=0.25, help="share of all heads to replace (default 0.25)")
    p.add_argument("--qa", default=None, help="comma list of QA tasks (default none: faster)")
    p.add_argument("--qa-limit", type=int, default=100)


def _step(name: str, argv: list[str]) -> None:
    """Run ``headcode <name> argv`` in-process; a missing or incompatible step is a clear error."""
    try:
        mod = importlib.import_module(f"headcode.commands.{name}")
    except ImportError as e:
        raise HeadcodeError(f"demo: the `{name}` step is not available in this install ({e}); "
                            f"run the steps that exist by hand (see `headcode --help`)") from e
    parser = argparse.ArgumentParser(prog=f"headcode {name}", add_help=False)
    try:
        mod.add_arguments(parser)
        args = parser.parse_args(argv)
    except (AttributeError, SystemExit) as e:
        raise HeadcodeError(f"demo: `headcode {name}` does not take the arguments the demo gives it "
                            f"({' '.join(argv)}); run it by hand") from e
    print(f"== headcode {name} {' '.join(argv)}", flush=True)
    rc = mod.run(args)
    if rc:
        raise HeadcodeError(f"demo: `headcode {name}` failed (exit {rc}); see its message above")


def summary_table(report: dict) -> str:
    """Perplexity per variant at each share of heads replaced, and QA accuracy."""
    variants = [k for k in ("surrogate", "mean_ablation", "first_token", "uniform") if k in report["curve"][0]]
    head = f"{'heads replaced':>16} " + " ".join(f"{v.replace('_', ' '):>14}" for v in variants)
    lines = [f"perplexity on held-out text (base {report['perplexity']['base']:.3f})", head]
    seen = set()
    for row in report["curve"]:
        if row["k"] in seen:  # fewer heads explained than the budget: the same row again
            continue
        seen.add(row["k"])
        lines.append(f"{row['k']:>6} ({100 * row['actual_fraction']:4.1f}%)  "
                     + " ".join(f"{row[v]:>14.3f}" for v in variants))
    for task, r in report.get("qa", {}).items():
        lines.append(f"{task} (n={r['n']}): " + ", ".join(
            f"{k} {100 * v['acc']:.1f}%" for k, v in r.items() if isinstance(v, dict)))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    explain_dir = out / "explain"
    t0 = time.time()
    argv = [args.model, "--corpus", args.corpus, "--out", str(explain_dir), "--max-texts", str(args.max_texts)]
    if args.heads:
        argv += ["--heads", args.heads]
    _step("explain", argv)
    t1 = time.time()
    _step("compile", [str(explain_dir), "--model", args.model])
    plan = explain_dir / "surrogates.safetensors"
    if not plan.is_file():
        raise HeadcodeError(f"demo: compile wrote no {plan}; see its messages above")
    t2 = time.time()
    report_path = out / "eval.json"
    argv = [args.model, "--surrogates", str(plan), "--fraction", str(args.fraction), "--text", args.corpus,
            "--max-texts", str(args.max_texts), "--out", str(report_path)]
    if args.qa:
        argv += ["--qa", args.qa, "--qa-limit", str(args.qa_limit)]
    _step("evaluate", argv)
    t3 = time.time()
    report = json.loads(report_path.read_text())
    print()
    print(summary_table(report))
    print(f"time: explain {t1 - t0:.0f}s, compile {t2 - t1:.0f}s, evaluate {t3 - t2:.0f}s; "
          f"outputs in {out} (explain/report.md, eval.json, eval.png)")
    return 0
