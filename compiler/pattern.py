"""``Pattern``: a selector expression bound to one text, its combinators, and its dense reference.

Each selector function (``compiler/selectors/``) returns a ``Pattern``: a lazy expression
(``headcode.compiler.ir``) bound to the tokens. ``Pattern.dense()`` is the torch-free reference
``[T, T]``; the compiler reads ``Pattern.expr`` instead. Combinators: ``a + b``, ``w * a``,
``a & pred`` (restrict keys), ``when(pred, a)`` (gate queries), ``a & b`` / ``a | b`` (product /
maximum of patterns).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from headcode.compiler import ir
from headcode.compiler.predicates import Pred


class Pattern:
    """A selector expression bound to one text (or to a tracer, which has no text)."""

    __array_ufunc__ = None  # numpy defers to our operators: 0.5 * pattern stays a Pattern

    def __init__(self, expr: ir.Expr, t: Any):
        self.expr = expr
        self.t = t

    def _other(self, other: Any) -> ir.Expr:
        if not isinstance(other, Pattern):
            raise TypeError(f"cannot combine a pattern with {type(other).__name__}")
        return other.expr

    def __add__(self, other: Any) -> Pattern:
        if isinstance(other, (int, float)) and other == 0:
            return self  # sum([...]) starts from 0
        a, b = ir.as_mix(self.expr), ir.as_mix(self._other(other))
        return Pattern(ir.Mix(a.terms + b.terms), self.t)

    __radd__ = __add__

    def __mul__(self, w: Any) -> Pattern:
        if isinstance(w, Pattern):
            return self & w
        w = float(w)
        if not np.isfinite(w) or w < 0:
            raise ValueError(f"pattern weights must be finite and non-negative, got {w}")
        return Pattern(ir.Mix(tuple((w * v, e) for v, e in ir.as_mix(self.expr).terms)), self.t)

    __rmul__ = __mul__

    def __and__(self, other: Any) -> Pattern:
        if isinstance(other, Pred):
            return Pattern(_map_terms(self.expr, key=other), self.t)
        return Pattern(ir.Product(self.expr, self._other(other)), self.t)

    __rand__ = __and__

    def __or__(self, other: Any) -> Pattern:
        return Pattern(ir.Max(self.expr, self._other(other)), self.t)

    __ror__ = __or__

    def dense(self) -> np.ndarray:
        """The reference scores ``[T, T]`` (float64, zero above the diagonal)."""
        return evaluate(self.expr, self.t)

    def __repr__(self) -> str:
        return f"Pattern({ir.describe(self.expr)})"


def _map_terms(e: ir.Expr, key: Pred | None = None, query: Pred | None = None) -> ir.Expr:
    """Push a key restriction or query gate down to every selector of ``e``."""
    if isinstance(e, ir.Sel):
        if key is not None:
            e = e.restrict_keys(key)
        return e.gate_queries(query) if query is not None else e
    if isinstance(e, ir.Mix):
        return ir.Mix(tuple((w, _map_terms(x, key, query)) for w, x in e.terms))
    return ir.Gate(e, key=key, query=query)


def when(pred: Pred, pattern: Pattern) -> Pattern:
    """``pattern`` for queries where ``pred`` holds; nothing for the others."""
    if not isinstance(pred, Pred) or not isinstance(pattern, Pattern):
        raise TypeError("when(pred, pattern) takes a predicate and a pattern")
    return Pattern(_map_terms(pattern.expr, query=pred), pattern.t)


# helpers for selector references ---------------------------------------------------------
def gather(T: int, idx: np.ndarray) -> np.ndarray:
    """One-hot rows ``[T, T]``: ``idx[q]`` (or -1 for an empty row)."""
    m = np.zeros((T, T))
    q = np.nonzero(idx >= 0)[0]
    m[q, idx[q]] = 1.0
    return m


def latest(flags: np.ndarray, strict: bool = False) -> np.ndarray:
    """``[T]``: index of the latest position <= q (strict: < q) where ``flags`` holds, else -1."""
    T = len(flags)
    pos = np.where(flags, np.arange(T), -1)
    last = np.maximum.accumulate(pos) if T else pos
    if strict and T:
        last = np.concatenate([[-1], last[:-1]])
    return last


def causal(T: int) -> np.ndarray:
    """``[T, T]`` bool: key <= query."""
    ar = np.arange(T)
    return ar[None, :] <= ar[:, None]


def _rownorm(m: np.ndarray) -> np.ndarray:
    s = m.sum(1, keepdims=True)
    return np.divide(m, s, out=np.zeros_like(m), where=s > 0)


def _selector(s: ir.Sel, t: Any) -> np.ndarray:
    from headcode.compiler.selectors.registry import get  # the selectors import this module

    T = len(t)
    m = get(s.kind).reference(s, t) * causal(T)
    if s.key is not None:
        m = m * t.has(s.key)[None, :]
    if s.query is not None:
        m = m * t.has(s.query)[:, None]
    return _rownorm(m)


def evaluate(e: ir.Expr, t: Any) -> np.ndarray:
    """Reference scores of an expression on one text: ``[T, T]`` float64."""
    if isinstance(e, ir.Sel):
        return _selector(e, t)
    if isinstance(e, ir.Mix):
        T = len(t)
        out = np.zeros((T, T))
        for w, x in e.terms:
            out += w * evaluate(x, t)
        return out
    if isinstance(e, ir.Product):
        return _rownorm(evaluate(e.a, t) * evaluate(e.b, t))
    if isinstance(e, ir.Max):
        return _rownorm(np.maximum(evaluate(e.a, t), evaluate(e.b, t)))
    if isinstance(e, ir.Gate):
        m = evaluate(e.inner, t)
        if e.key is not None:
            m = m * t.has(e.key)[None, :]
        if e.query is not None:
            m = m * t.has(e.query)[:, None]
        return _rownorm(m)
    raise TypeError(f"not a pattern expression: {type(e).__name__}")


def attention_from_scores(scores: np.ndarray) -> np.ndarray:
    """The framework's step: causal mask, row-normalise; a row with no mass goes to token 0.

    ``scores [T, T]`` non-negative -> attention ``[T, T]`` (float64, rows sum to 1).
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] != s.shape[1]:
        raise ValueError(f"a program must return a square [T, T] matrix, got shape {s.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError("a program returned NaN or infinite scores")
    if np.any(s < 0):
        raise ValueError("a program returned negative scores")
    s = np.tril(s)
    tot = s.sum(1, keepdims=True)
    out = np.divide(s, tot, out=np.zeros_like(s), where=tot > 0)
    if s.shape[0]:
        out[tot[:, 0] <= 0, 0] = 1.0
    return out
