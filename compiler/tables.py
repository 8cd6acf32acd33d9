"""Vocabulary tables: a predicate over every piece of a tokenizer's vocabulary, ``[vocab] bool``.

Evaluating a predicate over a 50k vocabulary costs ~50 ms, so tables are cached per
(tokenizer fingerprint, predicate name) in a bounded LRU — for the built-in predicates only
(``cacheable``): a program can name its own predicate ``punct``, so a name alone is not an
identity a cache may trust.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import numpy as np

from headcode.compiler.predicates import BUILTIN_PREDS, Pred, tok

MAX_CACHED = 4096
_CACHE: OrderedDict[tuple[str, str, int], np.ndarray] = OrderedDict()


class TableError(ValueError):
    """A predicate raised on some vocabulary piece, or is not a function of the piece alone."""


def cacheable(pred: Pred) -> bool:
    """The built-in predicate objects themselves, and ``tok`` predicates whose name is the digest
    of their own code (recomputed here). Any other predicate (a combination, a ``Pred`` a program
    made) may carry a name with another function behind it, and a cached table under that name
    would poison every later compile in the process."""
    if BUILTIN_PREDS.get(pred.name) is pred:
        return True
    return pred.name.startswith("tok:") and "@" not in pred.name and tok(pred.fn).name == pred.name


def vocab_table(pred: Pred, pieces: Sequence[str], fingerprint: str) -> np.ndarray:
    """``[len(pieces)] bool`` (read-only); ``TableError`` if the predicate raises on a piece or
    answers differently when asked again in the other order (state kept between calls: the
    table explain scores and the one compile builds would differ)."""
    key = (fingerprint, pred.name, len(pieces))
    hit = _CACHE.get(key) if cacheable(pred) else None
    if hit is not None:
        _CACHE.move_to_end(key)
        return hit
    try:
        table = pred.table(pieces)
        again = pred.table(pieces[::-1])[::-1]  # a second pass, in the other order
    except Exception as e:  # noqa: BLE001 - any failure of user code becomes a compile reason
        bad = next((p for p in pieces if _raises(pred, p)), None)
        raise TableError(f"predicate {pred.name} raised {type(e).__name__}: {e} (on piece {bad!r})") from e
    if not np.array_equal(table, again):
        bad = pieces[int(np.flatnonzero(table != again)[0])]
        raise TableError(f"predicate {pred.name} is not a function of the token alone: asked twice about "
                         f"{bad!r} it answered differently (it keeps state between calls)")
    table.setflags(write=False)
    if cacheable(pred):
        _CACHE[key] = table
        if len(_CACHE) > MAX_CACHED:
            _CACHE.popitem(last=False)
    return table


def builtin_tables(pieces: Sequence[str], fingerprint: str) -> dict[str, np.ndarray]:
    """Every built-in predicate's table over ``pieces`` (``{name: [len(pieces)] bool}``), from
    this process's cache: the host computes them once per vocabulary (~0.5 s for 49k pieces)
    and sends them with each program to the sandbox (``preload``), whose fresh process would
    otherwise compute the ones a program uses again (~0.1 s each). Cached under the pieces'
    digest too: a caller's fingerprint alone is not trusted to name one vocabulary."""
    key = fingerprint + ":" + hashlib.sha256("\0".join(pieces).encode()).hexdigest()[:16]  # ~10 ms for 49k
    return {name: vocab_table(pred, pieces, key) for name, pred in BUILTIN_PREDS.items()}


def preload(tables: Mapping[str, np.ndarray], n_pieces: int, fingerprint: str) -> None:
    """Put built-in predicates' tables computed elsewhere (by the trusted host, ``builtin_tables``)
    into this process's cache; anything not a built-in's ``[n_pieces] bool`` table is ignored."""
    for name, table in tables.items():
        if name in BUILTIN_PREDS and isinstance(table, np.ndarray) and table.shape == (n_pieces,) \
                and table.dtype == np.bool_:
            table = table.copy()
            table.setflags(write=False)
            _CACHE[(fingerprint, name, n_pieces)] = table
    while len(_CACHE) > MAX_CACHED:
        _CACHE.popitem(last=False)


def _raises(pred: Pred, piece: str) -> bool:
    try:
        pred.fn(piece)
    except Exception:  # noqa: BLE001 - only used to name the piece that fails
        return True
    return False


def clear_cache() -> None:
    _CACHE.clear()
