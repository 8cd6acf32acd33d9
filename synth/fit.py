"""Numerical core of the offline search: mixtures of dictionary terms fitted to attention rows.

Rows are packed lower-triangle entries (row ``q`` holds keys ``0..q``, contiguous), so a set
of rows is a flat vector plus the index of each row's first entry (``starts``). A mixture's
pattern on a row is ``normalise(sum_i w_i S_i)``; an empty row goes to key 0 (the
framework's rule), so the scores here equal the scores of the program as written.

- :func:`greedy_path`: forward selection by non-negative least squares in Gram form
  (Lawson-Hanson's first steps: add the term with the largest gradient, refit NNLS).
- :func:`rows_iou`: weighted mean IoU of a mixture on a stack of rows.
- :func:`refine_iou`: ascent on the IoU itself for a fixed small support.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.optimize import nnls


@dataclass(frozen=True, eq=False)
class RowStack:
    """Rows of one query class over some texts: basis ``matrix [n, K]`` (CSC) and targets' layout.

    ``starts [R]``: each row's first entry; ``omega [R]``: row weights (``1 / (T * n_texts)``,
    so a weighted sum of row IoUs is the mean over rows, then texts); ``gather``: per text,
    ``(text index, entry indices in its packed triangle)`` in stacking order.
    """

    matrix: sp.csc_matrix
    starts: np.ndarray
    omega: np.ndarray
    gather: tuple[tuple[int, np.ndarray], ...]

    @property
    def n_rows(self) -> int:
        return int(self.starts.shape[0])

    def targets(self, packed: tuple[np.ndarray, ...], h: int) -> np.ndarray:
        """The captured attention of head index ``h`` on these rows (flat, float32)."""
        if not self.gather:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate([packed[i][h, ent] for i, ent in self.gather])


def nnls_gram(G: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``argmin_{w>=0} 0.5 w'Gw - b'w`` for a small positive semi-definite ``G`` (may be singular)."""
    n = G.shape[0]
    lam, V = np.linalg.eigh(0.5 * (G + G.T))
    floor = 1e-9 * max(float(lam.max(initial=0.0)), 1e-12)
    lam = np.maximum(lam, floor)
    M = np.sqrt(lam)[:, None] * V.T          # G ~= M'M
    y = (V.T @ b) / np.sqrt(lam)             # M'y = b
    w, _ = nnls(M, y, maxiter=50 * n + 100)
    return w


def greedy_path(G: np.ndarray, b: np.ndarray, max_terms: int) -> list[np.ndarray]:
    """Weight vectors ``[K]`` with 1, 2, ... ``max_terms`` active terms (fewer if none helps).

    Forward (orthogonal matching pursuit with non-negative refits), then backward from the
    largest set: drop the term whose loss is least, refit, repeat. Each size keeps the better of
    the two, so a term the forward pass picked early and a later pick made redundant does not
    stay in every smaller program (forward alone misses ``a + b + c`` when its path goes
    ``a, a + d, a + d + c``)."""
    forward = _forward_path(G, b, max_terms)
    if len(forward) < 2:
        return forward
    best = {np.count_nonzero(w): w for w in forward}
    for w in _backward_path(G, b, forward[-1]):
        n = np.count_nonzero(w)
        if n not in best or _loss(G, b, w) < _loss(G, b, best[n]) - 1e-12:
            best[n] = w
    return [best[n] for n in sorted(best)]


def _loss(G: np.ndarray, b: np.ndarray, w: np.ndarray) -> float:
    """The quadratic loss up to a constant: ``w'Gw - 2b'w``."""
    return float(w @ G @ w - 2.0 * b @ w)


def _refit(G: np.ndarray, b: np.ndarray, active: list[int]) -> np.ndarray:
    w = np.zeros(G.shape[0])
    w[active] = nnls_gram(G[np.ix_(active, active)], b[active])
    return w


def _forward_path(G: np.ndarray, b: np.ndarray, max_terms: int) -> list[np.ndarray]:
    K = G.shape[0]
    # a column's correlation with the residual per unit norm: a spread term (uniform over a
    # class, entries 1/n) is weighed against a one-hot term (first_of) on equal footing
    norm = np.sqrt(np.maximum(np.diag(G), 1e-300))
    w = np.zeros(K)
    active: list[int] = []
    path: list[np.ndarray] = []
    for _ in range(max_terms):
        grad = b - G @ w
        grad[active] = -np.inf
        j = int(np.argmax(grad / norm))
        if not np.isfinite(grad[j]) or grad[j] <= 1e-12 * max(1.0, float(np.abs(b).max())):
            break
        active.append(j)
        w = _refit(G, b, active)
        active = [a for a in active if w[a] > 0]
        if path and np.count_nonzero(w) <= np.count_nonzero(path[-1]):
            path[-1] = w  # a term was swapped, not added
        else:
            path.append(w)
    return path


