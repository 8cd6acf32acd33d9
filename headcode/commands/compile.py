"""Compile a directory of head programs into surrogates.safetensors.

  headcode compile out/explain            # DIR/programs/L<l>.H<h>.py -> DIR/surrogates.safetensors
  headcode compile out/explain --json

The model (for its tokenizer: vocabulary tables and fingerprint) is read from
DIR/report.json's "model" field, or given with --model. Program files are untrusted: each is
checked, then traced and lowered inside the sandbox (its tok() tables are computed there);
this process only receives the terms and tables as data. A program that traces to selectors
is compiled. One that does not (refused by the check, free-form numpy, a product or maximum
of patterns, a time limit) is refused with its reasons and left out of the plan: a plan holds
IR and tables only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HELP = "compile DIR/programs/*.py into DIR/surrogates.safetensors"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", help="an explain output directory (with programs/ and report.json)")
    p.add_argument("--model", help="model spec whose tokenizer to compile for (default: report.json's model)")
    p.add_argument("--out", help="output file (default: DIR/surrogates.safetensors)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    p.add_argument("--time-limit", type=float, default=10.0,
                   help="seconds each program may take to trace and build its tables in the sandbox (default 10)")


def line(h) -> str:
    """One line a head; the full terms are in --json. Program text is escaped (``printable``)."""
    from headcode.printable import printable

    if h.compiled:
        detail = f"size {h.size}, {len(h.terms)} terms: " + " + ".join(h.terms)
        detail = detail if len(detail) <= 100 else detail[:97] + "..."
    else:
        detail = "; ".join(h.reasons)
    return printable(f"{h.head:>8}  {'compiled' if h.compiled else 'refused':<10}  {detail}")


def run(args: argparse.Namespace) -> int:
    from headcode.pipeline.compile import CompileSettings, compile_programs

    res = compile_programs(CompileSettings(dir=Path(args.dir), model=args.model,
                                           out=Path(args.out) if args.out else None, time_limit=args.time_limit))
    if args.json:
        print(json.dumps({"out": str(res.out), "model": res.model, "fingerprint": res.fingerprint,
                          "compiled": res.compiled, "refused": res.refused,
                          "heads": [h.to_json() for h in res.heads]}, indent=1))
    else:
        for h in res.heads:
            print(line(h))
        print(f"{res.compiled} compiled, {res.refused} refused (not in the plan) -> {res.out}", file=sys.stderr)
    return 0
