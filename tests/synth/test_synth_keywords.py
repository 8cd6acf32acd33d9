import numpy as np
import pytest

from headcode.compiler.program import Program
from headcode.synth import basis as B
from headcode.synth import keywords as KW
from headcode.synth.offline import OfflineBackend, OfflineOptions
from headcode.synth.ranking import rank_head

from .conftest import make_patterns, story

SALIENT = {"L0.H0": ("def attend(t):\n    return 0.6 * decay(t, 0.8, token_in('cat', 'park', 'red'))"
                     " + 0.4 * first(t)\n")}


def test_extra_columns_equal_the_reference_evaluation():
    t = story(np.random.default_rng(3), 45)
    ws = frozenset({"cat", "park", "."})
    extras = [KW.Extra("uniform", ws), KW.Extra("sentence", ws), KW.Extra("most_recent", ws),
              KW.Extra("most_recent", ws, strict=True), KW.Extra("decay", ws, rate=0.7),
              KW.Extra("uniform", ws, negate=True), KW.Extra("decay", ws, negate=True, rate=0.9)]
    cols = KW.extra_columns(extras, t)
    r, c = np.tril_indices(len(t))
    for j, x in enumerate(extras):
        ref = B.term_pattern(x.source, t)[r, c]
        ref[ref < KW.TINY] = 0.0
        np.testing.assert_allclose(cols[:, j], ref, atol=1e-6, err_msg=x.source)


def test_salience_finds_the_planted_words():
    p = make_patterns(SALIENT)
    sal = KW.salience(p, p.texts("fit"))
    tiers, avoided = KW.word_sets(sal, 0, KW.KeywordOptions())
    assert tiers and set(tiers[0]) == {"cat", "park", "red"}
    assert not {"cat", "park", "red"} & set(avoided)


@pytest.mark.parametrize("sources", [SALIENT])
def test_key_word_terms_recover_a_salience_head(sources):
    p = make_patterns(sources)
    h = p.heads[0]
    scores = {}
    for name, opt in (("without", OfflineOptions(keywords=None, lexical_words=0)), ("with", OfflineOptions())):
        b = OfflineBackend(opt, progress=False)
        b.prepare(p, p.heads)
        best, _ = rank_head(b, p, h)
        scores[name] = best.iou["test"]
        if name == "with":
            assert "token_in(" in best.source
            prog = Program.from_source(best.source)
            i = p.texts("test")[0]
            np.testing.assert_allclose(prog.attention(p.tokens[i]), b.attention(best.source, [i])[0], atol=1e-5)
            assert prog.trace() is not None
    assert scores["with"] > 0.9
    assert scores["with"] > scores["without"] + 0.3, scores  # measured: 0.94 vs 0.42
