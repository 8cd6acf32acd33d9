"""Occam's choice, the run's readability budget, planted short programs recovered no larger,
and weights fitted on output error against IoU-fitted weights."""

from __future__ import annotations

import numpy as np

from headcode.compiler.size import program_size
from headcode.runtime.model.heads import HeadRef
from headcode.runtime.model.patterns import HeadPatterns, pack
from headcode.synth.occam import FrontPoint, choose, pareto, within_budget
from headcode.synth.offline import OfflineBackend, OfflineOptions
from headcode.synth.ranking import rank_head, score_source

from .conftest import make_patterns, story

SHORT = {
    "L0.H0": "def attend(t):\n    return 0.6 * most_recent(t, noun_like) + 0.4 * first(t)\n",
    "L0.H1": "def attend(t):\n    return 0.5 * clause_start(t) + 0.5 * previous(t, 1)\n",
    "L1.H0": "def attend(t):\n    return when(determiner, after_last(t, verb_like)) + when(~determiner, current(t))\n",
}


def _pt(size: int, fid: float, terms: int = 2) -> FrontPoint:
    return FrontPoint(f"p{size}_{fid}", size, terms, fid, None)


def test_occam_takes_the_smaller_program_within_tolerance():
    small, big = _pt(10, 0.900), _pt(30, 0.905)
    front = pareto([big, small, _pt(40, 0.85)])  # the 40-node program is dominated
    assert front == [small, big]
    assert front[choose(front, tolerance=0.01)] == small
    assert front[choose(front, tolerance=0.001)] == big  # outside the tolerance the better one wins
    far = pareto([small, _pt(30, 0.95)])
    assert far[choose(far, tolerance=0.01)].size == 30


def test_fidelity_blends_iou_and_output_error():
    assert FrontPoint("a", 1, 1, 0.8, 0.2).fidelity == 0.5 * 0.8 + 0.5 * 0.8
    assert FrontPoint("a", 1, 1, 0.8, 3.0).fidelity == 0.4  # worse than a zero output earns nothing
    assert FrontPoint("a", 1, 1, 0.8, None).fidelity == 0.8


def test_run_budget_steps_down_the_cheapest_heads():
    fronts = {f"L0.H{i}": [_pt(8, 0.5, 1), _pt(60, 0.9 - 0.01 * i, 6)] for i in range(5)}
    pick = within_budget(fronts, {h: 1 for h in fronts})
    sizes = sorted(fronts[h][pick[h]].size for h in fronts)
    assert np.median(sizes) <= 40 and np.mean([fronts[h][pick[h]].terms <= 4 for h in fronts]) >= 0.8
    # the heads that lose least per node saved step down first
    assert [h for h in sorted(fronts) if pick[h] == 1] == ["L0.H0"]


def test_search_recovers_planted_short_programs_no_larger():
    p = make_patterns(SHORT)
    b = OfflineBackend(progress=False)
    b.prepare(p, p.heads)
    for h in p.heads:
        best, front = rank_head(b, p, h)
        assert best.iou["test"] > 0.99, (h, best.source)
        assert best.size <= program_size(SHORT[str(h)]).nodes, (h, best.source)
        assert best.size == program_size(best.source).nodes and best.description
        assert [q.size for q in front] == sorted(q.size for q in front)


def _large_value_patterns(n_texts: int = 16, seed: int = 0) -> HeadPatterns:
    """True attention: 0.3 on the first token, 0.7 spread evenly over keys 1..q (no dictionary
    term); the first token's value vector is 50 times larger than the others."""
    rng = np.random.default_rng(seed)
    tokens, packed, splits, values = [], [], [], []
    for i in range(n_texts):
        t = story(rng, 36)
        T = len(t)
        A = np.zeros((T, T))
        A[0, 0] = 1.0
        for q in range(1, T):
            A[q, 0] = 0.3
            A[q, 1:q + 1] = 0.7 / q
        v = rng.standard_normal((1, T, 8))
        v[0, 0] *= 50.0
        tokens.append(t)
        packed.append(pack(A[None]).astype(np.float32))
        splits.append(("fit", "fit", "select", "test")[i % 4])
        values.append(v.astype(np.float16))
    return HeadPatterns("synthetic", "paragraph", (HeadRef(0, 0),), tuple(tokens), tuple(splits),
                        tuple(packed), (0,), tuple(values))


def test_output_error_fit_beats_iou_fit_on_a_large_norm_value():
    p = _large_value_patterns()
    b = OfflineBackend(OfflineOptions(terms=("first(t)", "previous(t, 1)"), partitions=("all",)), progress=False)
    b.prepare(p, p.heads)
    two = {q.fit: q for q in b.front(p, p.heads[0]) if q.terms == 2}
    assert {"output", "iou"} <= set(two)
    err = {fit: score_source(b, p, p.heads[0], two[fit].source, ("test",)).output_error["test"]
           for fit in ("output", "iou")}
    assert err["output"] < 0.5 * err["iou"], err
    assert abs(two["output"].output_error - score_source(b, p, p.heads[0], two["output"].source,
                                                         ("select",)).output_error["select"]) < 1e-6


class _Canned:
    """A backend without its own front: proposals are scored by the ranking."""

    name = "canned"

    def __init__(self, sources):
        self.sources = sources

    def propose(self, patterns, head):
        return self.sources

    def attention(self, source, texts):
        from headcode.compiler.program import Program

        prog = Program.from_source(source)
        return [prog.attention(self.patterns.tokens[i]) for i in texts]


def test_long_word_lists_never_enter_the_front(planted):
    from headcode.synth.ranking import head_points

    words = ", ".join(repr(w) for w in "a b c d e f g h i".split())
    long_list = f"def attend(t):\n    return 0.5 * uniform(t, token_in({words})) + 0.5 * first(t)\n"
    short = "def attend(t):\n    return 0.7 * previous(t, 1) + 0.3 * first(t)\n"
    b = _Canned([long_list, short])
    b.patterns = planted
    points = head_points(b, planted, planted.heads[0])
    assert [p.source for p in points] == [short] and points[0].iou > 0.99
