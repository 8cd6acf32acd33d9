"""``first(t)``: the first token of the text (the usual attention sink)."""

from __future__ import annotations

from typing import Any

import numpy as np

from headcode.compiler import ir
from headcode.compiler.pattern import Pattern, gather
from headcode.compiler.selectors.registry import Selector, register
from headcode.kernels.program_head.spec import Pointer


def first(t: Any) -> Pattern:
    """The first token of the text (the usual attention sink)."""
    return Pattern(ir.Sel("first"), t)


SELECTOR = register(Selector(
    kind="first", meaning="the first token of the text", functions=(first,),
    reference=lambda s, t: gather(len(t), np.zeros(len(t), dtype=np.int64)),
    lower=lambda s: Pointer(ev_start=True),  # the only event: the first real token
    phrase=lambda s: "the first token",
    search=("first(t)",),
    examples=("first(t)", "0.6 * first(t) + 0.4 * current(t)"),
))
