import numpy as np

from headcode.compiler.program import Program
from headcode.runtime.model.patterns import HeadPatterns
from headcode.synth.fit import RowStack, greedy_path, rows_iou
from headcode.synth.offline import OfflineBackend
from headcode.synth.ranking import rank_head


def test_offline_recovers_planted_programs(planted):
    b = OfflineBackend(progress=False)
    b.prepare(planted, planted.heads)
    for h in planted.heads:
        best, _ = rank_head(b, planted, h)
        assert best.iou["test"] > 0.99, (h, best.source)
        assert best.output_error["test"] < 1e-3
        # the written program, run by the reference, gives the attention the search scored
        prog = Program.from_source(best.source)
        i = planted.texts("test")[0]
        np.testing.assert_allclose(prog.attention(planted.tokens[i]), b.attention(best.source, [i])[0],
                                   atol=1e-5)
        assert prog.trace() is not None  # only selectors: compilable


def test_source_is_deterministic_and_readable(planted):
    srcs = []
    for _ in range(2):
        b = OfflineBackend(progress=False)
        b.prepare(planted, planted.heads)
        srcs.append([rank_head(b, planted, h)[0].source for h in planted.heads])
    assert srcs[0] == srcs[1]
    assert srcs[0][0] == ('def attend(t):\n    """70% the previous token, 30% the first token"""\n'
                          "    return 0.7 * previous(t, 1) + 0.3 * first(t)\n")


def test_test_split_is_never_used_for_writing_or_choosing(planted):
    b = OfflineBackend(progress=False)
    b.prepare(planted, planted.heads)
    before = {h: rank_head(b, planted, h)[0] for h in planted.heads}
    rng = np.random.default_rng(1)
    poisoned = tuple(rng.random(p.shape).astype(np.float32) if s == "test" else p
                     for p, s in zip(planted.packed, planted.splits))
    bad = HeadPatterns(planted.model, planted.unit, planted.heads, planted.tokens, planted.splits,
                       poisoned, planted.kv_of_head, planted.values)
    b2 = OfflineBackend(progress=False)
    b2.prepare(bad, bad.heads)
    for h in planted.heads:
        after = rank_head(b2, bad, h)[0]
        assert after.source == before[h].source
        assert after.iou["fit"] == before[h].iou["fit"] and after.iou["select"] == before[h].iou["select"]
        assert after.iou["test"] < before[h].iou["test"]  # the poison is seen where it should be


def test_a_heads_search_keeps_nothing_per_head_for_the_next_one(planted):
    """The true select outputs a head's exact scoring needs are dropped at the next head: kept for
    every head they took GBs on the demo's 270 heads (most of its 8.7 GB peak)."""
    def held(b: OfflineBackend) -> int:
        return sum(a.nbytes for a in b._sel_true.values())

    b = OfflineBackend(progress=False)
    b.prepare(planted, planted.heads)
    for h in planted.heads:
        b.front(planted, h)
        alone = OfflineBackend(progress=False)
        alone.prepare(planted, planted.heads)
        alone.front(planted, h)
        assert held(b) == held(alone) > 0, h


def test_greedy_path_adds_terms_by_gain():
    G = np.eye(3)
    b = np.array([0.1, 0.7, 0.2])
    path = greedy_path(G, b, 3)
    assert [np.flatnonzero(w).tolist() for w in path] == [[1], [1, 2], [0, 1, 2]]
    np.testing.assert_allclose(path[-1], b)


def test_rows_iou_empty_row_goes_to_first_key():
    import scipy.sparse as sp
    # two rows (q=0: 1 entry, q=1: 2 entries); one term, empty on row 1
    stack = RowStack(sp.csc_matrix(np.array([[1.0], [0.0], [0.0]])), np.array([0, 1]), np.array([0.5, 0.5]), ())
    a = np.array([1.0, 1.0, 0.0])
    assert rows_iou(stack, a, np.array([1.0])) == 1.0
    a2 = np.array([1.0, 0.0, 1.0])
    assert rows_iou(stack, a2, np.array([1.0])) == 0.5


def _gram(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return X.T @ X, X.T @ y


def test_greedy_path_weighs_a_spread_term_by_its_norm():
    # y = one-hot + a term spread thin over 8 entries; a sharp decoy overlaps the spread term's
    # first entry. Correlation per unit norm picks the spread term; raw correlation the decoy.
    spread = np.r_[0.0, np.full(8, 1 / 8)]
    sharp = np.r_[1.0, np.zeros(8)]
    decoy = np.r_[0.0, 1.0, np.zeros(7)]
    X = np.stack([sharp, spread, decoy], axis=1)
    G, b = _gram(X, 0.6 * sharp + 0.4 * spread)
    path = greedy_path(G, b, 2)
    assert [np.flatnonzero(w).tolist() for w in path] == [[0], [0, 1]]
    np.testing.assert_allclose(path[-1], [0.6, 0.4, 0.0], atol=1e-9)


def test_greedy_path_drops_an_early_pick_a_later_one_made_redundant():
    # y = a + b exactly; d lies between them and correlates best, so forward selection starts
    # with d and its two-term program keeps it; backward from {d, a, b} finds a + b.
    a, c = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    d = np.array([0.7, 0.7, 0.15])
    X = np.stack([a, c, d], axis=1)
    G, b = _gram(X, a + c)
    path = greedy_path(G, b, 3)
    assert np.flatnonzero(path[0]).tolist() == [2]
    assert np.flatnonzero(path[1]).tolist() == [0, 1]
    np.testing.assert_allclose(path[1], [1.0, 1.0, 0.0], atol=1e-9)
