"""The texts of an evaluation: the corpus's fit split (head means for mean-ablation), its select
split (choosing heads) and one or more test sets (every reported perplexity).

Test sets: the corpus's own test split, and each ``--test-text``: a text file (all of it is test:
paragraphs longer than the context are cut into windows, none is dropped) or a corpus name (its
test split only). Held-out means held-out: a fit or select text that overlaps any test text
(one contains the other, whitespace and case aside) is dropped from fit and select, and the
number dropped is reported.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from headcode.errors import HeadcodeError
from headcode.runtime.text.corpus import Corpus, _text_file, load_corpus

CORPUS_NAMES = ("stories", "lambada")


@dataclass(frozen=True)
class TestText:
    """Raw test text before tokenising: ``whole`` (a file: all of it) or a corpus's test split."""

    name: str
    source: str
    texts: tuple[str, ...]
    whole: bool


@dataclass(frozen=True)
class TestSet:
    """Token ids of one test set; ``texts[i]`` is one row of a batch."""

    name: str
    source: str
    texts: tuple[np.ndarray, ...]

    @property
    def n_tokens(self) -> int:
        return int(sum(len(t) for t in self.texts))

    @property
    def n_predicted(self) -> int:
        """Tokens whose loss is measured (every token after the first of each text)."""
        return int(sum(max(len(t) - 1, 0) for t in self.texts))


@dataclass(frozen=True)
class EvalTexts:
    fit: tuple[np.ndarray, ...]
    select: tuple[np.ndarray, ...]
    tests: tuple[TestSet, ...]      # the corpus's test split first
    dropped_for_overlap: int

    def splits(self) -> dict[str, list[np.ndarray]]:
        return {"fit": list(self.fit), "select": list(self.select), "test": list(self.tests[0].texts)}


def read_test_text(spec: str, unit: str = "paragraph") -> TestText:
    """``spec``: a text file (all of it is test) or a corpus name (its test split). Fails fast, before
    any model is loaded, on a missing or empty file."""
    path = Path(spec).expanduser()
    if path.is_file():
        texts = tuple(_text_file(path))
        if not texts:
            raise HeadcodeError(f"--test-text {spec}: the file has no text; give a file with the test text "
                                "(paragraphs separated by blank lines)")
        return TestText(path.name, f"all of {spec}", texts, whole=True)
    if spec in CORPUS_NAMES or spec.startswith("hf:"):
        c = load_corpus(spec, unit)
        return TestText(spec, f"test split of {spec}", tuple(c.split("test")), whole=False)
    raise HeadcodeError(f"--test-text {spec}: no such file; give a text file (all of it is test) or a corpus "
                        f"name ({', '.join(CORPUS_NAMES)}: its test split)")


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def overlapping(texts: Sequence[str], others: Sequence[str]) -> list[bool]:
    """Per text: does it contain, or is it contained in, any of ``others`` (whitespace, case aside)?"""
    other = [_norm(o) for o in others if o.strip()]
    exact = set(other)
    out = []
    for t in texts:
        n = _norm(t)
        out.append(n in exact or any(o in n or n in o for o in other))
    return out


def _ids(tokenizer: Any, texts: Sequence[str], max_tokens: int, whole: bool) -> list[np.ndarray]:
    """Token ids per text: truncated to ``max_tokens``, or (``whole``) cut into windows of it."""
    if not texts:
        return []
    enc = tokenizer(list(texts), add_special_tokens=True)["input_ids"]
    out = []
    for ids in enc:
        ids = np.asarray(ids, dtype=np.int64)
        if not whole:
            out.append(ids[:max_tokens])
            continue
        out += [ids[i:i + max_tokens] for i in range(0, len(ids), max_tokens)]
    return [t for t in out if len(t)]


def _until(tokenizer: Any, texts: Sequence[str], max_tokens: int, max_texts: int | None,
           test_tokens: int | None) -> list[np.ndarray]:
    """The first texts of a test split: all (``max_texts`` at most), or until ``test_tokens`` tokens are
    predicted (every token after the first of each text)."""
    if test_tokens is None:
        return _ids(tokenizer, list(texts)[:max_texts], max_tokens, whole=False)
    out, n = [], 0
    for i in range(0, len(texts), 64):
        for ids in _ids(tokenizer, texts[i:i + 64], max_tokens, whole=False):
            if n >= test_tokens:
                return out
            out.append(ids)
            n += len(ids) - 1
    return out


def eval_texts(corpus: Corpus, tokenizer: Any, max_texts: int | None = None, max_tokens: int = 256,
               extra: Sequence[TestText] = (), test_tokens: int | None = None) -> EvalTexts:
    """Fit and select texts of ``corpus`` (``max_texts`` each at most, none overlapping a test text),
    its test split (``max_texts``, or the first texts reaching ``test_tokens`` predicted tokens) and ``extra``."""
    test_strings = [t for x in extra for t in x.texts]
    keep = {s: corpus.split(s) for s in ("fit", "select")}
    dropped = 0
    if test_strings:
        for s, texts in keep.items():
            bad = overlapping(texts, test_strings)
            dropped += sum(bad)
            keep[s] = [t for t, b in zip(texts, bad) if not b]
    fit = _ids(tokenizer, keep["fit"][:max_texts], max_tokens, whole=False)
    select = _ids(tokenizer, keep["select"][:max_texts], max_tokens, whole=False)
    own = TestSet(f"{corpus.name}", f"test split of {corpus.name}",
                  tuple(_until(tokenizer, corpus.split("test"), max_tokens, max_texts, test_tokens)))
    tests = [own]
    for x in extra:
        if x.name == corpus.name and not x.whole:
            continue  # the corpus's own test split is already there
        ids = _ids(tokenizer, x.texts, max_tokens, whole=True) if x.whole else \
            _until(tokenizer, x.texts, max_tokens, max_texts, test_tokens)
        tests.append(TestSet(x.name if x.name not in {t.name for t in tests} else x.source, x.source, tuple(ids)))
    return EvalTexts(tuple(fit), tuple(select), tuple(tests), dropped)
