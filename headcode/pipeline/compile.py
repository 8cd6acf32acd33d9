"""Compile a directory of head programs (``DIR/programs/L<l>.H<h>.py``) into a surrogate plan.

Program files are untrusted: each is checked, then traced and lowered inside the sandbox (its
``tok()`` tables are computed there); this process receives only terms and tables, as data. A
program that does not trace to selectors is refused with its reasons and left out of the plan."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headcode.errors import HeadcodeError


@dataclass(frozen=True)
class CompileSettings:
    dir: Path                        # an explain output directory (programs/, report.json)
    model: str | None = None         # whose tokenizer to compile for (default: report.json's "model")
    out: Path | None = None          # default: DIR/surrogates.safetensors
    time_limit: float = 10.0         # seconds per program in the sandbox (trace and tables)
    progress: bool = False


@dataclass(frozen=True)
class HeadOutcome:
    head: str
    compiled: bool
    size: int | None                 # AST nodes of attend's body (None: the file does not parse)
    reasons: tuple[str, ...] = ()    # why it was refused
    terms: tuple[str, ...] = ()      # the selector terms it compiled to

    def to_json(self) -> dict[str, Any]:
        return {"head": self.head, "status": "compiled" if self.compiled else "refused", "size": self.size,
                "reasons": list(self.reasons), "terms": list(self.terms)}


@dataclass(frozen=True)
class CompileResult:
    out: Path
    model: str
    fingerprint: str
    heads: tuple[HeadOutcome, ...]

    @property
    def compiled(self) -> int:
        return sum(h.compiled for h in self.heads)

    @property
    def refused(self) -> int:
        return len(self.heads) - self.compiled


def program_files(d: Path) -> list[tuple[Any, Path]]:
    """``(HeadRef, file)`` for every ``L<l>.H<h>.py`` in ``d/programs``, in head order."""
    from headcode.runtime.model.heads import HeadRef

    progs = d / "programs"
    if not progs.is_dir():
        raise HeadcodeError(f"{progs} does not exist: run `headcode explain --out {d}` first")
    found = sorted((h, f) for f in progs.iterdir() if f.suffix == ".py" and (h := HeadRef.match(f.stem)))
    if not found:
        raise HeadcodeError(f"no programs named L<layer>.H<head>.py in {progs}")
    return found


def model_of(d: Path) -> str:
    """The model an explain directory was made for (``report.json``'s ``model``)."""
    rep = d / "report.json"
    try:
        return str(json.loads(rep.read_text())["model"])
    except FileNotFoundError as e:
        raise HeadcodeError(f"{rep} is missing: pass the model with --model") from e
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise HeadcodeError(f"{rep} has no readable \"model\" field: pass the model with --model") from e


def _size(source: str) -> int | None:
    """The program's size (``compiler.size``: AST nodes of attend's body; parsing runs nothing)."""
    from headcode.compiler.size import program_size

    try:
        return program_size(source).nodes
    except ValueError:
        return None


def compile_programs(s: CompileSettings, tokenizer: Any = None) -> CompileResult:
    """Compile every program of ``s.dir`` for the model's tokenizer and write the plan (compiled
    heads only). ``tokenizer``: the model's, when already loaded."""
    from tqdm.auto import tqdm

    from headcode.compiler import SurrogatePlan, compile_source, save_plan
    from headcode.compiler.tokens import tokenizer_fingerprint, vocabulary_pieces
    from headcode.runtime.model.loading import load_tokenizer, resolve

    if not s.time_limit > 0:
        raise HeadcodeError("--time-limit must be a positive number of seconds")
    d = Path(s.dir)
    files = program_files(d)
    spec = s.model or model_of(d)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(spec)
    model_id = resolve(spec)[1]
    fingerprint = tokenizer_fingerprint(tokenizer)
    pieces = vocabulary_pieces(tokenizer)
    plan, rows = {}, []
    for ref, path in tqdm(files, desc="compile", unit="head", disable=not s.progress):
        key = str(ref)
        try:
            source = path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            rows.append(HeadOutcome(key, False, None, (f"cannot read {path}: {e}",)))
            continue
        head = compile_source(source, pieces, fingerprint, name=key, model_id=model_id, time_limit_s=s.time_limit)
        if head.compiled:
            plan[key] = head
        rows.append(HeadOutcome(key, head.compiled, _size(source), tuple(head.reasons),
                                tuple(t.describe() for t in head.terms)))
    out = Path(s.out) if s.out else d / "surrogates.safetensors"
    save_plan(SurrogatePlan(model_id=model_id, fingerprint=fingerprint, heads=plan), out)
    return CompileResult(out, model_id, fingerprint, tuple(rows))
