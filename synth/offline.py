"""The offline backend: search for the simplest readable program that explains a head.

No network, deterministic. A program is a mixture of terms from a readable dictionary
(``basis.readable_terms``: selectors over named token classes), either for all queries or split
on one named query class (``when(c, ...) + when(~c, ...)``). For every partition and every
number of terms (1 to ``max_terms`` for all queries, 1 to ``max_split_terms`` per cell) it fits
weights two ways on the fit split:

- **output**: the output error ``||(A_prog - A_true) V||^2 / ||A_true V||^2`` (``outfit``), with
  weights on the simplex — what the next layer receives;
- **iou**: least squares on the attention rows, then (all-query programs) ascent on IoU itself.

Each candidate is scored on the select split — IoU exactly (``fit.rows_iou``), output error by
the select split's grams — and written with its size (``compiler.size``). The candidates form
the front that ``synth.occam`` chooses from; the test split is never read here.

Measured (SmolLM2-135M, stories): small matrix products here are much slower with a
multi-threaded BLAS on a busy machine; run with ``OPENBLAS_NUM_THREADS=1`` there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
from tqdm.auto import tqdm

from headcode.compiler import english
from headcode.compiler.program import Tracer
from headcode.compiler.size import program_size
from headcode.runtime.model.heads import HeadRef
from headcode.runtime.model.patterns import HeadPatterns, unpack
from headcode.synth import basis as B
from headcode.synth.backend import Rejected
from headcode.synth.fit import RowStack, greedy_path, mixture_rows, refine_iou, rows_iou
from headcode.synth.mixture import Mixture, clean_terms
from headcode.synth.occam import FrontPoint, pareto
from headcode.synth.outfit import OutputGrams, output_grams, simplex_path

if TYPE_CHECKING:
    from headcode.compiler.sandbox import Vocabulary


@dataclass
class OfflineOptions:
    max_terms: int = 4             # terms of an all-query program
    max_split_terms: int = 3       # terms per cell of a split program
    refine_entries: int = 30_000   # packed entries of fit rows used to re-weight for IoU
    shortlist: int = 6             # besides the approximate front, candidates re-scored exactly
    partitions: tuple[str, ...] = ("all",) + tuple(f"split:{c}" for c in B.SPLIT_CLASSES)
    terms: tuple[str, ...] = field(default_factory=B.readable_terms)


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


class OfflineBackend:
    """Search over the readable program vocabulary (see the module docstring)."""

    name = "offline"

    def __init__(self, options: OfflineOptions | None = None, progress: bool = True,
                 vocabulary: Vocabulary | None = None):
        self.options = options or OfflineOptions()
        self.vocabulary = vocabulary  # the model's (sandbox.Vocabulary): programs from disk compile against it
        self.progress = progress
        self.terms = self.options.terms
        self.bases: dict[int, B.TextBasis] = {}
        self.mixtures: dict[str, Mixture] = {}
        self._column = {s: i for i, s in enumerate(self.terms)}

    # shared work ----------------------------------------------------------------------------
    def _keys(self) -> list[str]:
        return list(dict.fromkeys(B.class_key(qc) for part in self.partitions.values() for qc in part))

    def prepare(self, patterns: HeadPatterns, heads: Sequence[HeadRef]) -> None:
        self.patterns = patterns
        fit, select = patterns.texts("fit"), patterns.texts("select")
        if not fit or not select:
            raise Rejected("the offline search needs texts in both the fit and the select split")
        todo = [i for i in range(len(patterns.tokens)) if i not in self.bases]
        for i in tqdm(todo, desc="dictionary", unit="text", disable=not self.progress):
            self.bases[i] = B.text_basis(patterns.tokens[i], self.terms)
        self.partitions = {p: B.PARTITIONS[p] for p in self.options.partitions}
        keys = self._keys()
        self._gram(patterns, fit)
        self.select_stacks = {k: _stack(self.bases, select, k) for k in keys}
        self.refine_stacks = {k: _stack(self.bases, fit, k, self.options.refine_entries) for k in keys}
        self._select_values(patterns, select, keys)
        self.out_fit: OutputGrams | None = None
        self.out_select: OutputGrams | None = None
        if patterns.values:
            with tqdm(total=2, desc="output grams", disable=not self.progress) as bar:
                idx = [patterns.index[h] for h in heads]
                self.out_fit = output_grams(patterns, self.bases, fit, keys, idx)
                bar.update()
                self.out_select = output_grams(patterns, self.bases, select, keys, idx)
                bar.update()

    def _select_values(self, patterns: HeadPatterns, select: list[int], keys: list[str]) -> None:
        """Values of the select texts stacked per KV head, and each select stack's entries as
        rows of that stack (for exact output errors)."""
        self._sel_true: dict[tuple[str, int], np.ndarray] = {}  # one head's true select outputs (``_exact``)
        self._sel_values: list[np.ndarray] = []
        self._sel_index: dict[str, np.ndarray] = {}
        if not patterns.values:
            return
        offset = {}
        n = 0
        for i in select:
            offset[i] = n
            n += len(patterns.tokens[i])
        n_kv = max(patterns.kv_of_head) + 1
        self._sel_values = [np.concatenate([patterns.values[i][kv] for i in select]).astype(np.float64)
                            for kv in range(n_kv)]
        for k in keys:
            parts = []
            for i, ent in self.select_stacks[k].gather:
                tb = self.bases[i]
                parts.append(offset[i] + ent - tb.row_start[tb.row_of_entry[ent]])
            self._sel_index[k] = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)

    def _gram(self, patterns: HeadPatterns, fit: list[int]) -> None:
        """Per query class: ``G = B'WB`` and ``b = B'WA`` for every head, over the fit split."""
        K, keys = len(self.terms), self._keys()
        self.G = {k: np.zeros((K, K)) for k in keys}
        self.b = {k: np.zeros((K, len(patterns.heads))) for k in keys}
        for i in tqdm(fit, desc="gram", unit="text", disable=not self.progress):
            tb = self.bases[i]
            D = tb.matrix.toarray()                                  # [n, K] float32
            A = patterns.packed[i].T                                 # [n, H]
            rows = tb.row_of_entry
            e = np.full(rows.shape[0], 1.0 / (tb.T * len(fit)), dtype=np.float32)
            e[0] = 0.0  # the first query has one key: exact for every program, and it biases the fit
            for k in keys:
                m = tb.classes[k][rows]
                if not m.any():
                    continue
                Dm = D[m]
                De = Dm * e[m, None]
                self.G[k] += (De.T @ Dm).astype(np.float64)
                self.b[k] += (De.T @ A[m].astype(np.float32)).astype(np.float64)

    # per head ---------------------------------------------------------------------------------
    def _cell_paths(self, key: str, h: int, kv: int, n_max: int, refine: bool) -> dict[str, list[np.ndarray]]:
        """Weight vectors ``[K]`` for 1..n_max terms on one query class, per fitting objective."""
        out = {"iou": greedy_path(self.G[key], self.b[key][:, h], n_max)}
        if refine and self.refine_stacks[key].n_rows:
            ref = self.refine_stacks[key]
            a = ref.targets(self.patterns.packed, h)
            out["iou"] = [refine_iou(ref, a, w, max_iter=20) if np.count_nonzero(w) > 1 else w
                          for w in out["iou"]]
        if self.out_fit is not None:
            g = self.out_fit
            out["output"] = simplex_path(g.G[key][kv], g.b[key][h], float(g.c[key][h]), n_max)
        return out

    def front(self, patterns: HeadPatterns, head: HeadRef) -> list[FrontPoint]:
        """Every candidate program of ``head`` with its size and select-split scores."""
        h = patterns.index[head]
        kv = patterns.kv_of_head[h]
        points: dict[str, FrontPoint] = {}
        for pname, part in self.partitions.items():
            split = len(part) > 1
            n_max = self.options.max_split_terms if split else self.options.max_terms
            paths = [(qc, self._cell_paths(B.class_key(qc), h, kv, n_max, refine=not split)) for qc in part]
            for fit in ("output", "iou"):
                for n in range(1, n_max + 1):
                    cells = [(qc, p[fit][min(n, len(p[fit])) - 1]) for qc, p in paths if p.get(fit)]
                    if not cells:
                        continue
                    pt = self._point(pname, cells, h, kv, fit)
                    if pt.source not in points or pt.fidelity > points[pt.source].fidelity:
                        points[pt.source] = pt
        if not points:
            raise Rejected(f"{head}: no candidate program")
        return self._exact(list(points.values()), h, kv)

    def _exact(self, points: list[FrontPoint], h: int, kv: int) -> list[FrontPoint]:
        """The approximate front and the most faithful few, re-scored exactly on select (output
        error of the program as written, rows normalised); only those are returned."""
        if self.out_select is None:
            return sorted(points, key=lambda p: (p.size, -p.fidelity, p.source))
        self._sel_true = {}  # [rows, D] float64 per class: kept for this head only (all heads: GBs)
        short = {p.source: p for p in pareto(points)}
        short.update({p.source: p for p in sorted(points, key=lambda p: -p.fidelity)[:self.options.shortlist]})
        for p in list(short.values()):  # each shortlisted mixture re-weighted for IoU on fit rows, too
            mix = self.mixtures[p.source]
            cells = [(pred, self._weights(terms)) for pred, terms in mix.parts]
            if all(np.count_nonzero(w) < 2 for _, w in cells):
                continue
            refined = []
            for pred, w in cells:
                ref = self.refine_stacks[pred if pred is not None else "all"]
                if np.count_nonzero(w) > 1 and ref.n_rows:
                    w = refine_iou(ref, ref.targets(self.patterns.packed, h), w, max_iter=20)
                refined.append((B.QueryClass(pred or "all", pred), w))
            q = self._point(mix.partition, refined, h, kv, p.fit + "+iou")
            short.setdefault(q.source, q)
        out = []
        for p in short.values():
            num, den = 0.0, 0.0
            for pred, terms in self.mixtures[p.source].parts:
                key = pred if pred is not None else "all"
                n_, d_ = self._select_error(key, h, kv, self._weights(terms))
                num, den = num + n_, den + d_
            out.append(replace(p, output_error=num / den if den > 0 else None))
        return sorted(out, key=lambda p: (p.size, -p.fidelity, p.source))

    def _select_error(self, key: str, h: int, kv: int, w: np.ndarray) -> tuple[float, float]:
        """``(||(A_prog - A_true) V||^2, ||A_true V||^2)`` on the select rows of class ``key``."""
        sel = self.select_stacks[key]
        if not sel.n_rows:
            return 0.0, 0.0
        idx, vals = self._sel_index[key], self._sel_values[kv]
        indptr = np.append(sel.starts, idx.size)
        R, N = sel.n_rows, vals.shape[0]
        if (key, h) not in self._sel_true:
            a = sel.targets(self.patterns.packed, h).astype(np.float64)
            self._sel_true[(key, h)] = sp.csr_matrix((a, idx, indptr), shape=(R, N)) @ vals
        z = self._sel_true[(key, h)]
        out = sp.csr_matrix((mixture_rows(sel, w), idx, indptr), shape=(R, N)) @ vals
        return float(np.square(out - z).sum()), float(np.square(z).sum())

    def _weights(self, terms: Sequence[tuple[float, str]]) -> np.ndarray:
        """``[K]``: written terms ``((weight, term source), ...)`` as dictionary weights."""
        w = np.zeros(len(self.terms))
        for x, src in terms:
            w[self._column[src]] += x
        return w

    def _point(self, pname: str, cells: list, h: int, kv: int, fit: str) -> FrontPoint:
        parts, iou, num, den = [], 0.0, 0.0, 0.0
        for qc, w in cells:
            key = B.class_key(qc)
            S = np.flatnonzero(w)
            terms = clean_terms(w[S], [self.terms[j] for j in S])
            parts.append((qc.pred, terms))
            wc = self._weights(terms)  # the weights as written (rounded), scored as written
            sel = self.select_stacks[key]
            if sel.n_rows:
                iou += rows_iou(sel, sel.targets(self.patterns.packed, h), wc)
            if self.out_select is not None:
                n_, d_ = self.out_select.error(key, h, kv, wc)
                num, den = num + n_, den + d_
        mix = Mixture(pname, tuple(parts))
        doc = self.describe_mixture(mix)
        src = mix.source(doc=doc)
        self.mixtures[src] = mix
        err = num / den if den > 0 else None
        size = program_size(src)
        return FrontPoint(src, size.nodes, size.terms, iou, err, fit, doc)

    def describe_mixture(self, mix: Mixture) -> str:
        """The mixture's one-line English description, from its IR (our own dictionary's
        expressions, traced; no generated code runs)."""
        ns = B._namespace()
        ns["t"] = Tracer()
        return english.describe(eval(mix.expression(), ns).expr)  # noqa: S307 - our own expressions

    def propose(self, patterns: HeadPatterns, head: HeadRef) -> list[str]:
        """The sources of the front (smallest first)."""
        return [p.source for p in self.front(patterns, head)]

    # attention of a proposed program ------------------------------------------------------------
    def attention(self, source: str, texts: Sequence[int]) -> list[np.ndarray]:
        mix = self.mixtures.get(source)
        if mix is None:  # a program from an earlier run (resumed, read from disk): in the sandbox
            from headcode.compiler.pattern import attention_from_scores
            from headcode.compiler.sandbox import run_programs

            (res,) = run_programs([source], [self.patterns.tokens[i] for i in texts], vocabulary=self.vocabulary)
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
            for x, s in terms:
                w[self._column[s]] += x
            contrib = np.asarray(tb.matrix @ w, dtype=np.float64).ravel()
            if pred is not None:
                mask = tb.classes[pred] if pred in tb.classes else B.eval_pred(pred, self.patterns.tokens[i])
                contrib *= mask[rows]
            p += contrib
        s = np.add.reduceat(p, tb.row_start)
        inv = np.divide(1.0, s, out=np.zeros_like(s), where=s > 0)
        p *= inv[rows]
        p[tb.row_start[s <= 0]] = 1.0
        return unpack(p, tb.T)
