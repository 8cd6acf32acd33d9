"""A program in one line of English, generated from its IR (never from its source text):

    70% the previous token, 30% the first token; on punctuation: the start of the sentence

Terms without a query gate come first, then one clause per query gate ("on <class>: ...";
the complement of the gate before it reads "otherwise"). Weights are shares within a clause.
``PHRASES`` gives every selector kind its phrase; a test checks that every kind has one.
"""

from __future__ import annotations

from collections.abc import Callable

from headcode.compiler import ir
from headcode.compiler.classes import meaning
from headcode.compiler.program_to_ir import flatten


def _bare(pred: ir.Pred | None) -> str:
    """``"noun-like word"`` for ``noun_like``: the class's phrase without its article."""
    m = meaning(pred.name) if pred is not None else "token"
    for art in ("a ", "an "):
        if m.startswith(art):
            return m[len(art):]
    return m


def _offset(s: ir.Sel) -> str:
    return {0: "the token itself", 1: "the previous token"}.get(s.k, f"the token {s.k} back")


def _segment(s: ir.Sel) -> str:
    if s.aux is not None and s.aux.name == "clause_boundary":
        return "the start of the clause"
    return f"the token after the latest {_bare(s.aux)} (or the start)"


def _anchor(s: ir.Sel) -> str:
    where = "after" if s.k > 0 else "before"
    n = abs(s.k)
    lead = f"the token {where}" if n == 1 else f"the token {n} {where}"
    return f"{lead} the latest {'earlier ' if s.strict else ''}{_bare(s.aux)}"


PHRASES: dict[str, Callable[[ir.Sel], str]] = {
    "offset": _offset,
    "first": lambda s: "the first token",
    "uniform": lambda s: "all tokens so far",
    "sentence": lambda s: "the tokens of the sentence so far",
    "same_token": lambda s: "earlier occurrences of the same token",
    "most_recent": lambda s: f"the latest {'earlier ' if s.strict else ''}{_bare(s.key)}",
    "sentence_start": lambda s: "the start of the sentence",
    "word_start": lambda s: "the start of the word",
    "induction": lambda s: "the token after the previous occurrence of the current token",
    "decay": lambda s: f"recent tokens (decay {s.rate:g})",
    "segment_start": _segment,
    "anchor": _anchor,
}


def selector_phrase(s: ir.Sel) -> str:
    text = PHRASES[s.kind](s)
    if s.key is not None and s.kind != "most_recent":
        text += f" that are {meaning(s.key.name)}" if s.kind in ("uniform", "sentence", "decay", "same_token") \
            else f" if it is {meaning(s.key.name)}"
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

