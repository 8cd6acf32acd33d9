"""Explain attention heads as short programs, ranked on held-out text, with a report.

  headcode explain --corpus stories --out out/explain
  headcode explain --corpus stories --unit sentence --heads L0-3 --out out/sent
  headcode explain --backend openai --base-url http://127.0.0.1:8000/v1 --model qwen --out out/llm
  headcode explain --patterns patterns.safetensors --out out/explain
  headcode explain --cluster ray:10.0.0.5:6379 --out out/explain   (pip install 'headcode[cluster]')

Programs are written on the fit split, chosen on the select split and reported on the test
split. Writes DIR/programs/L<l>.H<h>.py, DIR/report.json, DIR/report.md and DIR/plots/.
Resumable: the captured patterns (DIR/patterns.safetensors) and each finished head
(DIR/state/) are kept; run the same command again to continue an interrupted run.
The openai backend reads the key from OPENAI_API_KEY (any value works for local servers).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from headcode.commands._options import add_model

HELP = "explain heads as programs (offline search or an OpenAI-compatible model) with a report"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from headcode.pipeline.explain import ExplainSettings

    add_model(p)
    p.add_argument("--corpus", default="stories", help="stories | lambada | FILE.txt | hf:<dataset>")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--heads", default=None, help="all (default), or e.g. L3.H7,L5 (a whole layer),L2-4")
    p.add_argument("--unit", default="paragraph", choices=["sentence", "paragraph"])
    p.add_argument("--backend", default="offline", choices=["offline", "openai"])
    p.add_argument("--base-url", default=None, help="OpenAI-compatible endpoint (openai backend)")
    p.add_argument("--model", "--llm", dest="llm", default="gpt-4o-mini",
                   help="model name at the endpoint (openai backend)")
    p.add_argument("--max-programs", type=int, default=1000, help="library size cap (default 1000)")
    p.add_argument("--max-texts", type=int, default=100, help="at most this many texts per split (default 100)")
    p.add_argument("--max-tokens", type=int, default=256, help="truncate each text to this many tokens")
    p.add_argument("--rounds", type=int, default=2, help="feedback rounds per head (openai backend)")
    d = ExplainSettings.__dataclass_fields__
    p.add_argument("--max-programs-per-reply", type=int, default=d["max_programs_per_reply"].default,
                   help="programs taken from one model reply; the rest are dropped (openai backend; "
                        "default %(default)s)")
    p.add_argument("--head-time-limit", type=float, default=d["head_time_limit"].default,
                   help="seconds of sandbox time per head; programs not run by then are refused "
                        "(openai backend; default %(default)s)")
    p.add_argument("--patterns", default=None, help="use this captured patterns file instead of capturing")
    p.add_argument("--cluster", default=None, metavar="ray[:ADDRESS]",
                   help="one task per head on Ray: ray (a local instance) or ray:ADDRESS (a running cluster)")
    p.add_argument("--llm-per-minute", type=float, default=None,
                   help="with --cluster: LLM requests per minute, all workers together (openai backend)")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from headcode.pipeline.explain import ExplainSettings, explain_model

    res = explain_model(ExplainSettings(
        out=Path(args.out), model=args.model, corpus=args.corpus, unit=args.unit, heads=args.heads,
        backend=args.backend, base_url=args.base_url, llm=args.llm, max_programs=args.max_programs,
        max_texts=args.max_texts, max_tokens=args.max_tokens, rounds=args.rounds, patterns=args.patterns,
        max_programs_per_reply=args.max_programs_per_reply, head_time_limit=args.head_time_limit,
        progress=not args.no_progress, cluster=args.cluster, llm_per_minute=args.llm_per_minute))
    print(json.dumps({"out": str(res.out), **res.summary}))
    return 0
