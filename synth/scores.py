"""Scores of a program's attention against a head's captured attention.

- **IoU** (the paper's metric): per query row ``sum(min(p, q)) / sum(max(p, q))``; mean over
  the rows of a text, then over texts.
- **Output error**: ``||(A_prog - A_true) V||^2 / ||A_true V||^2`` — what the next layer sees.
  Over several texts the squared norms are summed before the ratio (a pooled ratio: a text
  whose head output is tiny cannot dominate).
- **JSD** per query row (base 2, so in ``[0, 1]``), mean over rows, then over texts.

All functions take dense ``[T, T]`` matrices whose rows are distributions over keys.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from headcode.runtime.model.heads import HeadRef
from headcode.runtime.model.patterns import SPLITS, HeadPatterns


def row_iou(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``[T]``: IoU of each row of ``p`` and ``q`` (a row where both are all zero counts as 1)."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    lo = np.minimum(p, q).sum(-1)
    hi = np.maximum(p, q).sum(-1)
    return np.divide(lo, hi, out=np.ones_like(lo), where=hi > 0)


def iou(p: np.ndarray, q: np.ndarray) -> float:
    """Mean over query rows of :func:`row_iou`."""
    r = row_iou(p, q)
    return float(r.mean()) if r.size else 1.0


def row_jsd(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``[T]``: Jensen-Shannon divergence of each row pair, in bits (0 = equal, 1 = disjoint)."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    m = 0.5 * (p + q)

    def kl(a: np.ndarray) -> np.ndarray:
        ratio = np.divide(a, m, out=np.ones_like(a), where=(a > 0) & (m > 0))
        return (a * np.log2(ratio)).sum(-1)

    return np.maximum(0.5 * kl(p) + 0.5 * kl(q), 0.0)


def jsd(p: np.ndarray, q: np.ndarray) -> float:
    r = row_jsd(p, q)
    return float(r.mean()) if r.size else 0.0


def output_error_terms(prog: np.ndarray, true: np.ndarray, v: np.ndarray) -> tuple[float, float]:
    """``(||(A_prog - A_true) V||^2, ||A_true V||^2)`` for one text (sum them to pool texts)."""
    prog = np.asarray(prog, dtype=np.float64)
    true = np.asarray(true, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    num = float(np.square((prog - true) @ v).sum())
    den = float(np.square(true @ v).sum())
    return num, den


def output_error(prog: np.ndarray, true: np.ndarray, v: np.ndarray) -> float:
    num, den = output_error_terms(prog, true, v)
    return num / den if den > 0 else (0.0 if num == 0 else float("inf"))


@dataclass(frozen=True)
class SplitScores:
    """Scores of one program on one head, per split (only the splits that were scored)."""

    iou: dict[str, float] = field(default_factory=dict)
    output_error: dict[str, float] = field(default_factory=dict)
    jsd: dict[str, float] = field(default_factory=dict)
    n_texts: dict[str, int] = field(default_factory=dict)


AttentionFn = Callable[[int], np.ndarray]


def score_head(
    patterns: HeadPatterns,
    head: HeadRef,
    attention: AttentionFn,
    splits: Iterable[str] = SPLITS,
    texts: Sequence[int] | None = None,
    with_output: bool = True,
) -> SplitScores:
    """Score a program (``attention(text_index) -> [T, T]``) on ``head`` for each split.

    ``texts`` limits the texts considered (e.g. a subsample); splits with no text are left out.
    The output error needs values in ``patterns``; without them it is left out.
    """
    allowed = None if texts is None else set(texts)
    ious: dict[str, float] = {}
    jsds: dict[str, float] = {}
    errs: dict[str, float] = {}
    counts: dict[str, int] = {}
    use_values = with_output and bool(patterns.values)
    for split in splits:
        idx = [i for i in patterns.texts(split) if allowed is None or i in allowed]
        if not idx:
            continue
        iu, js, num, den = [], [], 0.0, 0.0
        for i in idx:
            a_true = patterns.attention(i, head)
            a_prog = attention(i)
            iu.append(iou(a_prog, a_true))
            js.append(jsd(a_prog, a_true))
            if use_values:
                n, d = output_error_terms(a_prog, a_true, patterns.value(i, head))
                num, den = num + n, den + d
        ious[split] = float(np.mean(iu))
        jsds[split] = float(np.mean(js))
        counts[split] = len(idx)
        if use_values:
            errs[split] = num / den if den > 0 else 0.0
    return SplitScores(ious, errs, jsds, counts)