def _backward_path(G: np.ndarray, b: np.ndarray, w: np.ndarray) -> list[np.ndarray]:
    """From ``w``'s support down to one term, each step dropping the term that costs least."""
    active = [int(j) for j in np.flatnonzero(w)]
    path = []
    while len(active) > 1:
        trials = [_refit(G, b, [a for a in active if a != j]) for j in active]
        w = min(trials, key=lambda t: _loss(G, b, t))
        active = [int(j) for j in np.flatnonzero(w)]
        path.append(w)
    return path


def _columns(stack: RowStack, S: np.ndarray, extra: np.ndarray | None) -> np.ndarray:
    """Dense ``[n, |S|]`` columns ``S`` of ``[stack.matrix | extra]`` (``extra [n, E]``: per-head terms)."""
    K = stack.matrix.shape[1]
    cols = [np.asarray(stack.matrix[:, S[S < K]].toarray(), dtype=np.float64)]
    if extra is not None and (S >= K).any():
        cols.append(np.asarray(extra[:, S[S >= K] - K], dtype=np.float64))
    return np.hstack(cols) if len(cols) > 1 else cols[0]


def mixture_rows(stack: RowStack, w: np.ndarray, extra: np.ndarray | None = None) -> np.ndarray:
    """The mixture's normalised pattern on the stacked rows (flat, float64).

    ``w [K]`` over the stack's terms, or ``[K + E]`` with ``extra [n, E]``: more terms' columns.
    """
    S = np.flatnonzero(w)
    if stack.n_rows == 0:
        return np.zeros(0)
    K = stack.matrix.shape[1]
    Sk, Se = S[S < K], S[S >= K]
    p = (stack.matrix[:, Sk] @ w[Sk]) if Sk.size else np.zeros(stack.matrix.shape[0])
    p = np.asarray(p, dtype=np.float64).ravel()
    if Se.size:
        p = p + np.asarray(extra[:, Se - K], dtype=np.float64) @ w[Se]
    s = np.add.reduceat(p, stack.starts)
    lengths = np.diff(np.append(stack.starts, p.shape[0]))
    inv = np.divide(1.0, s, out=np.zeros_like(s), where=s > 0)
    p = p * np.repeat(inv, lengths)
    p[stack.starts[s <= 0]] = 1.0
    return p


def rows_iou(stack: RowStack, a: np.ndarray, w: np.ndarray, extra: np.ndarray | None = None) -> float:
    """``sum_r omega_r * IoU_r`` of the mixture ``w`` against targets ``a`` on the stack."""
    if stack.n_rows == 0:
        return 0.0
    p = mixture_rows(stack, w, extra)
    lo = np.add.reduceat(np.minimum(p, a), stack.starts)
    hi = np.add.reduceat(np.maximum(p, a), stack.starts)
    r = np.divide(lo, hi, out=np.ones_like(lo), where=hi > 0)
    return float(stack.omega @ r)


def refine_iou(stack: RowStack, a: np.ndarray, w0: np.ndarray, max_iter: int = 30,
               extra: np.ndarray | None = None) -> np.ndarray:
    """Re-weight the support of ``w0`` to maximise the weighted IoU on ``stack`` (``extra``: as
    :func:`mixture_rows`)."""
    S = np.flatnonzero(w0)
    if S.size < 2 or stack.n_rows == 0:
        return w0
    B = _columns(stack, S, extra)  # [n, k], k small
    starts, omega = stack.starts, stack.omega
    lengths = np.diff(np.append(starts, B.shape[0]))
    rowsum = np.add.reduceat(B, starts, axis=0)  # [R, k]: 1 where the term's row is non-empty
    a = np.asarray(a, dtype=np.float64)
    a_tot = np.add.reduceat(a, starts)

    def f(x: np.ndarray) -> tuple[float, np.ndarray]:
        s = rowsum @ x
        ok = s > 1e-12
        inv = np.divide(1.0, s, out=np.zeros_like(s), where=ok)
        p = (B @ x) * np.repeat(inv, lengths)
        p[starts[~ok]] = 1.0
        below = p < a
        pb = np.where(below, p, 0.0)
        lo = np.add.reduceat(np.where(below, p, a), starts)
        hi = np.maximum(a_tot + np.add.reduceat(p, starts) - lo, 1e-12)
        val = lo / hi
        # d IoU / d lo = (1 + IoU) / hi;  d lo / d x = (sum_j [p<a] B_j - (sum_j [p<a] p_j) rowsum) / s
        g_rows = (1.0 + val) / hi * omega * inv
        grad = (np.repeat(g_rows, lengths) * below) @ B - (g_rows * np.add.reduceat(pb, starts)) @ rowsum
        return float(omega @ val), grad

    # exponentiated-gradient ascent on the simplex (the pattern is scale-free), with step halving
    x = w0[S] / w0[S].sum()
    val, grad = f(x)
    step = 1.0
    for _ in range(max_iter):
        g = grad - float(x @ grad)
        y = x * np.exp(np.clip(step * g / max(float(np.abs(g).max()), 1e-12), -30, 30))
        y /= y.sum()
        v2, g2 = f(y)
        if v2 > val:
            x, val, grad = y, v2, g2
            step *= 1.5
        else:
            step *= 0.5
            if step < 1e-3:
                break
    w = np.zeros_like(w0)
    w[S] = x
    return w
