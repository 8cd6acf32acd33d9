"""Occam: the simplest program that explains a head, and a readability budget for a whole run.

**Fidelity** (held out: select split) blends the paper's metric and what the next layer sees:

    fidelity = 0.5 * IoU + 0.5 * max(0, 1 - output_error)

(IoU alone where no values were captured). Both halves are in [0, 1]; a program no better than
a zero output (error >= 1) earns nothing from the second half.

**Per head**: keep the front of (size, fidelity) — the candidates no other candidate beats on
both — and choose the smallest program whose fidelity is within ``TOLERANCE`` of the best.

**Per run** (``within_budget``): if the chosen programs break the readability budget of
``compiler.size`` (median size, share of heads with at most 4 selector terms, largest size),
heads step down their fronts, cheapest fidelity loss first, until the budget holds. Every
front holds a one-term program, so the budget can always be met: readable by construction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from headcode.compiler import size as S

TOLERANCE = 0.01  # fidelity points a smaller program may give up against the best


@dataclass(frozen=True)
class FrontPoint:
    """One candidate program with its size and select-split scores (``fit``: how its weights were fitted)."""

    source: str
    size: int
    terms: int
    iou: float
    output_error: float | None
    fit: str = ""
    description: str = ""  # one line of English from the IR ("" if the backend gives none)

    @property
    def fidelity(self) -> float:
        return fidelity(self.iou, self.output_error)

    def to_json(self) -> dict:
        d = asdict(self)
        d["fidelity"] = round(self.fidelity, 6)
        return d


def fidelity(iou: float, output_error: float | None) -> float:
    if output_error is None or not np.isfinite(output_error):
        return float(iou)
    return 0.5 * float(iou) + 0.5 * max(0.0, 1.0 - float(output_error))


def pareto(points: Sequence[FrontPoint]) -> list[FrontPoint]:
    """The (size, fidelity) front: smallest first, each strictly more faithful than the one before."""
    out: list[FrontPoint] = []
    for p in sorted(points, key=lambda p: (p.size, -p.fidelity, p.source)):
        if p.size <= S.READABLE_MAX and (not out or p.fidelity > out[-1].fidelity):
            out.append(p)
    return out


def choose(front: Sequence[FrontPoint], tolerance: float = TOLERANCE) -> int:
    """Index (in ``front``, smallest first) of the smallest program within ``tolerance`` of the best."""
    if not front:
        raise ValueError("an empty front has no choice")
    best = max(p.fidelity for p in front)
    return next(i for i, p in enumerate(front) if p.fidelity >= best - tolerance)


def _breaks(fronts: dict[str, list[FrontPoint]], pick: dict[str, int]) -> tuple[bool, bool, bool]:
    sizes = [fronts[h][pick[h]].size for h in fronts]
    terms = [fronts[h][pick[h]].terms for h in fronts]
    med = bool(sizes) and float(np.median(sizes)) > S.READABLE_MEDIAN
    share = bool(terms) and float(np.mean([t <= S.READABLE_TERMS for t in terms])) < S.READABLE_TERMS_SHARE
    big = any(s > S.READABLE_MAX for s in sizes)
    return med, share, big


def within_budget(fronts: dict[str, list[FrontPoint]], pick: dict[str, int]) -> dict[str, int]:
    """``pick`` (head -> index in its front) stepped down until the run's readability budget holds."""
    pick = dict(pick)
    while True:
        med, share, big = _breaks(fronts, pick)
        if not (med or share or big):
            return pick
        best, best_loss = None, np.inf
        for h, i in pick.items():
            if i == 0:
                continue
            cur, lower = fronts[h][i], fronts[h][i - 1]
            helps = (big and cur.size > S.READABLE_MAX) or (med and cur.size > S.READABLE_MEDIAN) or \
                (share and cur.terms > S.READABLE_TERMS)
            if not helps:
                continue
            loss = (cur.fidelity - lower.fidelity) / max(cur.size - lower.size, 1)
            if loss < best_loss:
                best, best_loss = h, loss
        if best is None:
            return pick
        pick[best] -= 1
