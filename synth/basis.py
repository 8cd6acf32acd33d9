"""The offline search's dictionary: selector terms written in the program vocabulary, and
their patterns on each text, computed once per text and shared by every head of a model.

A term is a source expression (``"most_recent(t, noun_like)"``) that ``Program`` can run; the
dictionary (``readable_terms``) is written over the named classes of ``compiler.classes``. On one
text each term is a row-stochastic ``[T, T]`` pattern (a row may be empty); it is stored as a
column of a sparse matrix over the packed lower triangle (``runtime.model.patterns.pack``: row
``q`` holds keys ``0..q``, rows contiguous), which is the layout captured attention comes in.
Most terms are one key per row, so the dictionary of ~90 terms on 150 paragraphs of ~150
tokens takes a few hundred MB.

Query classes partition the queries by a predicate of the query token; the search fits one
mixture per class and writes it as ``when(pred, ...)``. The readable partitions split on one
named class: ``split:noun_like`` is ``when(noun_like, ...) + when(~noun_like, ...)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.sparse as sp

from headcode.compiler import pattern
from headcode.compiler.namespace import namespace
from headcode.compiler.selectors import registry
from headcode.compiler.tokens import Tokens

TINY = 1e-6  # pattern entries below this (far tails of fast decays) are stored as zero

THE = registry.THE
# query classes a head may split on: ``when(c, ...) + when(~c, ...)``
SPLIT_CLASSES = ("punct", "function_word", "noun_like", "verb_like", "determiner", "pronoun", "clause_boundary")


def readable_terms() -> tuple[str, ...]:
    """The readable dictionary: every registered selector's ``search`` expressions over named
    classes (~100; registry order, deterministic)."""
    from headcode.compiler.selectors import REGISTRY

    return tuple(x for sel in REGISTRY.values() for x in sel.search)


@dataclass(frozen=True)
class QueryClass:
    """One cell of a partition of queries: ``pred`` is a predicate expression (``None``: all)."""

    name: str
    pred: str | None


OTHER_COARSE = "~(punct | function_word | content_word)"

PARTITIONS: dict[str, tuple[QueryClass, ...]] = {
    "all": (QueryClass("all", None),),
    "coarse": (QueryClass("punct", "punct"), QueryClass("function", "function_word"),
               QueryClass("content", "content_word"), QueryClass("other", OTHER_COARSE)),
    "fine": (QueryClass("boundary", "punct & boundary"), QueryClass("punct", "punct & ~boundary"),
             QueryClass("function", "function_word"),
             QueryClass("word", "content_word & word_start"),
             QueryClass("piece", "content_word & ~word_start"),
             QueryClass("other", OTHER_COARSE)),
}


PARTITIONS.update({
    f"split:{c}": (QueryClass(c, c), QueryClass(f"not {c}", f"~{c}")) for c in SPLIT_CLASSES
})


def _namespace() -> dict:
    return namespace()


def eval_pred(src: str | None, t: Tokens) -> np.ndarray:
    """``[T] bool``: a predicate expression on each token (``None``: all true)."""
    if src is None:
        return np.ones(len(t), dtype=bool)
    pred = eval(src, _namespace())  # noqa: S307 - our own fixed expressions
    return t.has(pred)


def term_pattern(src: str, t: Tokens) -> np.ndarray:
    """The dense ``[T, T]`` pattern of one dictionary term on one text (float64)."""
    ns = _namespace()
    ns["t"] = t
    pat = eval(src, ns)  # noqa: S307 - our own fixed expressions
    return pattern.evaluate(pat.expr, t)


@dataclass(frozen=True, eq=False)
class TextBasis:
    """The dictionary on one text: ``matrix [T(T+1)/2, K]`` (CSC, float32) over packed entries."""

    T: int
    matrix: sp.csc_matrix
    classes: dict[str, np.ndarray]  # query-class name -> [T] bool (every partition's cells)

    @cached_property
    def row_of_entry(self) -> np.ndarray:
        return np.repeat(np.arange(self.T), np.arange(1, self.T + 1))

    @cached_property
    def row_start(self) -> np.ndarray:
        """``[T]``: the packed index of each row's first entry (key 0)."""
        q = np.arange(self.T)
        return q * (q + 1) // 2


def text_basis(t: Tokens, terms: Sequence[str]) -> TextBasis:
    T = len(t)
    r, c = np.tril_indices(T)
    dense = np.empty((r.shape[0], len(terms)), dtype=np.float32)
    for j, src in enumerate(terms):
        dense[:, j] = term_pattern(src, t)[r, c]
    dense[dense < TINY] = 0.0
    matrix = sp.csc_matrix(dense)
    classes = {}
    for part in PARTITIONS.values():
        for qc in part:
            classes[qc.name if qc.pred is None else qc.pred] = eval_pred(qc.pred, t)
    return TextBasis(T, matrix, classes)


def class_key(qc: QueryClass) -> str:
    return qc.name if qc.pred is None else qc.pred
