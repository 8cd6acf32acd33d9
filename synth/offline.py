"""The offline backend: search over the program vocabulary, no network, deterministic.

For every query class of every partition (``basis.PARTITIONS``) it fits a mixture of
dictionary terms on the fit split — forward selection by non-negative least squares whose
Gram matrices are shared by all heads — chooses the number of terms on the select split,
re-weights the chosen terms to maximise IoU on (a sample of) the fit split, and keeps the
re-weighting only where the select split agrees. One program per partition is proposed.

Two extensions, both learned on fit only (``OfflineOptions``):

- per-head key word terms (``keywords``): words the head attends to far above (or below) their
  share give ``token_in(...)`` sets and a few terms on them; a second path over the shared
  path's terms and these, fitted on a sample of fit rows, competes on select with the first;
- a ``lexical`` partition: one query class per frequent word (``when(token_in('the'), ...)``).

Measured (SmolLM2-135M, stories): small matrix products here are much slower with a
multi-threaded BLAS on a busy machine; run with ``OPENBLAS_NUM_THREADS=1`` there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from tqdm.auto import tqdm

from headcode.runtime.heads import HeadRef
from headcode.runtime.patterns import HeadPatterns, unpack
from headcode.synth import basis as B
from headcode.synth import keywords as KW
from headcode.synth.backend import Rejected
from headcode.synth.fit import RowStack, greedy_path, refine_iou, rows_iou
from headcode.synth.mixture import Mixture, clean_terms


@dataclass
class OfflineOptions:
    max_terms: int = 8             # per query class
    tolerance: float = 0.001       # fewer terms unless more gain this much mean IoU (per class)
    refine_entries: int = 60_000  # packed entries of fit rows used to re-weight for IoU
    length_weight: bool = False    # weight rows by length in least squares (measured: slightly worse)
    partitions: tuple[str, ...] = ("all", "coarse", "fine")
    terms: tuple[str, ...] = field(default_factory=B.default_terms)
    # per-head key word terms (``keywords``); None: the shared dictionary only
    keywords: KW.KeywordOptions | None = field(default_factory=KW.KeywordOptions)
    keyword_entries: int = 250_000  # packed entries of fit rows the per-head terms are fitted on
    refine_all: bool = True        # re-weight every partition for IoU (not only the best on select)
    lexical_words: int = 12         # a partition of queries by their most frequent words (0: none)
    lexical_min_count: int = 20     # occurrences on fit for a word to get its own query class


def _stack(bases: dict[int, B.TextBasis], texts: Sequence[int], key: str, max_entries: int | None = None
           ) -> RowStack:
    """Rows of query class ``key`` of ``texts`` stacked; ``max_entries`` keeps every k-th text."""
    texts = list(texts)
    if max_entries is not None and texts:
        total = sum(bases[i].T * (bases[i].T + 1) // 2 for i in texts)
        step = max(1, int(np.ceil(total / max_entries)))
        texts = texts[::step]
    mats, starts, omega, gather, offset = [], [], [], [], 0
    for i in texts:
        tb = bases[i]
        rows = np.flatnonzero(tb.classes[key])
        if rows.size == 0:
            continue
        ent = np.concatenate([np.arange(s, s + q + 1) for s, q in zip(tb.row_start[rows], rows)])
        mats.append(tb.matrix[ent])
        lens = rows + 1
        starts.append(offset + np.concatenate([[0], np.cumsum(lens)[:-1]]))
        omega.append(np.full(rows.size, 1.0 / (tb.T * len(texts))))
        gather.append((i, ent))
        offset += ent.size
    K = next(iter(bases.values())).matrix.shape[1] if bases else 0
    if not mats:
        return RowStack(sp.csc_matrix((0, K), dtype=np.float32), np.zeros(0, dtype=np.int64),
                        np.zeros(0), ())
    return RowStack(sp.vstack(mats, format="csc"), np.concatenate(starts).astype(np.int64),
                    np.concatenate(omega), tuple(gather))


class _HeadExtras:
    """One head's extra terms and their columns per text (computed when first needed)."""

    def __init__(self, extras: list[KW.Extra], patterns: HeadPatterns):
        self.extras, self.patterns = extras, patterns
        self.cols: dict[int, np.ndarray] = {}
        self._on: dict[int, np.ndarray] = {}

    def on(self, stack: RowStack) -> np.ndarray:
        """``[n, E]``: the extra terms on a stack's entries."""
        if id(stack) not in self._on:
            for i, _ in stack.gather:
                if i not in self.cols:
                    self.cols[i] = KW.extra_columns(self.extras, self.patterns.tokens[i])
            self._on[id(stack)] = KW.stack_columns(self.cols, stack.gather, len(self.extras))
        return self._on[id(stack)]


