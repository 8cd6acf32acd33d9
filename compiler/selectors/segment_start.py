"""``clause_start(t)``: the first token of the query's clause (a segment after a class)."""

from __future__ import annotations

from typing import Any

import numpy as np

from headcode.compiler import classes, ir
from headcode.compiler.classes import bare
from headcode.compiler.pattern import Pattern, gather, latest
from headcode.compiler.selectors.registry import Selector, register
from headcode.kernels.program_head.spec import Pointer


def clause_start(t: Any) -> Pattern:
    """The first token of the query's clause: the text start or the token after the latest
    clause boundary (``, ; : . ! ?`` or a newline) before the query."""
    return Pattern(ir.Sel("segment_start", aux=classes.clause_boundary), t)


def _reference(s: Any, t: Any) -> np.ndarray:
    begin = np.zeros(len(t), dtype=bool)
    if len(t):
        begin[0] = True
        begin[1:] = t.has(s.aux)[:-1]
    return gather(len(t), latest(begin))


def _phrase(s: Any) -> str:
    if s.aux is not None and getattr(s.aux, "name", s.aux) == "clause_boundary":
        return "the start of the clause"
    return f"the token after the latest {bare(s.aux)} (or the start)"


SELECTOR = register(Selector(
    kind="segment_start", needs_aux=True, functions=(clause_start,), reference=_reference, phrase=_phrase,
    meaning="the first token of the query's segment: the latest key that is the text start or follows a "
            "token of the aux class (clause_boundary: the clause start)",
    lower=lambda s: Pointer(ev_tab=s.aux_table, ev_lag=1, ev_start=True),
    search=("clause_start(t)",),
    examples=("clause_start(t)", "when(verb_like, clause_start(t))"),
))
