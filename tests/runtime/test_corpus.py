"""Corpora: sources, units, and deterministic, disjoint, per-document splits."""

from __future__ import annotations

import pytest

from headcode.compiler.tokens import Tokens
from headcode.errors import HeadcodeError
from headcode.runtime.text.corpus import load_corpus, sentences, split_of


def _write(tmp_path, n=40):
    p = tmp_path / "c.txt"
    p.write_text("\n\n".join(f"Doc {i} begins here. It has a second sentence, number {i}. And a third one!"
                             for i in range(n)))
    return str(p)


def test_text_file_paragraphs_and_sentences(tmp_path):
    path = _write(tmp_path)
    para = load_corpus(path, "paragraph")
    sent = load_corpus(path, "sentence")
    assert len(para) == 40 and len(sent) == 120
    # every sentence sits in its document's split: a document never straddles splits
    for text, split, doc in zip(sent.texts, sent.splits, sent.docs):
        assert para.splits[doc] == split and text in para.texts[doc]


def test_splits_deterministic_disjoint_and_all_present(tmp_path):
    path = _write(tmp_path, 200)
    a, b = load_corpus(path), load_corpus(path)
    assert a.splits == b.splits
    assert {s: a.splits.count(s) for s in ("fit", "select", "test")}["fit"] > 60
    assert set(a.split("fit")).isdisjoint(a.split("test"))
    assert set(a.split("select")).isdisjoint(a.split("test"))
    assert load_corpus(path, seed=1).splits != a.splits
    assert split_of("x") == split_of("x")


def test_take_keeps_at_most_n_per_split(tmp_path):
    c = load_corpus(_write(tmp_path, 200)).take(5)
    assert sorted(c.splits) == sorted(["fit"] * 5 + ["select"] * 5 + ["test"] * 5)


def test_sentence_splitter():
    assert sentences('He said, "Look at me." She laughed at him. Then they went home!') == [
        'He said, "Look at me."', "She laughed at him.", "Then they went home!"]


def test_bundled_stories_and_lambada():
    s = load_corpus("stories")
    assert len(s) >= 200 and all(len(t.split()) >= 30 for t in s.texts)
    lam = load_corpus("lambada")
    assert len(lam) > 1000


def test_bad_corpora(tmp_path):
    with pytest.raises(HeadcodeError, match="unknown corpus"):
        load_corpus("no-such-corpus")
    with pytest.raises(HeadcodeError, match="unknown unit"):
        load_corpus("stories", "word")
    empty = tmp_path / "e.txt"
    empty.write_text("   \n\n")
    with pytest.raises(HeadcodeError, match="has no text"):
        load_corpus(str(empty))


def test_tokens_follow_the_tokenizer(tiny_tokenizer):
    t = Tokens.from_text(tiny_tokenizer, "Tom saw a ball. It was red!\nThe end.")
    assert list(t.ids) == tiny_tokenizer("Tom saw a ball. It was red!\nThe end.")["input_ids"]
    assert "".join(t.pieces) == t.text
    # sentences begin at 0, after "." / "!" and after the newline
    starts = [t.pieces[i] for i in range(len(t)) if t.sentence_begin[i]]
    assert len(starts) >= 3
    assert all(p.strip() == "" or p.strip()[0].isupper() for p in starts), starts
    assert t.sentence_index[-1] == t.sentence_begin.sum() - 1
