"""Held-out ranking: programs written on fit, chosen on select, reported on test.

``rank_head`` builds the front of a head's candidates on the select split (``synth.occam``:
size against fidelity, a blend of IoU and output error), chooses the smallest program within
tolerance of the best, and only then scores the chosen program on the test split. Nothing
computed on test feeds back into any choice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace

from headcode.compiler.size import READABLE_WORDS, program_size
from headcode.runtime.model.heads import HeadRef
from headcode.runtime.model.patterns import HeadPatterns
from headcode.synth.backend import Backend, Candidate, Rejected
from headcode.synth.occam import FrontPoint, pareto
from headcode.synth.occam import choose as occam_choose
from headcode.synth.scores import score_head


def program_name(source: str) -> str:
    """A stable name for a program: a hash of its source."""
    return "p_" + hashlib.sha1(source.encode()).hexdigest()[:10]


def score_source(backend: Backend, patterns: HeadPatterns, head: HeadRef, source: str,
                 splits: Sequence[str]) -> Candidate:
    """Score ``source`` on ``head`` for ``splits`` (IoU, output error, JSD); ``Rejected`` if the
    program cannot run."""
    texts = [i for s in splits for i in patterns.texts(s)]
    att = dict(zip(texts, backend.attention(source, texts)))
    sc = score_head(patterns, head, att.__getitem__, splits=splits, with_output=True)
    return Candidate(program_name(source), source, str(head), sc.iou, sc.output_error, sc.jsd)


def head_points(backend: Backend, patterns: HeadPatterns, head: HeadRef) -> list[FrontPoint]:
    """Every candidate of ``head`` scored on the select split (size, IoU, output error). A backend
    with a ``front`` method scores its own candidates; otherwise each proposal is scored here."""
    if hasattr(backend, "front"):
        return list(backend.front(patterns, head))
    points, reasons = [], []
    for src in dict.fromkeys(backend.propose(patterns, head)):
        try:
            size = program_size(src)
            if size.longest_list > READABLE_WORDS:
                raise Rejected(f"a literal list of {size.longest_list} words (at most {READABLE_WORDS})")
            sc = score_source(backend, patterns, head, src, ("select",))
        except (Rejected, ValueError) as e:
            reasons.append(str(e))
            continue
        points.append(FrontPoint(src, size.nodes, size.terms, sc.iou.get("select", 0.0),
                                 sc.output_error.get("select")))
    if not points:
        raise Rejected(f"{head}: no proposed program could be run ({'; '.join(reasons[:3]) or 'none proposed'})")
    return points


def head_front(backend: Backend, patterns: HeadPatterns, head: HeadRef) -> list[FrontPoint]:
    """The (size, select fidelity) front of ``head``'s candidates, smallest first."""
    front = pareto(head_points(backend, patterns, head))
    if not front:
        raise Rejected(f"{head}: no candidate program within the size limit")
    return front


def finalize(backend: Backend, patterns: HeadPatterns, head: HeadRef, source: str,
             front: Sequence[FrontPoint] = ()) -> Candidate:
    """The chosen program's candidate: scores on every split (test only now, after the choice),
    size, terms, description and the front it was chosen from."""
    c = score_source(backend, patterns, head, source, ("fit", "select", "test"))
    size = program_size(source)
    desc = next((p.description for p in front if p.source == source), "")
    return replace(c, size=size.nodes, terms=size.terms, description=desc, front=[p.to_json() for p in front])


TIE = 1e-4  # select IoUs this close are a tie: the shorter program wins


def choose(cands: Sequence[Candidate]) -> Candidate:
    """The best candidate by select IoU; near-ties (``TIE``) go to the shorter source, then the name."""
    if not cands:
        raise Rejected("no candidate program could be run")
    top = max(c.iou.get("select", -1.0) for c in cands)
    near = [c for c in cands if c.iou.get("select", -1.0) >= top - TIE]
    return min(near, key=lambda c: (len(c.source), c.program))


def rank_head(backend: Backend, patterns: HeadPatterns, head: HeadRef) -> tuple[Candidate, list[FrontPoint]]:
    """``(chosen with test scores, the front)`` for one head: Occam's choice on the select split."""
    front = head_front(backend, patterns, head)
    return finalize(backend, patterns, head, front[occam_choose(front)].source, front), front
