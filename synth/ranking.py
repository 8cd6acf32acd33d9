"""Held-out ranking: programs written on fit, chosen on select, reported on test.

``rank_head`` scores a backend's proposals on the fit and select splits, chooses the best
by select IoU (ties: the shorter source), and only then scores the chosen program on the
test split. Nothing computed on test feeds back into any choice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from headcode.runtime.heads import HeadRef
from headcode.runtime.patterns import HeadPatterns
from headcode.synth.backend import Backend, Candidate, Rejected
from headcode.synth.scores import score_head


def program_name(source: str) -> str:
    """A stable name for a program: a hash of its source."""
    return "p_" + hashlib.sha1(source.encode()).hexdigest()[:10]


def score_source(backend: Backend, patterns: HeadPatterns, head: HeadRef, source: str,
                 splits: Sequence[str]) -> Candidate:
    """Score ``source`` on ``head`` for ``splits``; ``Rejected`` if the program cannot run."""
    texts = [i for s in splits for i in patterns.texts(s)]
    att = dict(zip(texts, backend.attention(source, texts)))
    sc = score_head(patterns, head, att.__getitem__, splits=splits,
                    with_output=any(s == "test" for s in splits))
    return Candidate(program_name(source), source, str(head), sc.iou, sc.output_error, sc.jsd)


TIE = 1e-4  # select IoUs this close are a tie: the shorter program wins


def choose(cands: Sequence[Candidate]) -> Candidate:
    """The best candidate by select IoU; near-ties (``TIE``) go to the shorter source, then the name."""
    if not cands:
        raise Rejected("no candidate program could be run")
    top = max(c.iou.get("select", -1.0) for c in cands)
    near = [c for c in cands if c.iou.get("select", -1.0) >= top - TIE]
    return min(near, key=lambda c: (len(c.source), c.program))


def rank_head(backend: Backend, patterns: HeadPatterns, head: HeadRef) -> tuple[Candidate, list[Candidate]]:
    """``(chosen with test scores, all scored candidates)`` for one head."""
    scored: list[Candidate] = []
    reasons: list[str] = []
    for src in dict.fromkeys(backend.propose(patterns, head)):
        try:
            scored.append(score_source(backend, patterns, head, src, ("fit", "select")))
        except Rejected as e:
            reasons.append(str(e))
    if not scored:
        raise Rejected(f"{head}: no proposed program could be run ({'; '.join(reasons[:3]) or 'none proposed'})")
    best = choose(scored)
    return with_test(backend, patterns, head, best), scored


def with_test(backend: Backend, patterns: HeadPatterns, head: HeadRef, cand: Candidate) -> Candidate:
    """``cand`` plus its scores on the test split (called only after the choice is made)."""
    test = score_source(backend, patterns, head, cand.source, ("test",))
    return Candidate(cand.program, cand.source, cand.head, {**cand.iou, **test.iou},
                     {**cand.output_error, **test.output_error}, {**cand.jsd, **test.jsd})


def mean(xs: Sequence[float]) -> float:
    return float(np.mean(xs)) if len(xs) else float("nan")
