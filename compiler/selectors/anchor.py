"""``after_last(t, c)`` / ``before_last(t, c)``: the key next to the latest token of a class."""

from __future__ import annotations

from typing import Any

import numpy as np

from headcode.compiler import ir
from headcode.compiler.classes import bare
from headcode.compiler.pattern import Pattern, gather, latest
from headcode.compiler.predicates import Pred
from headcode.compiler.selectors.registry import Selector, register
from headcode.kernels.program_head.spec import Pointer

MAX_K = 8


def after_last(t: Any, pred: Pred) -> Pattern:
    """The token right after the latest earlier token where ``pred`` holds (e.g. the word after
    the latest determiner)."""
    if not isinstance(pred, Pred):
        raise TypeError("after_last(t, pred) needs a predicate such as determiner")
    return Pattern(ir.Sel("anchor", k=1, strict=True, aux=pred), t)


def before_last(t: Any, pred: Pred) -> Pattern:
    """The token right before the latest token so far where ``pred`` holds (e.g. the word before
    the latest verb-like word: often its subject)."""
    if not isinstance(pred, Pred):
        raise TypeError("before_last(t, pred) needs a predicate such as verb_like")
    return Pattern(ir.Sel("anchor", k=-1, aux=pred), t)


def _reference(s: Any, t: Any) -> np.ndarray:
    last = latest(t.has(s.aux), s.strict)
    idx = np.where(last >= 0, last + s.k, -1)
    return gather(len(t), np.where((idx >= 0) & (idx <= np.arange(len(t))), idx, -1))


def _phrase(s: Any) -> str:
    where, n = ("after" if s.k > 0 else "before"), abs(s.k)
    lead = f"the token {where}" if n == 1 else f"the token {n} {where}"
    return f"{lead} the latest {'earlier ' if s.strict else ''}{bare(s.aux)}"


SELECTOR = register(Selector(
    kind="anchor", needs_aux=True, functions=(after_last, before_last), reference=_reference,
    meaning="the key k positions after (k < 0: before) the latest key so far (strict: before the query) "
            "of the aux class",
    lower=lambda s: Pointer(ev_tab=s.aux_table, strict=bool(s.strict), shift=s.k),
    params=("k", "strict"), phrase=_phrase,
    problems=lambda s: [] if -MAX_K <= s.k <= MAX_K and s.k != 0 else
    [f"anchor shift k must be in [-{MAX_K}, {MAX_K}] and not 0, got {s.k}"],
    search=tuple(f"after_last(t, {c})" for c in ("determiner", "preposition", "verb_like", "conjunction",
                                                  "pronoun", "punct"))
    + tuple(f"before_last(t, {c})" for c in ("verb_like", "auxiliary", "punct", "noun_like")),
    examples=("after_last(t, determiner)", "before_last(t, verb_like)",
              "when(noun_like, after_last(t, preposition))"),
))
