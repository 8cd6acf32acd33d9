"""Output-error grams: fit mixture weights on what the next layer receives.

For a head with values ``V [T, D]`` and true attention ``A``, a mixture ``sum_i w_i S_i`` of
dictionary terms gives the output error

    err(w) = ||(sum_i w_i S_i - A) V||^2 / ||A V||^2 = (w'Gw - 2 b'w + c) / c

with ``Y_i = S_i V``, ``G_ij = sum <Y_i, Y_j>``, ``b_i = sum <Y_i, A V>``, ``c = ||A V||^2``,
summed over the rows of a query class and over texts (the pooled ratio of ``synth.scores``).
This is exact where every term of the mixture has a key on the row and the weights sum to 1
(the program normalises its rows); rows a term leaves empty make it an approximation, which is
why reported errors are always measured on the program itself.

``G`` depends only on the KV head (heads of one group share values), so it is computed once
per (query class, KV head); ``b`` and ``c`` once per head, all in one pass over the texts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from headcode.runtime.patterns import HeadPatterns, unpack
from headcode.synth.fit import greedy_path


@dataclass(frozen=True, eq=False)
class OutputGrams:
    """``G[key] [n_kv, K, K]``, ``b[key] [H, K]``, ``c[key] [H]`` over some texts' rows of class ``key``."""

    G: dict[str, np.ndarray]
    b: dict[str, np.ndarray]
    c: dict[str, np.ndarray]

    def error(self, key: str, h: int, kv: int, w: np.ndarray) -> tuple[float, float]:
        """``(numerator, denominator)`` of the output error of weights ``w [K]`` on class ``key``."""
        G, b, c = self.G[key][kv], self.b[key][h], float(self.c[key][h])
        return max(float(w @ G @ w - 2.0 * b @ w + c), 0.0), c


def term_values(matrix: sp.csc_matrix, T: int, v: np.ndarray) -> np.ndarray:
    """``Y [T, K, D]``: every dictionary term (packed ``matrix [T(T+1)/2, K]``) applied to ``v [T, D]``."""
    coo = matrix.tocoo()
    K = matrix.shape[1]
    rows = np.repeat(np.arange(T), np.arange(1, T + 1))
    starts = np.arange(T) * (np.arange(T) + 1) // 2
    r = rows[coo.row]
    keys = coo.row - starts[r]
    Q = sp.csr_matrix((coo.data.astype(np.float64), (r * K + coo.col, keys)), shape=(T * K, T))
    return np.asarray(Q @ v.astype(np.float64)).reshape(T, K, -1)


def output_grams(patterns: HeadPatterns, bases: dict, texts: Sequence[int], keys: Sequence[str]) -> OutputGrams:
    """Grams of every head over ``texts`` for each class key (``bases[i]``: ``basis.TextBasis``).

    A key ``~k`` whose ``k`` and ``all`` are also keys is derived as ``all - k`` (same rows)."""
    H = len(patterns.heads)
    K = next(iter(bases.values())).matrix.shape[1]
    n_kv = max(patterns.kv_of_head) + 1 if H else 0
    direct = [k for k in keys if not (k.startswith("~") and k[1:] in keys and "all" in keys)]
    G = {k: np.zeros((n_kv, K, K)) for k in direct}
    b = {k: np.zeros((H, K)) for k in direct}
    c = {k: np.zeros(H) for k in direct}
    kv_of = np.asarray(patterns.kv_of_head)
    for i in texts:
        tb, T = bases[i], len(patterns.tokens[i])
        A = unpack(patterns.packed[i].astype(np.float32), T)           # [H, T, T]
        masks = {k: tb.classes[k] for k in direct}
        for kv in range(n_kv):
            heads = np.flatnonzero(kv_of == kv)
            if heads.size == 0:
                continue
            v = patterns.values[i][kv].astype(np.float64)               # [T, D]
            Y = term_values(tb.matrix, T, v)                             # [T, K, D]
            Z = A[heads].astype(np.float64) @ v                          # [h, T, D]
            P = np.matmul(Y, Z.transpose(1, 2, 0))                       # [T, K, h]
            zz = np.square(Z).sum(-1)                                    # [h, T]
            for k, m in masks.items():
                if not m.any():
                    continue
                Ym = Y[m].transpose(1, 0, 2).reshape(K, -1)
                G[k][kv] += Ym @ Ym.T
                b[k][heads] += P[m].sum(0).T
                c[k][heads] += zz[:, m].sum(1)
    for k in keys:
        if k not in G:
            G[k], b[k], c[k] = G["all"] - G[k[1:]], b["all"] - b[k[1:]], c["all"] - c[k[1:]]
    return OutputGrams(G, b, c)


def simplex_path(G: np.ndarray, b: np.ndarray, c: float, max_terms: int) -> list[np.ndarray]:
    """Forward selection for ``min w'Gw - 2b'w`` with ``w >= 0`` and ``sum(w) = 1`` (a stiff penalty
    ``lam (1'w - 1)^2``, ``lam`` far above the problem's scale): weights ``[K]`` with 1, 2, ... terms."""
    K = G.shape[0]
    lam = 1e3 * max(float(np.trace(G)) / max(K, 1), c, 1e-12)
    path = greedy_path(G + lam * np.ones((K, K)), b + lam * np.ones(K), max_terms)
    return [w / w.sum() for w in path if w.sum() > 0]
