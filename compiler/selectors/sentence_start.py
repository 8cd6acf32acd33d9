"""``sentence_start(t)``: the first token of the query's sentence."""

from __future__ import annotations

from typing import Any

from headcode.compiler import ir
from headcode.compiler.pattern import Pattern, gather, latest
from headcode.compiler.predicates import boundary
from headcode.compiler.selectors.registry import Selector, register
from headcode.kernels.program_head.spec import Pointer


def sentence_start(t: Any) -> Pattern:
    """The first token of the query's sentence."""
    return Pattern(ir.Sel("sentence_start", aux=boundary), t)


SELECTOR = register(Selector(
    kind="sentence_start", meaning="the first token of the query's sentence", functions=(sentence_start,),
    reference=lambda s, t: gather(len(t), latest(t.sentence_begin)), aux=boundary,
    # events: the text start and every token after a boundary token
    lower=lambda s: Pointer(ev_tab=s.aux_table, ev_lag=1, ev_start=True),
    phrase=lambda s: "the start of the sentence",
    search=("sentence_start(t)",),
    examples=("sentence_start(t)", "when(punct, sentence_start(t))", "sentence_start(t) & capitalised"),
))
