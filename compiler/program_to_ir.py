"""Pass 1: program -> IR. Trace a program once on a text-free tracer into its selector
expression (``ir.Expr``), and flatten nested mixtures into one weighted list."""

from __future__ import annotations

from headcode.compiler import ir
from headcode.compiler.program import Program


def program_to_ir(program: Program) -> ir.Expr:
    """The program's selector expression; raises ``program.Untraceable`` with the reason."""
    return program.trace()


def flatten(expr: ir.Expr, scale: float = 1.0) -> list[tuple[float, ir.Expr]]:
    """``Mix`` trees -> ``[(weight, non-Mix expr)]``. Exact: a mixture is not renormalised, so
    ``w * (a + b)`` is ``w*a + w*b``."""
    if isinstance(expr, ir.Mix):
        out: list[tuple[float, ir.Expr]] = []
        for w, e in expr.terms:
            out += flatten(e, scale * float(w))
        return out
    return [(scale, expr)]
