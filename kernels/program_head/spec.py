"""The kernel-level description of a head program: plain arrays, no Python objects.

A head is ``sum_i w_i * S_i`` over selector terms; the output row is
``out[q] = sum_i w_i g_i[q] num_i[q] / sum_i w_i g_i[q] has_i[q]`` where ``num_i[q]`` is the
row-normalised selector ``S_i[q, :] @ V``, ``has_i[q]`` says whether that row is non-empty and
``g_i[q]`` is the query gate; a zero denominator gives ``V[start]`` (the framework sends an
empty row to the first token). Positions before ``start[b]`` (left padding) are not keys, and
their own output rows are zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# kind codes (the compiler maps its selector kind names onto these)
OFFSET, FIRST, UNIFORM, SENTENCE, SAME_TOKEN, MOST_RECENT, SENTENCE_START, WORD_START, INDUCTION, DECAY = range(10)
# segment_start: latest key that is the start or follows an aux token; anchor: latest aux key (strict:
# before the query) shifted by k, kept only inside [start, q]
SEGMENT_START, ANCHOR = 10, 11
KIND_CODES: dict[str, int] = {
    "offset": OFFSET, "first": FIRST, "uniform": UNIFORM, "sentence": SENTENCE,
    "same_token": SAME_TOKEN, "most_recent": MOST_RECENT, "sentence_start": SENTENCE_START,
    "word_start": WORD_START, "induction": INDUCTION, "decay": DECAY,
    "segment_start": SEGMENT_START, "anchor": ANCHOR,
}
# kinds whose key is placed by a per-term aux table (``aux_tab``)
AUX_KIND_CODES = frozenset({SEGMENT_START, ANCHOR})
# kinds computed as a (segmented, decayed) running sum over keys; the others pick one key
SCAN_KINDS = frozenset({UNIFORM, SENTENCE, DECAY, SAME_TOKEN})


@dataclass(frozen=True, eq=False)
class HeadSpec:
    """Arrays of one head program, ``n`` terms and ``n_tables`` vocabulary tables.

    kinds [n] int64, ks [n] int64 (offset, anchor shift), rates [n] float64 (decay), strict [n] int64
    (most_recent, anchor), key_tab / query_tab / aux_tab [n] int64 (row of ``tables`` or -1;
    aux: segment_start and anchor), weights [n] float64,
    tables [n_tables, vocab] uint8, boundary_tab / new_word_tab: table rows that mark a
    sentence boundary (after the token) and a new word (at the token), or -1 when unused.
    """

    kinds: np.ndarray
    ks: np.ndarray
    rates: np.ndarray
    strict: np.ndarray
    key_tab: np.ndarray
    query_tab: np.ndarray
    weights: np.ndarray
    tables: np.ndarray
    boundary_tab: int = -1
    new_word_tab: int = -1
    aux_tab: np.ndarray | None = None  # [n] int64; None: no term reads an aux table

    def __post_init__(self) -> None:
        if self.aux_tab is None:
            object.__setattr__(self, "aux_tab", np.full(self.kinds.shape[0], -1, dtype=np.int64))

    @property
    def n_terms(self) -> int:
        return int(self.kinds.shape[0])

    @property
    def vocab_size(self) -> int:
        return int(self.tables.shape[1])

    @classmethod
    def build(cls, terms: list[dict], tables: np.ndarray, boundary_tab: int = -1,
              new_word_tab: int = -1) -> HeadSpec:
        """From dicts ``{kind, k, rate, strict, key_tab, query_tab, aux_tab, weight}`` (kind: a name)."""
        def col(name: str, dtype: type, default: object) -> np.ndarray:
            return np.asarray([t.get(name, default) for t in terms], dtype=dtype).reshape(-1)

        tabs = np.ascontiguousarray(np.asarray(tables, dtype=np.uint8))
        if tabs.ndim != 2:
            raise ValueError(f"tables must be [n_tables, vocab], got shape {tabs.shape}")
        return cls(
            kinds=np.asarray([KIND_CODES[t["kind"]] for t in terms], dtype=np.int64).reshape(-1),
            ks=col("k", np.int64, 0), rates=col("rate", np.float64, 0.0),
            strict=col("strict", np.int64, 0), key_tab=col("key_tab", np.int64, -1),
            query_tab=col("query_tab", np.int64, -1), weights=col("weight", np.float64, 1.0),
            tables=tabs, boundary_tab=int(boundary_tab), new_word_tab=int(new_word_tab),
            aux_tab=col("aux_tab", np.int64, -1),
        )


def check_inputs(spec: HeadSpec, ids_shape: tuple[int, ...], v_shape: tuple[int, ...],
                 ids_min: int, ids_max: int, start: np.ndarray | None, n_q: int | None) -> int:
    """Shape and range checks shared by the launchers; returns the query window ``n_q``."""
    if len(ids_shape) != 2 or len(v_shape) != 3 or tuple(v_shape[:2]) != tuple(ids_shape):
        raise ValueError(f"expected ids [B, T] and v [B, T, D], got {tuple(ids_shape)} and {tuple(v_shape)}")
    T = int(ids_shape[1])
    if T and spec.tables.shape[0] and (ids_min < 0 or ids_max >= spec.vocab_size):
        raise ValueError(f"token ids must be in [0, {spec.vocab_size}) (the vocabulary the head was "
                         f"compiled for), got [{ids_min}, {ids_max}]")
    if start is not None:
        if start.shape != (ids_shape[0],):
            raise ValueError(f"start must be [B] = [{ids_shape[0]}], got {tuple(start.shape)}")
        if T and (start.min() < 0 or start.max() >= T):
            raise ValueError(f"start must be in [0, T) = [0, {T}), got {start.tolist()}")
    missing = [i for i in range(spec.n_terms) if int(spec.kinds[i]) in AUX_KIND_CODES and spec.aux_tab[i] < 0]
    if missing:
        raise ValueError(f"terms {missing} (segment_start / anchor) need an aux table row")
    nq = T if n_q is None else int(n_q)
    if not 0 <= nq <= T:
        raise ValueError(f"n_q must be in [0, T] = [0, {T}], got {n_q}")
    return nq
