"""The program vocabulary: selectors over ``Tokens`` and the combinators that mix them.

A program is plain Python::

    def attend(t):
        return 0.8 * previous(t, 1) + 0.2 * first(t)

Each selector returns a ``Pattern``: a lazy expression (``headcode.compiler.ir``) bound to
the tokens. ``Pattern.dense()`` is the torch-free reference ``[T, T]``; the compiler reads
``Pattern.expr`` instead. Combinators: ``a + b``, ``w * a``, ``a & pred`` (restrict keys),
``when(pred, a)`` (gate queries), ``a & b`` / ``a | b`` (product / maximum of patterns).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from headcode.compiler import classes, ir
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


# selectors ---------------------------------------------------------------------------
def previous(t: Any, k: int = 1) -> Pattern:
    """The token ``k`` positions back."""
    if int(k) < 0:
        raise ValueError("previous(t, k) needs k >= 0")
    return Pattern(ir.Sel("offset", k=int(k)), t)


def current(t: Any) -> Pattern:
    """The query token itself."""
    return Pattern(ir.Sel("offset", k=0), t)


def first(t: Any) -> Pattern:
    """The first token of the text (the usual attention sink)."""
    return Pattern(ir.Sel("first"), t)


def uniform(t: Any, pred: Pred | None = None) -> Pattern:
    """Uniform over all keys so far (where ``pred`` holds)."""
    return Pattern(ir.Sel("uniform", key=pred), t)


def in_same_sentence(t: Any, pred: Pred | None = None) -> Pattern:
    """Uniform over the keys of the query's own sentence so far (where ``pred`` holds)."""
    return Pattern(ir.Sel("sentence", key=pred), t)


def same_token(t: Any) -> Pattern:
    """Uniform over earlier occurrences of the query's token, itself included."""
    return Pattern(ir.Sel("same_token"), t)


def most_recent(t: Any, pred: Pred, strict: bool = False) -> Pattern:
    """The latest key where ``pred`` holds (``strict``: strictly before the query)."""
    if not isinstance(pred, Pred):
        raise TypeError("most_recent(t, pred) needs a predicate such as punct or tok(...)")
    return Pattern(ir.Sel("most_recent", strict=bool(strict), key=pred), t)


def sentence_start(t: Any) -> Pattern:
    """The first token of the query's sentence."""
    return Pattern(ir.Sel("sentence_start"), t)


def word_start(t: Any) -> Pattern:
    """The first token of the query's word."""
    return Pattern(ir.Sel("word_start"), t)


def induction(t: Any) -> Pattern:
    """The token right after the latest earlier occurrence of the query's token."""
    return Pattern(ir.Sel("induction"), t)


def decay(t: Any, rate: float, pred: Pred | None = None) -> Pattern:
    """Recency: weights ``rate**(q-k)`` over keys so far (where ``pred`` holds), 0 < rate < 1."""
    rate = float(rate)
    if not 0.0 < rate < 1.0:
        raise ValueError(f"decay rate must be in (0, 1), got {rate}")
    return Pattern(ir.Sel("decay", rate=rate, key=pred), t)


def clause_start(t: Any) -> Pattern:
    """The first token of the query's clause: the text start or the token after the latest
    clause boundary (``, ; : . ! ?`` or a newline) before the query."""
    return Pattern(ir.Sel("segment_start", aux=classes.clause_boundary), t)


def after_last(t: Any, pred: Pred) -> Pattern:
    """The token right after the latest earlier token where ``pred`` holds (e.g. the word after
    the latest determiner)."""
    if not isinstance(pred, Pred):
        raise TypeError("after_last(t, pred) needs a predicate such as determiner")
    return Pattern(ir.Sel("anchor", k=1, strict=True, aux=pred), t)


def before_last(t: Any, pred: Pred) -> Pattern:
    """The token right before the latest token so far where ``pred`` holds (e.g. the word before
    the latest verb-like word: often its subject)."""
    if not isinstance(pred, Pred):
        raise TypeError("before_last(t, pred) needs a predicate such as verb_like")
    return Pattern(ir.Sel("anchor", k=-1, aux=pred), t)


