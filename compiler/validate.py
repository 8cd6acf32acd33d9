"""Pass 2: validate the IR. Collect every construct the kernels cannot run, each with its
reason, and raise once (``CompileError``) listing them all."""

from __future__ import annotations

import math

from headcode.compiler import ir
from headcode.compiler.program_to_ir import flatten
from headcode.errors import HeadcodeError


class CompileError(HeadcodeError):
    """A program cannot be compiled; ``reasons`` lists every unsupported construct."""

    def __init__(self, reasons: list[str] | tuple[str, ...], name: str = "program"):
        self.reasons = tuple(reasons)
        super().__init__(f"{name} cannot be compiled: " + "; ".join(self.reasons))


def _problems(e: ir.Expr) -> list[str]:
    """Every unsupported construct in ``e`` (recursively), one reason each."""
    if isinstance(e, ir.Product):
        return [f"product of two patterns `a & b` in {ir.describe(e)} (elementwise product, renormalised) "
                "has no kernel; use a key restriction `pattern & predicate` or a weighted sum"] + \
            _problems(e.a) + _problems(e.b)
    if isinstance(e, ir.Max):
        return [f"maximum of two patterns `a | b` in {ir.describe(e)} has no kernel; use a weighted sum"] + \
            _problems(e.a) + _problems(e.b)
    if isinstance(e, ir.Gate):
        return [f"a predicate applied to a product/maximum in {ir.describe(e)} has no kernel; "
                "apply predicates to selectors instead"] + _problems(e.inner)
    if isinstance(e, ir.Mix):
        return [r for w, x in e.terms for r in _weight_problems(w) + _problems(x)]
    if isinstance(e, ir.Sel):
        return _sel_problems(e)
    return [f"not a pattern expression: {type(e).__name__}"]


def _weight_problems(w: float) -> list[str]:
    w = float(w)
    return [] if math.isfinite(w) and w >= 0 else [f"weight {w} must be finite and non-negative"]


def _sel_problems(s: ir.Sel) -> list[str]:
    from headcode.compiler.selectors import REGISTRY  # the selectors import the IR

    if s.kind not in REGISTRY:
        return [f"unknown selector kind {s.kind!r}"]
    return REGISTRY[s.kind].all_problems(s)


def validate(expr: ir.Expr, name: str = "program") -> list[tuple[float, ir.Sel]]:
    """The program as ``[(weight, Sel)]`` with zero-weight terms dropped; ``CompileError`` with
    every reason if anything in it cannot be compiled."""
    reasons = _problems(expr)
    if reasons:
        raise CompileError(reasons, name)
    terms = flatten(expr)
    assert all(isinstance(s, ir.Sel) for _, s in terms)  # guaranteed by _problems
    return [(float(w), s) for w, s in terms if w > 0]  # type: ignore[misc]
