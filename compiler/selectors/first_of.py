"""``first_of(t, c)``: the earliest token of a class so far (the first ``the``, the first name)."""

from __future__ import annotations

from typing import Any

import numpy as np

from headcode.compiler import ir
from headcode.compiler.classes import bare
from headcode.compiler.pattern import Pattern, gather
from headcode.compiler.predicates import Pred
from headcode.compiler.selectors.registry import THE, Selector, register
from headcode.kernels.program_head.spec import Pointer

# classes whose first occurrence middle layers of SmolLM2 keep attending to (secondary sinks)
FIRST_OF = (THE, "name", "noun_like", "pronoun", "capitalised", "punct", "sentence_end", "verb_like",
            "content_word")


def first_of(t: Any, pred: Pred) -> Pattern:
    """The earliest token so far where ``pred`` holds (the first ``the``, the first name): one key,
    fixed once the class has appeared."""
    if not isinstance(pred, Pred):
        raise TypeError("first_of(t, pred) needs a predicate such as name or token_in('the')")
    return Pattern(ir.Sel("first_of", key=pred), t)


def _reference(s: Any, t: Any) -> np.ndarray:
    hit = np.asarray(t.has(s.key), dtype=bool)
    first = int(np.argmax(hit)) if hit.any() else len(t)
    return gather(len(t), np.where(np.arange(len(t)) >= first, first, -1))


def _phrase(s: Any) -> str:
    return f"the first {bare(s.key)} so far"


SELECTOR = register(Selector(
    kind="first_of", meaning="the earliest key so far where the key class holds",
    functions=(first_of,), needs_key=True, key_words=None, reference=_reference, phrase=_phrase,
    # its key class is its event, and only the first event places the pointer
    lower=lambda s: Pointer(ev_tab=s.key_table, earliest=True),
    search=tuple(f"first_of(t, {c})" for c in FIRST_OF),
    examples=("first_of(t, name)", f"0.6 * first_of(t, {THE}) + 0.4 * previous(t, 1)",
              "when(pronoun, first_of(t, name))"),
))
