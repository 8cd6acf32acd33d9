"""``Program``: a named piece of Python source that scores keys for every query.

``def attend(t: Tokens) -> Pattern | ndarray[T, T]``. The framework, not the program,
applies the causal mask and normalises rows (``pattern.attention_from_scores``), so a
program cannot leak a future token.

``Program.from_source`` builds the callable *in this process*: it is for programs you wrote
yourself (tests, the catalogue, library code), and no generated text reaches it (the
explain and compile paths only ever hand source to the sandbox). Even so it holds the
sandbox's language rules: the source is checked first (``compiler.check``) and runs with the
same restricted builtins and import allow-list as in the worker (``check.program_builtins``).
Program source from anywhere else (a language model, a program file, a plan) never runs in
the host: ``headcode.compiler.sandbox`` runs it (``run_programs``) and compiles it
(``compiler.compile_source``).
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from headcode.compiler import check, ir, pattern
from headcode.compiler.namespace import namespace


class ProgramError(ValueError):
    """A program's source cannot be turned into a program (syntax, no function, ...)."""


class Untraceable(Exception):
    """The program did something the tracer cannot record (reads token data, uses numpy, ...)."""


@dataclass(frozen=True, eq=False)
class Program:
    name: str
    source: str
    fn: Callable[[Any], Any] = field(repr=False)

    @classmethod
    def from_source(cls, source: str, name: str | None = None) -> Program:
        """Build from source defining one function (``attend`` if several are defined)."""
        try:
            tree = ast.parse(source)
        except SyntaxError as e:
            raise ProgramError(f"syntax error in program source, line {e.lineno}: {e.msg}") from e
        reasons = check.check_source(source)
        if reasons:
            raise ProgramError("program refused: " + "; ".join(reasons))
        fns = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
        if not fns:
            raise ProgramError("program source defines no function (expected `def attend(t): ...`)")
        fname = "attend" if "attend" in fns else fns[-1]
        ns = namespace()
        ns["__builtins__"] = check.program_builtins()
        exec(compile(tree, f"<program {name or fname}>", "exec"), ns)  # noqa: S102 - trusted path
        return cls(name or fname, source, ns[fname])

    @cached_property
    def _expr(self) -> ir.Expr | None:
        try:
            return self.trace()
        except Untraceable:
            return None

    def scores(self, t: Any) -> np.ndarray:
        """The program's raw scores on one text ``[T, T]``, causal whatever the program does:
        a traced program is evaluated from its IR (what the compiled head computes); a
        free-form one on prefixes (row q from tokens <= q, ``prefix_scores``)."""
        if self._expr is not None:
            return pattern.evaluate(self._expr, t)
        return prefix_scores(self.fn, t)

    def attention(self, t: Any) -> np.ndarray:
        """The attention this program gives on one text: ``[T, T]``, causal, rows sum to 1."""
        return pattern.attention_from_scores(self.scores(t))

    def trace(self) -> ir.Expr:
        """Run once on a tracer and return the selector expression; ``Untraceable`` if it cannot."""
        tracer = Tracer()
        try:
            out = self.fn(tracer)
        except Untraceable:
            raise
        except Exception as e:  # noqa: BLE001 - any failure on the tracer means "not traceable"
            raise Untraceable(f"program failed on the tracer: {type(e).__name__}: {e}") from e
        if not isinstance(out, pattern.Pattern):
            raise Untraceable(f"program returned {type(out).__name__}, not a selector pattern")
        return out.expr

    def traced(self) -> Program:
        """This program as its traced IR (``Untraceable`` if it has none): the same scores
        on every text as the compiled head, and causal by construction."""
        expr = self.trace()
        return Program(self.name, self.source, lambda t: pattern.Pattern(expr, t))


def raw_scores(fn: Callable[[Any], Any], t: Any) -> np.ndarray:
    """``fn(t)`` as a checked ``[T, T]`` float64 matrix (finite, non-negative)."""
    out = fn(t)
    s = out.dense() if isinstance(out, pattern.Pattern) else np.asarray(out, dtype=np.float64)
    T = len(t)
    if s.shape != (T, T):
        raise ValueError(f"returned shape {tuple(s.shape)}, expected ({T}, {T})")
    if not np.all(np.isfinite(s)):
        raise ValueError("returned NaN or infinite scores")
    if np.any(s < 0):
        raise ValueError("returned negative scores")
    return s


def prefix_scores(fn: Callable[[Any], Any], t: Any) -> np.ndarray:
    """Row q of ``fn`` run on ``t.prefix(q + 1)`` only: a free-form program cannot see the
    future. ``[T, T]``, zero above the diagonal; T calls of ``fn``."""
    T = len(t)
    out = np.zeros((T, T))
    for q in range(T):
        out[q, :q + 1] = raw_scores(fn, t.prefix(q + 1))[q]
    return out


class Tracer:
    """A ``Tokens`` stand-in with no text: selectors record terms; reading token data fails."""

    def __getattr__(self, name: str) -> Any:
        raise Untraceable(f"program reads token data directly (t.{name}); only selectors can be compiled")

    def __len__(self) -> int:
        raise Untraceable("program reads the text length (len(t)); only selectors can be compiled")
