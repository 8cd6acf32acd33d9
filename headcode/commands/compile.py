"""Compile a directory of head programs into surrogates.safetensors.

  headcode compile out/explain            # DIR/programs/L<l>.H<h>.py -> DIR/surrogates.safetensors
  headcode compile out/explain --json

The model (for its tokenizer: vocabulary tables and fingerprint) is read from
DIR/report.json's "model" field, or given with --model. A program that traces to selectors
is compiled to vocabulary tables and kernel terms. One that does not (free-form numpy, a
product or maximum of patterns) is stored uncompiled, with its source and the reasons, so
the runtime can still run it through the reference path. A file that is not a program at
all (syntax error, no function) is left out of the plan and reported.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from headcode.errors import HeadcodeError

HELP = "compile DIR/programs/*.py into DIR/surrogates.safetensors"
_NAME = re.compile(r"^L(\d+)\.H(\d+)\.py$")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", help="an explain output directory (with programs/ and report.json)")
    p.add_argument("--model", help="model spec whose tokenizer to compile for (default: report.json's model)")
    p.add_argument("--out", help="output file (default: DIR/surrogates.safetensors)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of lines")


def _program_files(d: Path) -> list[tuple[str, Path]]:
    progs = d / "programs"
    if not progs.is_dir():
        raise HeadcodeError(f"{progs} does not exist: run `headcode explain --out {d}` first")
    found = [(m, f) for f in progs.iterdir() if (m := _NAME.match(f.name))]
    if not found:
        raise HeadcodeError(f"no programs named L<layer>.H<head>.py in {progs}")
    found.sort(key=lambda mf: (int(mf[0].group(1)), int(mf[0].group(2))))
    return [(f"L{int(m.group(1))}.H{int(m.group(2))}", f) for m, f in found]


def _model_spec(d: Path, override: str | None) -> str:
    if override:
        return override
    rep = d / "report.json"
    try:
        spec = json.loads(rep.read_text())["model"]
    except FileNotFoundError as e:
        raise HeadcodeError(f"{rep} is missing: pass the model with --model") from e
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise HeadcodeError(f"{rep} has no readable \"model\" field: pass the model with --model") from e
    return str(spec)


def run(args: argparse.Namespace) -> int:
    from headcode.compiler import SurrogatePlan, compile_program, save_plan
    from headcode.compiler.program import Program, ProgramError
    from headcode.runtime.loading import load_tokenizer, resolve, tokenizer_fingerprint
    from headcode.runtime.tokens import vocabulary_pieces

    d = Path(args.dir)
    files = _program_files(d)
    spec = _model_spec(d, args.model)
    tokenizer = load_tokenizer(spec)
    model_id = resolve(spec)[1]
    from headcode.compiler.size import program_size

    fingerprint = tokenizer_fingerprint(tokenizer)
    pieces = vocabulary_pieces(tokenizer)
    heads, rows = {}, []
    for key, path in files:
        source = path.read_text()
        try:
            program = Program.from_source(source, key)
        except ProgramError as e:
            rows.append({"head": key, "status": "skipped", "reasons": [str(e)]})
            continue
        head = compile_program(program, pieces, fingerprint, model_id)
        heads[key] = head
        rows.append({"head": key, "status": "compiled" if head.compiled else "uncompiled",
                     "size": program_size(source).nodes,
                     "reasons": list(head.reasons), "terms": [t.describe() for t in head.terms]})
    out = Path(args.out) if args.out else d / "surrogates.safetensors"
    save_plan(SurrogatePlan(model_id=model_id, fingerprint=fingerprint, heads=heads), out)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("compiled", "uncompiled", "skipped")}
    if args.json:
        print(json.dumps({"out": str(out), "model": model_id, "fingerprint": fingerprint, **counts,
                          "heads": rows}, indent=1))
    else:
        for r in rows:
            if r["status"] == "compiled":  # one line a head; the full terms are in --json
                terms = r.get("terms", [])
                detail = f"size {r['size']}, {len(terms)} terms: " + " + ".join(terms)
                detail = detail if len(detail) <= 100 else detail[:97] + "..."
            else:
                detail = "; ".join(r["reasons"])
            print(f"{r['head']:>8}  {r['status']:<10}  {detail}")
        print(f"{counts['compiled']} compiled, {counts['uncompiled']} uncompiled (reference path), "
              f"{counts['skipped']} skipped -> {out}", file=sys.stderr)
    return 0
