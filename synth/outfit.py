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

from headcode.runtime.model.patterns import HeadPatterns, unpack
from headcode.synth.fit import nnls_gram


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


def output_grams(patterns: HeadPatterns, bases: dict, texts: Sequence[int], keys: Sequence[str],
                 heads: Sequence[int] | None = None) -> OutputGrams:
    """Grams over ``texts`` for each class key (``bases[i]``: ``basis.TextBasis``), for the head
    indices ``heads`` (default all; the others' ``b`` and ``c`` stay zero).

    A key ``~k`` whose ``k`` and ``all`` are also keys is derived as ``all - k`` (same rows)."""
    H = len(patterns.heads)
    K = next(iter(bases.values())).matrix.shape[1]
    n_kv = max(patterns.kv_of_head) + 1 if H else 0
    direct = [k for k in keys if not (k.startswith("~") and k[1:] in keys and "all" in keys)]
    G = {k: np.zeros((n_kv, K, K)) for k in direct}
    b = {k: np.zeros((H, K)) for k in direct}
    c = {k: np.zeros(H) for k in direct}
    kv_of = np.asarray(patterns.kv_of_head)
    wanted = np.zeros(H, dtype=bool)
    wanted[list(range(H)) if heads is None else list(heads)] = True
    row_of = np.cumsum(wanted) - 1  # head index -> row of the wanted heads' attention
    for i in texts:
        tb, T = bases[i], len(patterns.tokens[i])
        A = unpack(patterns.packed[i][wanted].astype(np.float32), T)   # [wanted heads, T, T]
        masks = {k: tb.classes[k] for k in direct}
        for kv in range(n_kv):
            hs = np.flatnonzero((kv_of == kv) & wanted)
            if hs.size == 0:
                continue
            v = patterns.values[i][kv].astype(np.float64)               # [T, D]
            Y = term_values(tb.matrix, T, v)                             # [T, K, D]
            Z = A[row_of[hs]].astype(np.float64) @ v                          # [h, T, D]
            P = np.matmul(Y, Z.transpose(1, 2, 0))                       # [T, K, h]
            zz = np.square(Z).sum(-1)                                    # [h, T]
            for k, m in masks.items():
                if not m.any():
                    continue
                Ym = Y[m].transpose(1, 0, 2).reshape(K, -1)
                G[k][kv] += Ym @ Ym.T
                b[k][hs] += P[m].sum(0).T
                c[k][hs] += zz[:, m].sum(1)
    for k in keys:
        if k not in G:
            G[k], b[k], c[k] = G["all"] - G[k[1:]], b["all"] - b[k[1:]], c["all"] - c[k[1:]]
    return OutputGrams(G, b, c)


def simplex_path(G: np.ndarray, b: np.ndarray, c: float, max_terms: int) -> list[np.ndarray]:
    """Forward selection for ``min f(w) = w'Gw - 2b'w`` on the simplex (``w >= 0``, ``sum(w) = 1``):
    weights ``[K]`` with 1, 2, ... terms. Each step adds the term whose best blend with the current
    weights, ``(1 - a) w + a e_j``, lowers ``f`` most (exact, a line search per term), then re-fits
    the active terms on the simplex."""
    K = G.shape[0]
    diag = np.diag(G).copy()
    w = np.zeros(K)
    active: list[int] = []
    path: list[np.ndarray] = []
    fw = np.inf
    for _ in range(max_terms):
        if not active:
            vals = diag - 2.0 * b
        else:
            Gw = G @ w
            wGw, bw = float(w @ Gw), float(b @ w)
            d2 = wGw - 2.0 * Gw + diag
            d1 = -2.0 * wGw + 2.0 * Gw + 2.0 * bw - 2.0 * b
            a = np.clip(np.divide(-d1, 2.0 * d2, out=np.zeros(K), where=d2 > 1e-300), 0.0, 1.0)
            vals = fw + d1 * a + d2 * a * a
            vals[active] = np.inf
        j = int(np.argmin(vals))
        if not np.isfinite(vals[j]) or vals[j] >= fw - 1e-9 * max(c, 1e-12):
            break
        active.append(j)
        w = np.zeros(K)
        w[active] = _simplex_fit(G[np.ix_(active, active)], b[active], c)
        active = [i for i in active if w[i] > 0]
        fw = float(w @ G @ w - 2.0 * b @ w)
        if path and np.count_nonzero(w) <= np.count_nonzero(path[-1]):
            path[-1] = w
        else:
            path.append(w)
    return path


def _simplex_fit(G: np.ndarray, b: np.ndarray, c: float) -> np.ndarray:
    """``argmin w'Gw - 2b'w`` with ``w >= 0``, ``sum(w) = 1`` for a few terms (a stiff penalty on
    ``sum(w) - 1``, far above the problem's scale, then exact normalisation)."""
    n = G.shape[0]
    lam = 1e4 * max(float(np.trace(G)) / max(n, 1), c, 1e-12)
    w = nnls_gram(G + lam * np.ones((n, n)), b + lam * np.ones(n))
    s = w.sum()
    return w / s if s > 0 else np.full(n, 1.0 / n)
