"""One-line English descriptions from the IR (each selector's phrase: tests/compiler/test_selectors.py)."""

import pytest

from headcode.compiler import english
from headcode.compiler.program import Program


def _describe(body: str) -> str:
    return english.describe(Program.from_source(f"def attend(t):\n    return {body}\n").trace())


@pytest.mark.parametrize("body, text", [
    ("0.7 * previous(t, 1) + 0.3 * first(t)", "70% the previous token, 30% the first token"),
    ("when(punct, sentence_start(t)) + when(~punct, current(t))",
     "on punctuation: the start of the sentence; otherwise: the token itself"),
    ("0.5 * before_last(t, verb_like) + 0.5 * most_recent(t, noun_like, strict=True)",
     "50% the token before the latest verb-like word, 50% the latest earlier noun-like word"),
    ("clause_start(t)", "the start of the clause"),
    ("after_last(t, determiner)", "the token after the latest earlier determiner"),
    ("uniform(t, name | pronoun)", "all tokens so far that are a name or a pronoun"),
    ("nearest_name(t)", "the latest earlier name"),
    ("0.25 * first(t) + 0.75 * first(t)", "the first token"),
])
def test_descriptions(body, text):
    assert _describe(body) == text


def test_products_have_no_plain_description():
    assert "no plain description" in _describe("previous(t, 1) & first(t)")
