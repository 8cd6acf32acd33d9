"""``same_token(t)``: earlier occurrences of the query's own token, itself included."""

from __future__ import annotations

from typing import Any

from headcode.compiler import ir
from headcode.compiler.pattern import Pattern, causal
from headcode.compiler.selectors.registry import Selector, register
from headcode.kernels.program_head.spec import SameToken


def same_token(t: Any) -> Pattern:
    """Uniform over earlier occurrences of the query's token, itself included."""
    return Pattern(ir.Sel("same_token"), t)


SELECTOR = register(Selector(
    kind="same_token", meaning="uniform over earlier occurrences of the query's own token (itself included)",
    functions=(same_token,),
    reference=lambda s, t: (causal(len(t)) & (t.ids[None, :] == t.ids[:, None])).astype(float),
    lower=lambda s: SameToken(),
    phrase=lambda s: "earlier occurrences of the same token", key_words="that are",
    search=("same_token(t)",),
    examples=("same_token(t)", "0.5 * same_token(t) + 0.5 * previous(t, 1)"),
))
