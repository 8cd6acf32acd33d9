"""``Tokens``: one text exactly as the model sees it.

Programs receive ``Tokens``, never a tokenizer, so they cannot mis-align with the model's
own tokens. ``pieces[i]`` is ``tokenizer.decode([ids[i]])``: a function of the id alone, so
every predicate over a piece is also a table over the vocabulary (see
``headcode.compiler.predicates``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from headcode.compiler import predicates as P


@dataclass(frozen=True, eq=False)
class Tokens:
    """One tokenised text. ``ids [T] int64``, ``pieces`` (T strings), ``offsets [T, 2]`` (char spans)."""

    text: str
    ids: np.ndarray
    pieces: tuple[str, ...]
    offsets: np.ndarray

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.pieces) or len(self.ids) != len(self.offsets):
            raise ValueError("Tokens: ids, pieces and offsets must have the same length")

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def has(self, pred: P.Pred) -> np.ndarray:
        """``[T] bool``: the predicate on each token (cached per predicate name)."""
        cache = self.__dict__.setdefault("_pred_cache", {})
        if pred.name not in cache:
            cache[pred.name] = pred.table(self.pieces)
        return cache[pred.name]

    def prefix(self, n: int) -> Tokens:
        """The first ``n`` tokens (and the text up to the end of token ``n - 1``): what a
        free-form program sees when it scores row ``n - 1`` (``compiler.program.prefix_scores``)."""
        n = max(0, min(int(n), len(self)))
        end = int(self.offsets[:n, 1].max()) if n else 0
        return Tokens(self.text[:end], self.ids[:n].copy(), self.pieces[:n], self.offsets[:n].copy())

    # positional features (prefix scans: causal) ----------------------------------------
    @cached_property
    def sentence_begin(self) -> np.ndarray:
        """``[T] bool``: position 0, and every token right after a sentence end or newline."""
        b = np.zeros(len(self), dtype=bool)
        if len(self):
            b[0] = True
            b[1:] = self.has(P.boundary)[:-1]
        return b

    @cached_property
    def sentence_index(self) -> np.ndarray:
        """``[T] int``: which sentence each token is in (a prefix count of sentence beginnings)."""
        return np.cumsum(self.sentence_begin) - 1

    @cached_property
    def word_begin(self) -> np.ndarray:
        b = self.has(P.new_word).copy()
        if len(self):
            b[0] = True
        return b

    @cached_property
    def word_index(self) -> np.ndarray:
        """``[T] int``: which word each token is in."""
        return np.cumsum(self.word_begin) - 1

    # construction ---------------------------------------------------------------------
    @classmethod
    def from_text(cls, tokenizer: Any, text: str, max_tokens: int | None = None) -> Tokens:
        """Tokenise ``text`` as the model sees it (special tokens as the tokenizer adds them)."""
        enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=True)
        ids = np.asarray(enc["input_ids"], dtype=np.int64)
        offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
        if max_tokens is not None:
            ids, offsets = ids[:max_tokens], offsets[:max_tokens]
        return cls.from_ids(tokenizer, ids, text=text, offsets=offsets)

    @classmethod
    def from_ids(
        cls, tokenizer: Any, ids: Any, text: str | None = None, offsets: np.ndarray | None = None
    ) -> Tokens:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        pieces = tuple(decode_piece(tokenizer, int(i)) for i in ids)
        if offsets is None:
            ends = np.cumsum([len(p) for p in pieces], dtype=np.int64)
            offsets = np.stack([ends - np.array([len(p) for p in pieces], dtype=np.int64), ends], 1)
        return cls(text="".join(pieces) if text is None else text, ids=ids, pieces=pieces,
                   offsets=offsets.reshape(-1, 2))

    @classmethod
    def synthetic(cls, pieces: list[str], ids: list[int] | None = None) -> Tokens:
        """Tokens without a tokenizer (tests, probes): ids default to one id per distinct piece."""
        if ids is None:
            index: dict[str, int] = {}
            ids = [index.setdefault(p, len(index)) for p in pieces]
        ends = np.cumsum([len(p) for p in pieces], dtype=np.int64)
        starts = ends - np.array([len(p) for p in pieces], dtype=np.int64)
        return cls("".join(pieces), np.asarray(ids, dtype=np.int64), tuple(pieces),
                   np.stack([starts, ends], 1).reshape(-1, 2))


def decode_piece(tokenizer: Any, token_id: int) -> str:
    """The text of one token on its own; the same function builds the vocabulary tables."""
    return tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)


def vocabulary_pieces(tokenizer: Any) -> list[str]:
    """``decode_piece`` for every id of the tokenizer (including added tokens)."""
    n = len(tokenizer)
    return [decode_piece(tokenizer, i) for i in range(n)]


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of the vocabulary (id -> piece) and special tokens: what tables depend on."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    h = hashlib.sha256(json.dumps([vocab, sorted(map(str, tokenizer.all_special_tokens))]).encode())
    return h.hexdigest()[:16]
