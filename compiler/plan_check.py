"""Re-checking a loaded plan before anything reads it: every term's kind, parameters and table
rows, every head's special rows. A plan file is data from outside (DESIGN.md, semantics 6): a
tampered one is refused here, once at load, so the kernels never index a table out of bounds."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from headcode.compiler.head import CompiledHead
from headcode.errors import HeadcodeError
from headcode.kernels.program_head.spec import KIND_CODES

SENTENCE_KINDS = frozenset({"sentence", "sentence_start"})


def head_problems(key: str, head: CompiledHead) -> list[str]:
    """Every reason ``head`` cannot be run safely, each naming the head and term."""
    t = head.tables
    if not isinstance(t, np.ndarray) or t.ndim != 2 or t.dtype != np.uint8:
        return [f"{key}: tables must be a [n_tables, vocab] uint8 array"]
    n = t.shape[0]
    if not head.compiled:
        return [f"{key}: an uncompiled head has terms"] if head.terms else []
    out = []

    def row(name: str, r: int, i: int | None = None) -> None:
        if not -1 <= r < n:
            where = f"term {i} {name}" if i is not None else name
            out.append(f"{key}: {where} {r} is past its table ({n} rows)")

    for i, term in enumerate(head.terms):
        if term.kind not in KIND_CODES:
            out.append(f"{key}: term {i} has unknown kind {term.kind!r}")
        row("key_table", term.key_table, i)
        row("query_table", term.query_table, i)
        if not (math.isfinite(term.weight) and term.weight >= 0):
            out.append(f"{key}: term {i} weight {term.weight} is not finite and non-negative")
        if term.kind == "offset" and not 0 <= term.k < 2**31:
            out.append(f"{key}: term {i} offset {term.k} is out of range")
        if term.kind == "decay" and not 0.0 < term.rate < 1.0:
            out.append(f"{key}: term {i} decay rate {term.rate} is not in (0, 1)")
    row("boundary_table", head.boundary_table)
    row("new_word_table", head.new_word_table)
    kinds = {term.kind for term in head.terms}
    if kinds & SENTENCE_KINDS and head.boundary_table < 0:
        out.append(f"{key}: sentence terms without a boundary table")
    if "word_start" in kinds and head.new_word_table < 0:
        out.append(f"{key}: word_start terms without a new-word table")
    return out


def check_loaded_plan(heads: Mapping[str, CompiledHead], path: object) -> None:
    """``HeadcodeError`` (one line, every reason) if any head of a loaded plan is out of bounds."""
    reasons = [r for key, head in heads.items() for r in head_problems(key, head)]
    if reasons:
        shown = "; ".join(reasons[:6]) + (f"; and {len(reasons) - 6} more" if len(reasons) > 6 else "")
        raise HeadcodeError(f"{path} is not a valid surrogate plan (tampered or from a broken compiler): "
                            f"{shown}; compile it again with `headcode compile`")
