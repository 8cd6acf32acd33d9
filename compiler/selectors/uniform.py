"""``uniform(t, pred)``: every key so far, equally."""

from __future__ import annotations

from typing import Any

from headcode.compiler import ir
from headcode.compiler.pattern import Pattern, causal
from headcode.compiler.predicates import Pred
from headcode.compiler.selectors.registry import THE, Selector, register
from headcode.kernels.program_head.spec import Scan


def uniform(t: Any, pred: Pred | None = None) -> Pattern:
    """Uniform over all keys so far (where ``pred`` holds)."""
    return Pattern(ir.Sel("uniform", key=pred), t)


SELECTOR = register(Selector(
    kind="uniform", meaning="uniform over all keys so far", functions=(uniform,),
    reference=lambda s, t: causal(len(t)).astype(float),
    lower=lambda s: Scan(),  # one segment, rate 1
    phrase=lambda s: "all tokens so far", key_words="that are",
    search=("uniform(t)", *(f"uniform(t, {c})" for c in (
        "noun_like", "verb_like", "adjective_like", "name", "pronoun", "determiner", "preposition", "content_word",
        "function_word", "punct", "~punct", "sentence_end", "newline", THE))),
    examples=("uniform(t)", "uniform(t, noun_like)", "when(pronoun, uniform(t, name))"),
))
