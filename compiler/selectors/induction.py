"""``induction(t)``: the token after the previous occurrence of the query's token."""

from __future__ import annotations

from typing import Any

import numpy as np

from headcode.compiler import ir
from headcode.compiler.pattern import Pattern, gather
from headcode.compiler.selectors.registry import Selector, register
from headcode.kernels.program_head.spec import Induction


def induction(t: Any) -> Pattern:
    """The token right after the latest earlier occurrence of the query's token."""
    return Pattern(ir.Sel("induction"), t)


def _reference(s: Any, t: Any) -> np.ndarray:
    idx = np.full(len(t), -1)
    seen: dict[int, int] = {}
    for q, tid in enumerate(t.ids.tolist()):
        idx[q] = seen[tid] + 1 if tid in seen else -1
        seen[tid] = q
    return gather(len(t), idx)


SELECTOR = register(Selector(
    kind="induction", meaning="the token right after the latest earlier occurrence of the query's token",
    functions=(induction,), reference=_reference, lower=lambda s: Induction(),
    phrase=lambda s: "the token after the previous occurrence of the current token",
    search=("induction(t)",),
    examples=("induction(t)", "0.7 * induction(t) + 0.3 * first(t)"),
))
