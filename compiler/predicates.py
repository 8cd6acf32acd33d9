"""Single-token predicates: functions of one token's decoded text.

A predicate sees only the piece of one token (``tokenizer.decode([id])``), so it can be
evaluated once over the whole vocabulary into a boolean table; at run time it is a
gather ``table[ids]``. Predicates combine with ``&``, ``|`` and ``~``; every predicate
has a stable name that is also its identity (two predicates with the same name are the
same predicate).
"""

from __future__ import annotations

import hashlib
import types
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

FUNCTION_WORDS = frozenset(
    """a an the and or but if then so of to in on at by for with from into over under
    is was are were be been being am do did does has have had it its he she they them
    his her their him we us our you your i me my this that these those there here not
    no as up down out off than too very just who what which when where why how all
    some any each one""".split()
)


@dataclass(frozen=True)
class Pred:
    """A named boolean function of one token piece. ``name`` is the identity."""

    name: str
    fn: Callable[[str], bool] = field(compare=False, hash=False, repr=False)

    def __call__(self, piece: str) -> bool:
        return bool(self.fn(piece))

    def table(self, pieces: Sequence[str]) -> np.ndarray:
        """Evaluate over pieces (a text's tokens or a whole vocabulary): ``[N] bool``."""
        return np.fromiter((self.fn(p) for p in pieces), dtype=bool, count=len(pieces))

    def __and__(self, other: Pred) -> Pred:
        if not isinstance(other, Pred):
            return NotImplemented
        a, b = self.fn, other.fn
        return Pred(f"({self.name} & {other.name})", lambda p: a(p) and b(p))

    def __or__(self, other: Pred) -> Pred:
        if not isinstance(other, Pred):
            return NotImplemented
        a, b = self.fn, other.fn
        return Pred(f"({self.name} | {other.name})", lambda p: a(p) or b(p))

    def __invert__(self) -> Pred:
        a = self.fn
        return Pred(f"~{self.name}", lambda p: not a(p))


def _is_punct_char(c: str) -> bool:
    return unicodedata.category(c)[0] in "PS"


def _punct(p: str) -> bool:
    s = p.strip()
    return bool(s) and all(_is_punct_char(c) for c in s)


def _sentence_end(p: str) -> bool:
    return _punct(p) and any(c in ".!?" for c in p)


def _word_start(p: str) -> bool:
    return len(p) > 1 and p[0] in " \t\n" and not p[1:].isspace()


def _capitalised(p: str) -> bool:
    s = p.strip()
    return bool(s) and s[0].isupper()


def _alpha(p: str) -> bool:
    s = p.strip()
    return bool(s) and s.isalpha()


punct = Pred("punct", _punct)
sentence_end = Pred("sentence_end", _sentence_end)
comma = Pred("comma", lambda p: p.strip() == ",")
newline = Pred("newline", lambda p: "\n" in p)
space = Pred("space", lambda p: p.strip() == "")
word_start = Pred("word_start", _word_start)
capitalised = Pred("capitalised", _capitalised)
digit = Pred("digit", lambda p: any(c.isdigit() for c in p))
quote = Pred("quote", lambda p: any(c in "\"'“”‘’" for c in p) and _punct(p))
alpha = Pred("alpha", _alpha)
function_word = Pred("function_word", lambda p: p.strip().lower() in FUNCTION_WORDS)
content_word = Pred("content_word", lambda p: _alpha(p) and p.strip().lower() not in FUNCTION_WORDS)
# a position where a new sentence may begin after this token
boundary = Pred("boundary", lambda p: _sentence_end(p) or "\n" in p)
# a token that begins a new word (used for word positions)
new_word = Pred("new_word", lambda p: _word_start(p) or _punct(p) or "\n" in p)

BUILTIN_PREDS: dict[str, Pred] = {
    p.name: p
    for p in (
        punct, sentence_end, comma, newline, space, word_start, capitalised, digit, quote,
        alpha, function_word, content_word, boundary, new_word,
    )
}


def _code_key(code: types.CodeType) -> list:
    consts = [_code_key(c) if isinstance(c, types.CodeType) else repr(c) for c in code.co_consts]
    return [code.co_code.hex(), consts, list(code.co_names), list(code.co_varnames)]


def _content_digest(fn: Callable[[str], bool]) -> str | None:
    """A digest of a function's code when the code alone decides what it computes (no closure,
    no defaults, no global names it reads); ``None`` otherwise."""
    code = getattr(fn, "__code__", None)
    if not isinstance(code, types.CodeType) or getattr(fn, "__closure__", None):
        return None
    if getattr(fn, "__defaults__", None) or getattr(fn, "__kwdefaults__", None):
        return None
    glb = getattr(fn, "__globals__", {})

    def names(c: types.CodeType) -> list[str]:
        return list(c.co_names) + [n for k in c.co_consts if isinstance(k, types.CodeType) for n in names(k)]

    if any(n in glb for n in names(code)):
        return None
    return hashlib.sha256(repr(_code_key(code)).encode()).hexdigest()[:12]


def tok(fn: Callable[[str], bool], name: str | None = None) -> Pred:
    """A custom predicate over a token's decoded text, e.g. ``tok(lambda p: p.strip() == "and")``."""
    if name:
        return Pred(name, fn)
    # unnamed: a digest of the code when the code alone decides the result (``tok:<lambda>#digest``:
    # the same lambda in two programs shares a vocabulary table); otherwise a per-object name
    # (``tok:<lambda>@address``) so that two different functions never share a table. Names with
    # an ``@`` are only valid while the function lives: caches must not keep them.
    digest = _content_digest(fn)
    label = getattr(fn, "__name__", "fn")
    return Pred(f"tok:{label}#{digest}" if digest else f"tok:{label}@{id(fn):x}", fn)


def token_in(*words: str) -> Pred:
    """True for a token whose stripped, lower-cased text is one of ``words``."""
    ws = frozenset(w.strip().lower() for w in words)
    return Pred(f"token_in({', '.join(sorted(ws))})", lambda p: p.strip().lower() in ws)
