"""``word_start(t)``: the first token of the query's word."""

from __future__ import annotations

from typing import Any

from headcode.compiler import ir
from headcode.compiler.pattern import Pattern, gather, latest
from headcode.compiler.predicates import new_word
from headcode.compiler.selectors.registry import Selector, register
from headcode.kernels.program_head.spec import Pointer


def word_start(t: Any) -> Pattern:
    """The first token of the query's word."""
    return Pattern(ir.Sel("word_start", aux=new_word), t)


SELECTOR = register(Selector(
    kind="word_start", meaning="the first token of the query's word", functions=(word_start,),
    reference=lambda s, t: gather(len(t), latest(t.word_begin)), aux=new_word,
    lower=lambda s: Pointer(ev_tab=s.aux_table, ev_start=True),  # events: tokens that start a word
    phrase=lambda s: "the start of the word",
    search=("word_start(t)",),
    examples=("word_start(t)", "0.5 * word_start(t) + 0.5 * previous(t, 1)"),
))
