"""``previous(t, k)`` / ``current(t)``: the key ``k`` positions back (0: the query itself)."""

from __future__ import annotations

from typing import Any

import numpy as np

from headcode.compiler import ir
from headcode.compiler.pattern import Pattern, gather
from headcode.compiler.selectors.registry import Selector, register
from headcode.kernels.program_head.spec import EVERY, MAX_SHIFT, Pointer


def previous(t: Any, k: int = 1) -> Pattern:
    """The token ``k`` positions back."""
    if not 0 <= int(k) <= MAX_SHIFT:
        raise ValueError(f"previous(t, k) needs 0 <= k <= {MAX_SHIFT}")
    return Pattern(ir.Sel("offset", k=int(k)), t)


def current(t: Any) -> Pattern:
    """The query token itself."""
    return Pattern(ir.Sel("offset", k=0), t)


def _reference(s: Any, t: Any) -> np.ndarray:
    ar = np.arange(len(t))
    return gather(len(t), np.where(ar - s.k >= 0, ar - s.k, -1))


def _phrase(s: Any) -> str:
    return {0: "the token itself", 1: "the previous token"}.get(s.k, f"the token {s.k} back")


SELECTOR = register(Selector(
    kind="offset", meaning="the key k positions back (k=0: the token itself)",
    functions=(previous, current), reference=_reference,
    lower=lambda s: Pointer(ev_tab=EVERY, shift=-s.k),  # every token is an event
    phrase=_phrase, params=("k",),
    problems=lambda s: [] if 0 <= s.k <= MAX_SHIFT else [f"offset k must be in [0, {MAX_SHIFT}], got {s.k}"],
    search=("current(t)", *(f"previous(t, {k})" for k in range(1, 6))),
    examples=("previous(t, 1)", "current(t)", "previous(t, 3) & noun_like", "when(punct, previous(t, 2))"),
))
