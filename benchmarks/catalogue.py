"""A shared catalogue of named programs (attention-gym style): the names are stable and double
as test ids and benchmark groups. ``PROGRAMS`` compile; ``REJECTED`` must be refused by the
compiler with the given reason fragments (every fragment must appear in the reasons).

Together ``PROGRAMS`` use every selector kind, every built-in predicate both as a key
restriction and as a query gate, ``+``, ``*weight``, ``& pred``, ``when``, predicate ``&``,
``|``, ``~``, ``tok(...)`` and ``token_in(...)`` (``tests/compiler/test_catalogue.py`` checks it).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Case:
    name: str
    body: str  # the expression ``attend(t)`` returns
    reasons: tuple[str, ...] = ()  # for rejected programs: fragments the reasons must contain

    @property
    def source(self) -> str:
        return f"# catalogue program {self.name}\ndef attend(t):\n    return {self.body}\n"


PROGRAMS: tuple[Case, ...] = (
    Case("previous_token", "previous(t, 1)"),
    Case("self_token", "current(t)"),
    Case("first_sink", "first(t)"),
    Case("previous_and_sink", "0.8 * previous(t, 1) + 0.2 * first(t)"),
    Case("previous_2_3", "0.5 * previous(t, 2) + 0.5 * previous(t, 3)"),
    Case("uniform_all", "uniform(t)"),
    Case("uniform_content", "uniform(t, content_word) + 0.1 * first(t)"),
    Case("same_sentence", "in_same_sentence(t)"),
    Case("same_sentence_alnum", "in_same_sentence(t, alpha | digit) + 0.2 * current(t)"),
    Case("same_token", "same_token(t)"),
    Case("recent_punct", "most_recent(t, punct)"),
    Case("first_name", "first_of(t, name) + 0.3 * previous(t, 1)"),
    Case("recent_comma_strict", "most_recent(t, comma, strict=True) + 0.1 * first(t)"),
    Case("sentence_start", "sentence_start(t)"),
    Case("word_start", "word_start(t) + 0.3 * previous(t, 1)"),
    Case("induction", "induction(t) + 0.05 * first(t)"),
    Case("decay_half", "decay(t, 0.5)"),
    Case("decay_function_words", "decay(t, 0.8, function_word) + 0.2 * current(t)"),
    Case("capitalised_gate", "when(capitalised, previous(t, 1)) + 0.3 * first(t)"),
    Case("no_space_keys", "(previous(t, 1) + uniform(t)) & ~space"),
    Case("line_gate", "when(newline | sentence_end, first(t)) + when(~(newline | sentence_end), previous(t, 1))"),
    Case("custom_the", "most_recent(t, tok(lambda p: p.strip().lower() == 'the'), strict=True) + 0.2 * current(t)"),
    Case("conjunctions", "2 * when(token_in('and', 'but', 'or'), previous(t, 1)) + uniform(t, token_in('and', 'but', 'or'))"),
    Case("quotes_digits", "when(quote, most_recent(t, quote, strict=True)) + when(digit, uniform(t, digit)) + 0.1 * first(t)"),
    Case("space_newline", "when(space, first(t)) + most_recent(t, space | newline) + 0.1 * current(t)"),
    Case("boundary_words", "when(boundary, uniform(t, boundary)) + when(new_word & ~word_start, previous(t, 1)) + 0.1 * first(t)"),
    Case("gate_sweep", "when(punct, sentence_start(t)) + when(comma, most_recent(t, comma)) + when(alpha, current(t)) + "
         "when(function_word, previous(t, 1)) + when(content_word, same_token(t)) + when(word_start, word_start(t)) + 0.05 * first(t)"),
    Case("key_sweep", "uniform(t, sentence_end) + uniform(t, capitalised) + decay(t, 0.9, new_word) + "
         "most_recent(t, word_start & capitalised) + 0.05 * first(t)"),
    Case("duplicate_terms", "0.5 * previous(t, 1) + 0.5 * previous(t, 1) + 0.25 * (current(t) + first(t))"),
    Case("clause_start", "clause_start(t) + 0.2 * previous(t, 1)"),
    Case("subject_guess", "before_last(t, verb_like) + 0.5 * after_last(t, determiner) + 0.1 * first(t)"),
    Case("pronoun_to_name", "when(pronoun, nearest_name(t)) + when(~pronoun, most_recent(t, noun_like)) + 0.1 * first(t)"),
    Case("word_classes", "uniform(t, adjective_like | number | preposition) + "
         "when(conjunction | auxiliary | adverb_like, clause_start(t) & name) + 0.05 * first(t)"),
    Case("gated_restricted_mix", "when(~punct, (induction(t) + 0.5 * decay(t, 0.7)) & (alpha | space)) + 0.01 * first(t)"),
)

REJECTED: tuple[Case, ...] = (
    Case("product", "previous(t, 1) & first(t)", ("product",)),
    Case("maximum", "previous(t, 1) | uniform(t)", ("maximum",)),
    Case("numpy_free_form", "np.tril(np.ones((len(t), len(t))))", ("untraceable", "len(t)")),
    Case("reads_tokens", "uniform(t) if t.ids[0] == 0 else first(t)", ("untraceable", "t.ids")),
    Case("product_and_max", "0.5 * (previous(t, 1) & first(t)) + 0.5 * (uniform(t) | current(t))", ("product", "maximum")),
    Case("gated_product", "when(punct, previous(t, 1) & first(t))", ("predicate applied to a product", "product")),
)

BY_NAME = {c.name: c for c in PROGRAMS + REJECTED}


# a synthetic vocabulary with spaces, punctuation, newlines, capitals, digits, quotes and
# function words; texts drawn from it repeat tokens often (same_token / induction matter)
VOCAB: tuple[str, ...] = (
    "<s>", "Once", " upon", " a", " time", ",", " there", " was", " the", " The", " cat", " Tom",
    " and", " but", " or", ".", "!", "?", "\n", "\n\n", " ", '"', ' "', "'s", " 12", "3", " ran",
    " to", " park", "ing", "ed", " He", " she", " big", " red", ":", " (", ")", "-", "  ", " Lily",
)


def random_ids(rng, T: int, vocab_size: int = len(VOCAB)):
    """``[T] int64`` token ids: a Zipf-like draw (frequent repeats) that starts with id 0."""
    import numpy as np

    p = 1.0 / np.arange(1, vocab_size + 1) ** 0.8
    ids = rng.choice(vocab_size, size=T, p=p / p.sum())
    perm = rng.permutation(vocab_size)  # which pieces are frequent changes per text
    ids = perm[ids]
    if T:
        ids[0] = 0
    return ids.astype(np.int64)
