"""A program in one line of English, generated from its IR (never from its source text):

    70% the previous token, 30% the first token; on punctuation: the start of the sentence

Terms without a query gate come first, then one clause per query gate ("on <class>: ...";
the complement of the gate before it reads "otherwise"). Weights are shares within a clause.
Each selector's phrase is part of its definition (``compiler/selectors/``).
"""

from __future__ import annotations

from headcode.compiler import ir
from headcode.compiler.classes import meaning
from headcode.compiler.program_to_ir import flatten
from headcode.compiler.selectors import get


def selector_phrase(s: ir.Sel) -> str:
    """The phrase of one term: its selector's ``phrase``, then its key restriction in the
    selector's ``key_words`` ("that are" for sets of keys, "if it is" for one key)."""
    sel = get(s.kind)
    text = sel.phrase(s)
    if s.key is not None and sel.key_words:
        text += f" {sel.key_words} {meaning(s.key.name)}"
    return text


def _clause(terms: list[tuple[float, ir.Sel]]) -> str:
    tot = sum(w for w, _ in terms) or 1.0
    merged: dict[str, float] = {}
    for w, s in terms:
        p = selector_phrase(s)
        merged[p] = merged.get(p, 0.0) + w / tot
    parts = sorted(merged.items(), key=lambda kv: -kv[1])
    if len(parts) == 1:
        return parts[0][0]
    return ", ".join(f"{round(100 * w):d}% {p}" for p, w in parts)


def describe(expr: ir.Expr) -> str:
    """One line of English for a traced program (``flatten`` order, grouped by query gate)."""
    groups: dict[str | None, list[tuple[float, ir.Sel]]] = {}
    for w, s in flatten(expr):
        if not isinstance(s, ir.Sel):
            return "a combination of patterns that has no plain description"
        if w > 0:
            groups.setdefault(s.query.name if s.query else None, []).append((float(w), s))
    if not groups:
        return "the first token"
    out, prev = [], None
    for gate in sorted(groups, key=lambda g: g is not None):
        body = _clause(groups[gate])
        if gate is None:
            out.append(body)
        elif prev is not None and gate in (f"~{prev}", f"~({prev})"):
            out.append(f"otherwise: {body}")
        else:
            out.append(f"on {meaning(gate)}: {body}")
        prev = gate
    return "; ".join(out)

