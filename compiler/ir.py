"""The IR of a traced program: weighted selector terms.

A selector is a distribution over keys ``k <= q`` for every query ``q`` (a row may be
empty). A program's pattern is ``sum_i w_i * S_i`` (``Mix``); the framework then applies
the causal mask and normalises each row; a row with no mass at all goes to the first
token. ``Product`` and ``Max`` exist so the reference can evaluate every program the
vocabulary can write; they are not lowered to kernels (the validator says so).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Union

from headcode.compiler.predicates import Pred

# kind -> one-line meaning (stable names: they double as test ids and benchmark groups)
SELECTOR_KINDS: dict[str, str] = {
    "offset": "the key k positions back (k=0: the token itself)",
    "first": "the first token of the text",
    "uniform": "uniform over all keys so far",
    "sentence": "uniform over the keys of the query's sentence so far",
    "same_token": "uniform over earlier occurrences of the query's own token (itself included)",
    "most_recent": "the latest key so far (strict: before the query) where the key predicate holds",
    "sentence_start": "the first token of the query's sentence",
    "word_start": "the first token of the query's word",
    "induction": "the token right after the latest earlier occurrence of the query's token",
    "decay": "weights rate**(q-k) over keys so far",
    "segment_start": "the first token of the query's segment: the latest key that is the text start "
                     "or follows a token where the aux predicate holds (clause_boundary: the clause start)",
    "anchor": "the key k positions after (k < 0: before) the latest key so far (strict: before the "
              "query) where the aux predicate holds",
}
# kinds that read a per-term auxiliary predicate (not a key restriction: it places the key)
AUX_KINDS = frozenset({"segment_start", "anchor"})


def describe_selector(kind: str, k: int, rate: float, strict: bool, key: str | None, query: str | None,
                      aux: str | None = None) -> str:
    """``(offset k=1 key=punct)``: one selector term in a line (shared by IR and compiled terms)."""
    parts = [kind]
    if aux:
        parts.append(f"aux={aux}")
    if kind in ("offset", "anchor"):
        parts.append(f"k={k}")
    if kind == "decay":
        parts.append(f"rate={rate:g}")
    if strict:
        parts.append("strict")
    if key:
        parts.append(f"key={key}")
    if query:
        parts.append(f"query={query}")
    return "(" + " ".join(parts) + ")"


@dataclass(frozen=True)
class Sel:
    """One selector term. ``key`` restricts keys (then renormalises); ``query`` gates rows."""

    kind: str
    k: int = 0
    rate: float = 0.0
    strict: bool = False
    key: Pred | None = None
    query: Pred | None = None
    aux: Pred | None = None  # AUX_KINDS: the predicate that places the key (never a key restriction)

    def describe(self) -> str:
        return describe_selector(self.kind, self.k, self.rate, self.strict,
                                 self.key and self.key.name, self.query and self.query.name,
                                 self.aux and self.aux.name)

    def restrict_keys(self, pred: Pred) -> Sel:
        return replace(self, key=pred if self.key is None else self.key & pred)

    def gate_queries(self, pred: Pred) -> Sel:
        return replace(self, query=pred if self.query is None else self.query & pred)


@dataclass(frozen=True)
class Product:
    """Elementwise product of two patterns, renormalised per row (reference only)."""

    a: Expr
    b: Expr


@dataclass(frozen=True)
class Max:
    """Elementwise maximum of two patterns, renormalised per row (reference only)."""

    a: Expr
    b: Expr


@dataclass(frozen=True)
class Gate:
    """A non-selector expression gated by a query predicate or restricted by a key predicate."""

    inner: Expr
    key: Pred | None = None
    query: Pred | None = None


@dataclass(frozen=True)
class Mix:
    """``sum_i w_i * term_i`` with non-negative weights."""

    terms: tuple[tuple[float, Expr], ...]


Expr = Union[Sel, Product, Max, Gate, Mix]


def as_mix(e: Expr) -> Mix:
    return e if isinstance(e, Mix) else Mix(((1.0, e),))


def describe(e: Expr) -> str:
    if isinstance(e, Sel):
        return e.describe()
    if isinstance(e, Mix):
        return " + ".join(f"{w:g}*{describe(t)}" for w, t in e.terms)
    if isinstance(e, Product):
        return f"({describe(e.a)} & {describe(e.b)})"
    if isinstance(e, Max):
        return f"({describe(e.a)} | {describe(e.b)})"
    return f"gate({describe(e.inner)}, key={e.key and e.key.name}, query={e.query and e.query.name})"