def nearest_name(t: Any) -> Pattern:
    """The nearest earlier name (``most_recent(t, name, strict=True)``)."""
    return most_recent(t, classes.name, strict=True)


def when(pred: Pred, pattern: Pattern) -> Pattern:
    """``pattern`` for queries where ``pred`` holds; nothing for the others."""
    if not isinstance(pred, Pred) or not isinstance(pattern, Pattern):
        raise TypeError("when(pred, pattern) takes a predicate and a pattern")
    return Pattern(_map_terms(pattern.expr, query=pred), pattern.t)


SELECTORS = {
    f.__name__: f
    for f in (previous, current, first, uniform, in_same_sentence, same_token, most_recent,
              sentence_start, word_start, induction, decay, clause_start, after_last, before_last,
              nearest_name)
}


# reference evaluation -------------------------------------------------------------------
def _rownorm(m: np.ndarray) -> np.ndarray:
    s = m.sum(1, keepdims=True)
    return np.divide(m, s, out=np.zeros_like(m), where=s > 0)


def _gather(T: int, idx: np.ndarray) -> np.ndarray:
    """One-hot rows: ``idx[q]`` (or -1 for an empty row)."""
    m = np.zeros((T, T))
    q = np.nonzero(idx >= 0)[0]
    m[q, idx[q]] = 1.0
    return m


def _latest(flags: np.ndarray, strict: bool) -> np.ndarray:
    """``[T]``: index of the latest position <= q (or < q) where flags holds, else -1."""
    T = len(flags)
    pos = np.where(flags, np.arange(T), -1)
    last = np.maximum.accumulate(pos) if T else pos
    if strict:
        last = np.concatenate([[-1], last[:-1]]) if T else last
    return last


def _anchor_index(s: ir.Sel, t: Any) -> np.ndarray:
    """``[T]``: the key of a ``segment_start`` or ``anchor`` term at each query, or -1."""
    T = len(t)
    aux = t.has(s.aux)
    if s.kind == "segment_start":
        begin = np.zeros(T, dtype=bool)
        if T:
            begin[0] = True
            begin[1:] = aux[:-1]
        return _latest(begin, False)
    last = _latest(aux, s.strict)
    idx = np.where(last >= 0, last + s.k, -1)
    return np.where((idx >= 0) & (idx <= np.arange(T)), idx, -1)


def _selector(s: ir.Sel, t: Any) -> np.ndarray:
    T = len(t)
    ar = np.arange(T)
    causal = ar[None, :] <= ar[:, None]
    keys = np.ones(T, dtype=bool) if s.key is None else t.has(s.key)
    if s.kind == "offset":
        m = _gather(T, np.where(ar - s.k >= 0, ar - s.k, -1))
    elif s.kind == "first":
        m = _gather(T, np.zeros(T, dtype=np.int64))
    elif s.kind == "uniform":
        m = causal.astype(float)
    elif s.kind == "sentence":
        si = t.sentence_index
        m = (causal & (si[None, :] == si[:, None])).astype(float)
    elif s.kind == "same_token":
        m = (causal & (t.ids[None, :] == t.ids[:, None])).astype(float)
    elif s.kind == "most_recent":
        m = _gather(T, _latest(keys, s.strict))
    elif s.kind == "sentence_start":
        m = _gather(T, _latest(t.sentence_begin, False))
    elif s.kind == "word_start":
        m = _gather(T, _latest(t.word_begin, False))
    elif s.kind == "induction":
        idx = np.full(T, -1)
        last: dict[int, int] = {}
        for q in range(T):
            j = last.get(int(t.ids[q]), -1)
            idx[q] = j + 1 if j >= 0 else -1
            last[int(t.ids[q])] = q
        m = _gather(T, idx)
    elif s.kind in ("segment_start", "anchor"):
        m = _gather(T, _anchor_index(s, t))
    elif s.kind == "decay":
        d = (ar[:, None] - ar[None, :]).astype(float)
        m = np.where(causal, s.rate ** np.maximum(d, 0), 0.0)
    else:
        raise ValueError(f"unknown selector kind {s.kind!r}")
    m = m * keys[None, :]
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
