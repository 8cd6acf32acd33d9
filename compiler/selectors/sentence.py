"""``in_same_sentence(t, pred)``: every key of the query's sentence so far, equally."""

from __future__ import annotations

from typing import Any

from headcode.compiler import ir
from headcode.compiler.pattern import Pattern, causal
from headcode.compiler.predicates import Pred, boundary
from headcode.compiler.selectors.registry import Selector, register
from headcode.kernels.program_head.spec import Scan


def in_same_sentence(t: Any, pred: Pred | None = None) -> Pattern:
    """Uniform over the keys of the query's own sentence so far (where ``pred`` holds)."""
    return Pattern(ir.Sel("sentence", key=pred, aux=boundary), t)


def _reference(s: Any, t: Any):
    si = t.sentence_index
    return (causal(len(t)) & (si[None, :] == si[:, None])).astype(float)


SELECTOR = register(Selector(
    kind="sentence", meaning="uniform over the keys of the query's sentence so far",
    functions=(in_same_sentence,), reference=_reference, aux=boundary,
    # a sentence starts at the text start and after every boundary token: a new scan segment
    lower=lambda s: Scan(ev_tab=s.aux_table, ev_lag=1, ev_start=True),
    phrase=lambda s: "the tokens of the sentence so far", key_words="that are",
    search=("in_same_sentence(t)", *(f"in_same_sentence(t, {c})" for c in (
        "noun_like", "verb_like", "name", "content_word", "function_word", "punct"))),
    examples=("in_same_sentence(t)", "in_same_sentence(t, content_word)"),
))
