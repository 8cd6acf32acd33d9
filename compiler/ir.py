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


def describe_selector(kind: str, k: int, rate: float, strict: bool, key: str | None, query: str | None,
                      aux: str | None = None) -> str:
    """``(offset k=1 key=punct)``: one selector term in a line (shared by IR and compiled terms)."""
    from headcode.compiler.selectors.registry import REGISTRY  # the selectors import this module

    params = REGISTRY[kind].params if kind in REGISTRY else ()
    parts = [kind]
    if aux:
        parts.append(f"aux={aux}")
    if "k" in params:
        parts.append(f"k={k}")
    if "rate" in params:
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
    aux: Pred | None = None  # the class that places the key or starts a segment (never a key restriction)

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
