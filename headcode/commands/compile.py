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
    p.add_argument("--time-limit", type=float, default=10.0,
                   help="seconds each program may take to trace and build its tables in the sandbox (default 10)")


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


def _size(source: str) -> int | None:
    """The program's size (``compiler.size``: AST nodes of attend's body; parsing runs nothing)."""
    from headcode.compiler.size import program_size

    try:
        return program_size(source).nodes
    except ValueError:
        return None


def run(args: argparse.Namespace) -> int:
    from headcode.compiler import SurrogatePlan, compile_source, save_plan
    from headcode.runtime.loading import load_tokenizer, resolve, tokenizer_fingerprint
    from headcode.runtime.tokens import vocabulary_pieces

    if not args.time_limit > 0:
        raise HeadcodeError("--time-limit must be a positive number of seconds")
    d = Path(args.dir)
    files = _program_files(d)
    spec = _model_spec(d, args.model)
    tokenizer = load_tokenizer(spec)
    model_id = resolve(spec)[1]
    fingerprint = tokenizer_fingerprint(tokenizer)
    pieces = vocabulary_pieces(tokenizer)
    heads, rows = {}, []
    for key, path in files:
        try:
            source = path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            rows.append({"head": key, "status": "refused", "reasons": [f"cannot read {path}: {e}"]})
            continue
        head = compile_source(source, pieces, fingerprint, name=key, model_id=model_id,
                              time_limit_s=args.time_limit)
        if head.compiled:
            heads[key] = head
        rows.append({"head": key, "status": "compiled" if head.compiled else "refused", "size": _size(source),
                     "reasons": list(head.reasons), "terms": [t.describe() for t in head.terms]})
    out = Path(args.out) if args.out else d / "surrogates.safetensors"
    save_plan(SurrogatePlan(model_id=model_id, fingerprint=fingerprint, heads=heads), out)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("compiled", "refused")}
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
        print(f"{counts['compiled']} compiled, {counts['refused']} refused (not in the plan) -> {out}",
              file=sys.stderr)
    return 0
