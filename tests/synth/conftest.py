"""Synthetic patterns for the synthesis tests: tokens from a small story vocabulary, attention
made by a known program, random values."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from headcode.compiler.program import Program
from headcode.compiler.tokens import Tokens
from headcode.runtime.model.heads import HeadRef
from headcode.runtime.model.patterns import HeadPatterns, pack

if str(Path(__file__).resolve().parent) not in sys.path:  # the hostile suite (hostile.py)
    sys.path.insert(0, str(Path(__file__).resolve().parent))

WORDS = [" the", " a", " cat", " dog", " sat", " ran", " on", " mat", " big", " red", " and",
         " was", " happy", "ing", "ed", " Tom", " Sue", " to", " park", " it"]
PLANTED = {
    "L0.H0": "def attend(t):\n    return 0.7 * previous(t, 1) + 0.3 * first(t)\n",
    "L0.H1": ("def attend(t):\n    return (\n        when(punct, 0.6 * first(t) + 0.4 * current(t))\n"
              "        + when(~punct, 0.5 * most_recent(t, punct) + 0.5 * previous(t, 2))\n    )\n"),
    "L1.H0": "def attend(t):\n    return 0.5 * same_token(t) + 0.3 * uniform(t, content_word) + 0.2 * first(t)\n",
}


def story(rng: np.random.Generator, n: int) -> Tokens:
    pieces = ["<s>"]
    while len(pieces) < n:
        k = int(rng.integers(3, 9))
        sent = [str(rng.choice(WORDS)) for _ in range(k)]
        sent[0] = " " + sent[0].strip().capitalize()
        pieces += sent + [str(rng.choice([".", ".", ",", "!"]))]
    return Tokens.synthetic(pieces[:n])


def make_patterns(sources: dict[str, str], n_texts: int = 24, length: int = 40, seed: int = 0,
                  D: int = 8, noise: float = 0.0) -> HeadPatterns:
    rng = np.random.default_rng(seed)
    heads = tuple(HeadRef.parse(h) for h in sources)
    progs = [Program.from_source(s, h) for h, s in sources.items()]
    tokens, packed, splits, values = [], [], [], []
    for i in range(n_texts):
        t = story(rng, int(length + rng.integers(-5, 6)))
        att = np.stack([p.attention(t) for p in progs]).astype(np.float32)
        if noise:
            att = att + noise * np.tril(rng.random(att.shape)).astype(np.float32)
            att = att / att.sum(-1, keepdims=True)
        tokens.append(t)
        packed.append(pack(att))
        splits.append(("fit", "fit", "select", "test")[i % 4])
        values.append(rng.standard_normal((len(heads), len(t), D)).astype(np.float16))
    return HeadPatterns("synthetic", "paragraph", heads, tuple(tokens), tuple(splits), tuple(packed),
                        tuple(range(len(heads))), tuple(values))


@pytest.fixture
def planted() -> HeadPatterns:
    return make_patterns(PLANTED)
