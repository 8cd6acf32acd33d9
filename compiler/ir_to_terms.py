"""Pass 3: IR -> one head's kernel terms and tables. Merge equal terms, evaluate every predicate over the vocabulary
into one table stack, and give each term its table rows."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from headcode.compiler import ir
from headcode.compiler.head import Term
from headcode.compiler.predicates import Pred
from headcode.compiler.tables import vocab_table


def merge_terms(terms: list[tuple[float, ir.Sel]]) -> list[tuple[float, ir.Sel]]:
    """Sum the weights of identical selectors (same kind, parameters and predicate names), in
    first-seen order: ``0.5*previous(t) + 0.5*previous(t)`` is one term of weight 1."""
    merged: dict[ir.Sel, float] = {}
    for w, s in terms:
        merged[s] = merged.get(s, 0.0) + w
    return [(w, s) for s, w in merged.items()]


class _Stack:
    """Predicates -> rows of a ``[n_tables, vocab] uint8`` stack (one row per distinct name)."""

    def __init__(self, pieces: Sequence[str], fingerprint: str):
        self.pieces, self.fingerprint = pieces, fingerprint
        self.names: list[str] = []
        self.rows: list[np.ndarray] = []

    def row(self, pred: Pred | None) -> int:
        if pred is None:
            return -1
        if pred.name not in self.names:
            self.rows.append(vocab_table(pred, self.pieces, self.fingerprint))
            self.names.append(pred.name)
        return self.names.index(pred.name)

    def array(self) -> np.ndarray:
        if not self.rows:
            return np.zeros((0, len(self.pieces)), dtype=np.uint8)
        return np.stack(self.rows).astype(np.uint8)


def ir_to_terms(terms: list[tuple[float, ir.Sel]], pieces: Sequence[str], fingerprint: str
               ) -> tuple[tuple[Term, ...], tuple[str, ...], np.ndarray]:
    """Validated ``[(weight, Sel)]`` -> (terms, table names, tables ``[n_tables, vocab] uint8``).
    ``tables.TableError`` if a predicate raises on a piece."""
    stack = _Stack(pieces, fingerprint)
    out = []
    for w, s in merge_terms(terms):
        out.append(Term(kind=s.kind, weight=w, k=s.k, rate=s.rate, strict=s.strict,
                        key=s.key.name if s.key else None, query=s.query.name if s.query else None,
                        key_table=stack.row(s.key), query_table=stack.row(s.query),
                        aux=s.aux.name if s.aux else None, aux_table=stack.row(s.aux)))
    return tuple(out), tuple(stack.names), stack.array()
