"""``Mixture``: the offline search's result for one head, and its deterministic source.

A mixture is one weighted sum of dictionary terms per query class; it is written as::

    def attend(t):
        return (
            when(punct, 0.7 * first(t) + 0.3 * previous(t, 1))
            + when(function_word, current(t))
        )

Weights are normalised per class, rounded to ``DECIMALS``, terms under ``MIN_WEIGHT`` are
dropped, and terms are sorted by weight then text: the same fit gives the same source.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DECIMALS = 3
MIN_WEIGHT = 0.01


@dataclass(frozen=True)
class Mixture:
    """``parts``: per query class, ``(predicate source or None, ((weight, term source), ...))``."""

    partition: str
    parts: tuple[tuple[str | None, tuple[tuple[float, str], ...]], ...]

    @property
    def n_terms(self) -> int:
        return sum(len(terms) for _, terms in self.parts)

    def source(self, name: str = "attend", doc: str | None = None) -> str:
        return render(self, name, doc)

    def expression(self) -> str:
        """The expression ``attend`` returns, on one line."""
        parts = [(p, terms) for p, terms in self.parts if terms]
        if not parts:
            return "first(t)"
        return " + ".join(_sum(terms) if p is None else f"when({p}, {_sum(terms)})" for p, terms in parts)


def clean_terms(weights: np.ndarray, terms: Sequence[str]) -> tuple[tuple[float, str], ...]:
    """Normalise, round, drop tiny terms and sort: the written form of one class's weights."""
    w = np.asarray(weights, dtype=np.float64)
    tot = w.sum()
    if tot <= 0:
        return ()
    w = w / tot
    out = [(round(float(x), DECIMALS), terms[i]) for i, x in enumerate(w) if x >= MIN_WEIGHT]
    return tuple(sorted(out, key=lambda p: (-p[0], p[1])))


def _sum(terms: tuple[tuple[float, str], ...]) -> str:
    if len(terms) == 1:
        return terms[0][1]
    return " + ".join(f"{w:g} * {src}" for w, src in terms)


def render(m: Mixture, name: str = "attend", doc: str | None = None) -> str:
    """The program's source; ``doc`` (a one-line description) becomes its docstring."""
    head = f"def {name}(t):\n" + (f"    {_docstring(doc)}\n" if doc else "")
    parts = [(p, terms) for p, terms in m.parts if terms]
    if not parts:
        return head + "    return first(t)\n"
    exprs = [_sum(terms) if p is None else f"when({p}, {_sum(terms)})" for p, terms in parts]
    if len(exprs) == 1:
        return head + f"    return {exprs[0]}\n"
    body = "\n        + ".join(exprs)
    return head + f"    return (\n        {body}\n    )\n"


def _docstring(doc: str) -> str:
    text = " ".join(doc.split())
    if '"' in text or "\\" in text:
        return repr(text)
    return f'"""{text}"""'
