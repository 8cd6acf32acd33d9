"""The named token classes on examples of their members and non-members."""

import pytest

from headcode.compiler.classes import CLASSES, meaning
from headcode.compiler.namespace import namespace

CASES = {
    "pronoun": ([" she", " He", " them", " it", " their", "I"], [" the", " cat", ".", " ran"]),
    "determiner": ([" the", " a", "The", " every", " those"], [" she", " ran", ",", " cat"]),
    "preposition": ([" in", " on", " with", " under"], [" and", " cat", " the"]),
    "conjunction": ([" and", " but", " because", " or"], [" the", " in", " cat"]),
    "auxiliary": ([" was", " is", " could", "'s", " had"], [" ran", " cat", " the"]),
    "name": ([" Lily", " Tom", "Ben", " Max"], [" The", " Once", " cat", " She", ".", " lily", " Suddenly"]),
    "verb_like": ([" ran", " played", " jumping", "ing", " was", " said"], [" cat", " the", " happy", "."]),
    "adjective_like": ([" big", " happy", " beautiful", " careless", " red"], [" ran", " cat", " the"]),
    "adverb_like": ([" very", " quickly", " never"], [" quick", " cat", " the"]),
    "noun_like": ([" cat", " park", " ball", " tree", " Lily"], [" the", " ran", " happy", "ing", ".", " she"]),
    "number": ([" 12", "3", " three", " 1,000"], [" cat", ".", " a", " 3d"]),
    "clause_boundary": ([",", ".", "!", ";", "\n", " ,"], [" and", " cat", "'", " ("]),
    "punct": ([".", ",", "!\"", " ("], [" cat", " ", "3"]),
    "comma": ([",", " ,"], [".", " and"]),
    "sentence_end": ([".", "!", "?", ".\""], [",", " cat"]),
    "quote": (["\"", " \"", "'"], [" cat", "."]),
    "newline": (["\n", "\n\n"], [" ", "."]),
    "capitalised": ([" The", "Lily"], [" the", "."]),
    "function_word": ([" the", " and", " she"], [" cat", "."]),
    "content_word": ([" cat", " ran"], [" the", "."]),
    "word_start": ([" cat", " the"], ["ing", ".", " "]),
    "alpha": ([" cat", "ing"], [" 3", "."]),
    "digit": ([" 3", "12"], [" cat"]),
    "space": ([" ", "  "], [" a"]),
    "boundary": ([".", "\n"], [",", " cat"]),
    "new_word": ([" cat", ".", "\n"], ["ing"]),
}


def test_every_class_has_examples():
    assert set(CASES) == set(CLASSES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_class_members_and_non_members(name):
    pred, phrase = CLASSES[name]
    members, others = CASES[name]
    assert [p for p in members if not pred(p)] == []
    assert [p for p in others if pred(p)] == []
    assert pred.name == name and phrase and meaning(name) == phrase


def test_classes_are_in_the_program_language():
    ns = namespace()
    for name, (pred, _) in CLASSES.items():
        assert ns[name].name == pred.name


def test_meaning_of_composites():
    assert meaning("~punct") == "not punctuation"
    assert meaning("(noun_like | name)") == "a noun-like word or a name"
    assert meaning("token_in(a, the)") == "one of 'a', 'the'"