class OfflineBackend:
    """Search over the program vocabulary (see the module docstring)."""

    name = "offline"

    def __init__(self, options: OfflineOptions | None = None, progress: bool = True):
        self.options = options or OfflineOptions()
        self.progress = progress
        self.terms = self.options.terms
        self.bases: dict[int, B.TextBasis] = {}
        self.mixtures: dict[str, Mixture] = {}
        self._column = {s: i for i, s in enumerate(self.terms)}
        self._extra: dict[str, KW.Extra] = {}  # per-head terms by source, for ``attention``

    # shared work ----------------------------------------------------------------------------
    def _keys(self) -> list[str]:
        return [B.class_key(qc) for part in self.partitions.values() for qc in part]

    def prepare(self, patterns: HeadPatterns, heads: Sequence[HeadRef]) -> None:
        self.patterns = patterns
        fit, select = patterns.texts("fit"), patterns.texts("select")
        if not fit or not select:
            raise Rejected("the offline search needs texts in both the fit and the select split")
        todo = [i for i in range(len(patterns.tokens)) if i not in self.bases]
        for i in tqdm(todo, desc="dictionary", unit="text", disable=not self.progress):
            self.bases[i] = B.text_basis(patterns.tokens[i], self.terms)
        self._head_index = [patterns.index[h] for h in heads]
        self.partitions = {p: B.PARTITIONS[p] for p in self.options.partitions}
        if self.options.lexical_words:
            lex = B.lexical_partition([patterns.tokens[i] for i in fit], self.options.lexical_words,
                                      self.options.lexical_min_count)
            if lex:
                self.partitions["lexical"] = lex
                for i, tb in self.bases.items():
                    for qc in lex:
                        tb.classes.setdefault(qc.pred, B.eval_pred(qc.pred, patterns.tokens[i]))
        self._gram(patterns, fit)
        keys = self._keys()
        self.select_stacks = {k: _stack(self.bases, select, k) for k in keys}
        self.refine_stacks = {k: _stack(self.bases, fit, k, self.options.refine_entries) for k in keys}
        if self.options.keywords is not None:
            self.salience = KW.salience(patterns, fit)
            self.kw_stacks = {k: _stack(self.bases, fit, k, self.options.keyword_entries) for k in keys}

    def _gram(self, patterns: HeadPatterns, fit: list[int]) -> None:
        """Per query class: ``G = B'WB`` and ``b = B'WA`` for every head, over the fit split."""
        K, keys = len(self.terms), self._keys()
        self.G = {k: np.zeros((K, K)) for k in keys}
        self.b = {k: np.zeros((K, len(patterns.heads))) for k in keys}
        for i in tqdm(fit, desc="gram", unit="text", disable=not self.progress):
            tb = self.bases[i]
            D = tb.matrix.toarray()                                  # [n, K] float32
            A = patterns.packed[i].T                                 # [n, H] float32
            rows = tb.row_of_entry
            e = np.full(rows.shape[0], 1.0 / (tb.T * len(fit)), dtype=np.float32)
            if self.options.length_weight:
                e *= (rows + 1).astype(np.float32)
            e[0] = 0.0  # the first query has one key: exact for every program, and it biases the fit
            for k in keys:
                m = tb.classes[k][rows]
                if not m.any():
                    continue
                Dm = D[m]
                De = Dm * e[m, None]
                self.G[k] += (De.T @ Dm).astype(np.float64)
                self.b[k] += (De.T @ A[m]).astype(np.float64)

    # per head ---------------------------------------------------------------------------------
    def _fit_class(self, key: str, h: int, ext: _HeadExtras | None) -> tuple[np.ndarray, float]:
        """Weights ``[K (+ E)]`` for one query class (terms chosen on select) and their select score.

        With per-head terms (``ext``): a second path, fitted on a sample of fit rows over the
        shared path's terms and the head's own, competes on select with the shared path.
        """
        path = greedy_path(self.G[key], self.b[key][:, h], self.options.max_terms)
        sel = self.select_stacks[key]
        K, E = len(self.terms), (len(ext.extras) if ext else 0)
        path = [np.pad(w, (0, E)) for w in path]
        if not path:
            return np.zeros(K + E), 0.0
        if sel.n_rows == 0:
            return path[0], 0.0
        a_sel = sel.targets(self.patterns.packed, h)
        x_sel = ext.on(sel) if ext else None
        scores = [rows_iou(sel, a_sel, w, x_sel) for w in path]
        if ext:
            path2 = self._keyword_path(key, h, ext, np.flatnonzero(np.any(path, axis=0)))
            path, scores = path + path2, scores + [rows_iou(sel, a_sel, w, x_sel) for w in path2]
        best = max(scores)
        tol = self.options.tolerance * float(sel.omega.sum())
        m = min((j for j, s in enumerate(scores) if s >= best - tol),
                key=lambda j: (np.count_nonzero(path[j]), j))
        return path[m], scores[m]

    def _keyword_path(self, key: str, h: int, ext: _HeadExtras, shared: np.ndarray) -> list[np.ndarray]:
        st = self.kw_stacks[key]
        if st.n_rows == 0:
            return []
        K, E = len(self.terms), len(ext.extras)
        cand = np.concatenate([shared, K + np.arange(E)])
        D = np.hstack([np.asarray(st.matrix[:, shared].toarray(), dtype=np.float64), ext.on(st)])
        G, b = KW.gram(D, st.targets(self.patterns.packed, h), st.starts, st.omega)
        out = []
        for w in greedy_path(G, b, self.options.max_terms):
            full = np.zeros(K + E)
            full[cand] = w
            out.append(full)
        return out

    def _refine(self, key: str, h: int, w: np.ndarray, score: float, ext: _HeadExtras | None) -> np.ndarray:
        """Re-weight for IoU on fit rows; kept only if the select split agrees."""
        ref, sel = self.refine_stacks[key], self.select_stacks[key]
        if np.count_nonzero(w) < 2 or not ref.n_rows or not sel.n_rows:
            return w
        x_ref, x_sel = (ext.on(ref), ext.on(sel)) if ext else (None, None)
        w2 = refine_iou(ref, ref.targets(self.patterns.packed, h), w, extra=x_ref)
        gain = rows_iou(sel, sel.targets(self.patterns.packed, h), w2, x_sel) - score
        return w2 if gain > 1e-4 * float(sel.omega.sum()) else w

    def _head_extras(self, h: int) -> _HeadExtras | None:
        if self.options.keywords is None:
            return None
        extras = KW.extra_terms(self.salience, h, self.options.keywords)
        if not extras:
            return None
        for x in extras:
            self._extra[x.source] = x
        return _HeadExtras(extras, self.patterns)

    def propose(self, patterns: HeadPatterns, head: HeadRef) -> list[str]:
        """One program per partition; the classes of the partition best on select are re-weighted for IoU."""
        h = patterns.index[head]
        ext = self._head_extras(h)
        names = list(self.terms) + ([x.source for x in ext.extras] if ext else [])
        fitted = {}
        for pname, part in self.partitions.items():
            fitted[pname] = [(qc, *self._fit_class(B.class_key(qc), h, ext)) for qc in part]
        best = max(fitted, key=lambda p: sum(s for _, _, s in fitted[p]))
        out = []
        for pname in sorted(fitted, key=lambda p: p != best):
            parts = []
            for qc, w, s in fitted[pname]:
                if pname == best or self.options.refine_all:
                    w = self._refine(B.class_key(qc), h, w, s, ext)
                S = np.flatnonzero(w)
                parts.append((qc.pred, clean_terms(w[S], [names[j] for j in S])))
            mix = Mixture(pname, tuple(parts))
            src = mix.source()
            self.mixtures[src] = mix
            out.append(src)
        return out

    # attention of a proposed program ------------------------------------------------------------
    def attention(self, source: str, texts: Sequence[int]) -> list[np.ndarray]:
        mix = self.mixtures.get(source)
        if mix is None:  # a program from an earlier run (resumed, read from disk): in the sandbox
            from headcode.compiler.vocab import attention_from_scores
            from headcode.synth.sandbox import run_programs

            (res,) = run_programs([source], [self.patterns.tokens[i] for i in texts])
            if not res.ok:
                raise Rejected(f"cannot run program: {res.reason}")
            return [attention_from_scores(s) for s in res.scores]
        return [self._attention(mix, i) for i in texts]

    def _attention(self, mix: Mixture, i: int) -> np.ndarray:
        tb = self.bases[i]
        rows = tb.row_of_entry
        p = np.zeros(rows.shape[0])
        for pred, terms in mix.parts:
            if not terms:
                continue
            w = np.zeros(len(self.terms), dtype=np.float32)
            extra = [(x, self._extra[s]) for x, s in terms if s not in self._column]
            for x, s in terms:
                if s in self._column:
                    w[self._column[s]] += x
            contrib = np.asarray(tb.matrix @ w, dtype=np.float64).ravel()
            if extra:
                cols = KW.extra_columns([e for _, e in extra], self.patterns.tokens[i])
                contrib += cols.astype(np.float64) @ np.array([x for x, _ in extra])
            if pred is not None:
                key = pred if pred in tb.classes else None
                mask = tb.classes[key] if key else B.eval_pred(pred, self.patterns.tokens[i])
                contrib *= mask[rows]
            p += contrib
        s = np.add.reduceat(p, tb.row_start)
        inv = np.divide(1.0, s, out=np.zeros_like(s), where=s > 0)
        p *= inv[rows]
        p[tb.row_start[s <= 0]] = 1.0
        return unpack(p, tb.T)
