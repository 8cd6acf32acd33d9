"""``most_recent(t, pred, strict)`` / ``nearest_name(t)``: the latest key of a class."""

from __future__ import annotations

from typing import Any

from headcode.compiler import classes, ir
from headcode.compiler.classes import bare
from headcode.compiler.pattern import Pattern, gather, latest
from headcode.compiler.predicates import Pred
from headcode.compiler.selectors.registry import THE, Selector, register
from headcode.kernels.program_head.spec import Pointer

RECENT = ("punct", "sentence_end", "comma", "newline", "quote", "clause_boundary", "name", "pronoun",
          "noun_like", "verb_like", "adjective_like", "determiner", "preposition", "conjunction", "content_word",
          "function_word", "capitalised")


def most_recent(t: Any, pred: Pred, strict: bool = False) -> Pattern:
    """The latest key where ``pred`` holds (``strict``: strictly before the query)."""
    if not isinstance(pred, Pred):
        raise TypeError("most_recent(t, pred) needs a predicate such as punct or tok(...)")
    return Pattern(ir.Sel("most_recent", strict=bool(strict), key=pred), t)


def nearest_name(t: Any) -> Pattern:
    """The nearest earlier name (``most_recent(t, name, strict=True)``)."""
    return most_recent(t, classes.name, strict=True)


def _phrase(s: Any) -> str:
    return f"the latest {'earlier ' if s.strict else ''}{bare(s.key)}"


SELECTOR = register(Selector(
    kind="most_recent", meaning="the latest key so far (strict: before the query) where the key class holds",
    functions=(most_recent, nearest_name), params=("strict",), needs_key=True, key_words=None,
    reference=lambda s, t: gather(len(t), latest(t.has(s.key), s.strict)),
    # its key class is its event: the latest token of that class, key restriction included
    lower=lambda s: Pointer(ev_tab=s.key_table, strict=bool(s.strict)),
    phrase=_phrase,
    search=tuple(f"most_recent(t, {c}{s})" for s in ("", ", strict=True") for c in RECENT)
    + (f"most_recent(t, {THE})",),
    examples=("most_recent(t, punct)", "most_recent(t, noun_like, strict=True)", "nearest_name(t)",
              "when(pronoun, nearest_name(t))"),
))
