"""Per-head key word sets for the offline search: words a head attends to wherever they are.

Many heads put much more (or much less) attention on some key words than their share. On the
fit split, for rows ``q >= 1`` a key ``k`` in ``1..q`` *receives* ``A[q, k]`` and is *expected*
to get ``(1 - A[q, 0]) / q``; a word's salience is its received over its expected total, over
its occurrences (``piece.strip().lower()``, the normalisation of ``token_in``). Words far above
their share make tiers of key sets, words far below make an avoided set, and each set gives a
few extra dictionary terms written with ``token_in(...)`` (a readable, compilable predicate)::

    0.4 * decay(t, 0.9, token_in('ball', 'cat', 'lily')) + 0.6 * first(t)

``extra_columns`` computes those terms on one text directly in the packed layout (exactly what
``compiler.vocab`` evaluates, only faster; a test checks the two agree).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from headcode.runtime.patterns import HeadPatterns
from headcode.runtime.tokens import Tokens

TINY = 1e-6  # as basis.TINY


@dataclass(frozen=True)
class KeywordOptions:
    min_count: int = 4                  # occurrences (as keys) on fit for a word to be rated
    tiers: tuple[float, ...] = (3.0, 1.7)  # salience thresholds: each tier is words above it
    avoid: float = 0.3                  # words under this salience make the avoided set
    max_words: int = 48                 # per set (the most salient / the most avoided)
    rates: tuple[float, ...] = (0.7, 0.95)


def normalise(piece: str) -> str:
    return piece.strip().lower()


@dataclass(frozen=True)
class Salience:
    """``words [V]`` (sorted), ``ratio [H, V]`` received / expected, ``count [V]`` on fit."""

    words: tuple[str, ...]
    ratio: np.ndarray
    count: np.ndarray


def _tril(T: int, cache: dict) -> tuple[np.ndarray, np.ndarray]:
    if T not in cache:
        cache[T] = np.tril_indices(T)
    return cache[T]


def salience(patterns: HeadPatterns, texts: Sequence[int]) -> Salience:
    """Every head's salience of every word seen on ``texts`` (fit), in one pass."""
    words = sorted({normalise(p) for i in texts for p in patterns.tokens[i].pieces[1:]} - {""})
    index = {w: j for j, w in enumerate(words)}
    H, V = len(patterns.heads), len(words)
    rec, exp = np.zeros((V, H)), np.zeros((V, H))
    count = np.zeros(V, dtype=np.int64)
    cache: dict = {}
    for i in texts:
        t = patterns.tokens[i]
        T = len(t)
        wid = np.array([index.get(normalise(p), -1) for p in t.pieces], dtype=np.int64)
        np.add.at(count, wid[1:][wid[1:] >= 0], 1)
        r, c = _tril(T, cache)
        m = (r >= 1) & (c >= 1) & (wid[c] >= 0)
        if not m.any():
            continue
        A = patterns.packed[i]                                  # [H, n]
        rows = r[m]
        sink = A[:, rows * (rows + 1) // 2]                     # A[q, 0] of each entry's row
        M = sp.csr_matrix((np.ones(rows.size), (np.arange(rows.size), wid[c[m]])), shape=(rows.size, V))
        rec += M.T @ A[:, m].T.astype(np.float64)
        exp += M.T @ ((1.0 - sink) / rows).T.astype(np.float64)
    ratio = np.divide(rec, exp, out=np.ones_like(rec), where=exp > 1e-9).T
    return Salience(tuple(words), ratio, count)


def word_sets(sal: Salience, h: int, opt: KeywordOptions) -> tuple[list[tuple[str, ...]], tuple[str, ...]]:
    """``(tiers, avoided)`` for head index ``h``: nested key sets (most salient first), avoided set."""
    ok = sal.count >= opt.min_count
    r = sal.ratio[h]
    order = np.lexsort((np.arange(r.size), -r))             # most salient first, ties by word
    tiers: list[tuple[str, ...]] = []
    for th in opt.tiers:
        pick = [j for j in order if ok[j] and r[j] >= th][: opt.max_words]
        s = tuple(sorted(sal.words[j] for j in pick))
        if s and (not tiers or s != tiers[-1]):
            tiers.append(s)
    low = [j for j in order[::-1] if ok[j] and r[j] <= opt.avoid][: opt.max_words]
    return tiers, tuple(sorted(sal.words[j] for j in low))


@dataclass(frozen=True)
class Extra:
    """One extra term: ``kind`` in uniform/decay/most_recent/sentence, on ``words`` (or not them)."""

    kind: str
    words: frozenset[str]
    negate: bool = False
    rate: float = 0.0
    strict: bool = False

    @property
    def source(self) -> str:
        pred = "token_in(" + ", ".join(repr(w) for w in sorted(self.words)) + ")"
        pred = "~" + pred if self.negate else pred
        if self.kind == "decay":
            return f"decay(t, {self.rate:g}, {pred})"
        if self.kind == "most_recent":
            return f"most_recent(t, {pred}, strict=True)" if self.strict else f"most_recent(t, {pred})"
        if self.kind == "sentence":
            return f"in_same_sentence(t, {pred})"
        return f"uniform(t, {pred})"


def extra_terms(sal: Salience, h: int, opt: KeywordOptions) -> list[Extra]:
    """The extra dictionary terms of head index ``h`` (deterministic order)."""
    tiers, avoided = word_sets(sal, h, opt)
    out: list[Extra] = []
    for s in tiers:
        ws = frozenset(s)
        out += [Extra("uniform", ws), Extra("sentence", ws), Extra("most_recent", ws),
                Extra("most_recent", ws, strict=True)]
        out += [Extra("decay", ws, rate=r) for r in opt.rates]
    if avoided:
        ws = frozenset(avoided)
        out += [Extra("uniform", ws, negate=True), Extra("decay", ws, negate=True, rate=0.9)]
    return out


def _latest(flags: np.ndarray, strict: bool) -> np.ndarray:
    T = len(flags)
    last = np.maximum.accumulate(np.where(flags, np.arange(T), -1))
    return np.concatenate([[-1], last[:-1]]) if strict else last


def extra_columns(extras: Sequence[Extra], t: Tokens) -> np.ndarray:
    """``[T(T+1)/2, E]`` float32: the extra terms' patterns on one text, packed."""
    T = len(t)
    r, c = np.tril_indices(T)
    starts = np.arange(T) * (np.arange(T) + 1) // 2
    norm = [normalise(p) for p in t.pieces]
    out = np.zeros((r.size, len(extras)), dtype=np.float32)
    masks: dict[tuple[frozenset[str], bool], np.ndarray] = {}
    for j, x in enumerate(extras):
        key = (x.words, x.negate)
        if key not in masks:
            masks[key] = np.fromiter((w in x.words for w in norm), dtype=bool, count=T) ^ x.negate
        m = masks[key]
        if x.kind == "most_recent":
            last = _latest(m, x.strict)
            col = ((c == last[r]) & (last[r] >= 0)).astype(np.float64)
        else:
            col = m[c].astype(np.float64)
            if x.kind == "decay":
                col = col * x.rate ** (r - c).astype(np.float64)
            elif x.kind == "sentence":
                si = t.sentence_index
                col = col * (si[c] == si[r])
            s = np.add.reduceat(col, starts)
            col = col * np.repeat(np.divide(1.0, s, out=np.zeros_like(s), where=s > 0), np.arange(1, T + 1))
        col[col < TINY] = 0.0
        out[:, j] = col
    return out


def stack_columns(cols: dict[int, np.ndarray], gather: Sequence[tuple[int, np.ndarray]], E: int) -> np.ndarray:
    """``[n, E]``: per-text extra columns (``cols[text]``, full packed triangle) on a stack's entries."""
    if not gather:
        return np.zeros((0, E), dtype=np.float32)
    return np.concatenate([cols[i][ent] for i, ent in gather])


def gram(D: np.ndarray, a: np.ndarray, starts: np.ndarray, omega: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(D'WD, D'Wa)`` with entry weights ``omega`` of their row (rows of one key weigh 0)."""
    lengths = np.diff(np.append(starts, D.shape[0]))
    e = np.repeat(np.where(lengths > 1, omega, 0.0), lengths)
    De = D * e[:, None]
    return De.T @ D, De.T @ np.asarray(a, dtype=np.float64)
