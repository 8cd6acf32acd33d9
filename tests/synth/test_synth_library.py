from headcode.synth.backend import Candidate, Rejected
from headcode.synth.library import build_library, skeleton


def cand(h, src, sel):
    return Candidate("p", src, h, {"fit": sel, "select": sel, "test": sel}, {"test": 0.1}, {"test": 0.1})


SRC = {k: f"def attend(t):\n    return {k}\n" for k in ("first(t)", "current(t)", "previous(t, 1)")}


def fake_scorer(table):
    calls = []

    def score(h, src, splits):
        calls.append((h, src, tuple(splits)))
        if src not in table.get(h, {}):
            raise Rejected("cannot run")
        v = table[h][src]
        return Candidate("q", src, h, {s: v for s in splits}, {s: 0.2 for s in splits}, {s: 0.3 for s in splits})

    score.calls = calls
    return score


def test_cap_rehomes_heads_on_select():
    a, b, c = SRC.values()
    chosen = {"L0.H0": cand("L0.H0", a, 0.9), "L0.H1": cand("L0.H1", a, 0.8), "L0.H2": cand("L0.H2", b, 0.7),
              "L0.H3": cand("L0.H3", c, 0.6)}
    # c is used by one head with the lowest select IoU: dropped; L0.H3 takes the kept program best on select
    table = {"L0.H3": {a: 0.4, b: 0.55}}
    score = fake_scorer(table)
    final = build_library(chosen, score, max_programs=2)
    assert len({x.source for x in final.values()}) == 2
    assert final["L0.H3"].source == b
    assert final["L0.H3"].iou["select"] == 0.55 and final["L0.H3"].iou["test"] == 0.55
    assert final["L0.H0"] is chosen["L0.H0"] and final["L0.H2"] is chosen["L0.H2"]
    assert all(h == "L0.H3" for h, _, _ in score.calls)


def test_near_identical_programs_merge_when_select_allows():
    s1 = "def attend(t):\n    return 0.7 * previous(t, 1) + 0.3 * first(t)\n"
    s2 = "def attend(t):\n    return 0.71 * previous(t, 1) + 0.29 * first(t)\n"
    assert skeleton(s1)[0] == skeleton(s2)[0]
    chosen = {"L0.H0": cand("L0.H0", s1, 0.9), "L0.H1": cand("L0.H1", s1, 0.9), "L0.H2": cand("L0.H2", s2, 0.8)}
    final = build_library(chosen, fake_scorer({"L0.H2": {s1: 0.799}}))
    assert final["L0.H2"].source == s1
    final = build_library(chosen, fake_scorer({"L0.H2": {s1: 0.7}}))  # merging would cost too much
    assert final["L0.H2"].source == s2
