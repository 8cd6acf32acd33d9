"""The kernel-level description of a head program: plain arrays, no Python objects.

A head is ``sum_i w_i * S_i`` over terms; the output row is
``out[q] = sum_i w_i g_i[q] num_i[q] / sum_i w_i g_i[q] has_i[q]`` where ``num_i[q]`` is the
row-normalised term ``S_i[q, :] @ V``, ``has_i[q]`` says whether that row is non-empty and
``g_i[q]`` is the query gate; a zero denominator gives ``V[start]`` (the framework sends an
empty row to the first token). Positions before ``start[b]`` (left padding) are not keys, and
their own output rows are zero.

Every selector of the program language (``compiler/selectors/``) lowers onto four primitives;
the kernels implement only these, so a new selector that lowers onto them runs everywhere.
Over the real positions ``p in [s, T)`` of a row (``s = start[b]``):

- an **event** at ``p``: ``(ev_start and p == s) or ev_tab == EVERY or
  (ev_tab >= 0 and p - ev_lag >= s and tables[ev_tab, ids[p - ev_lag]])`` — a class read at the
  token itself (lag 0) or at the token before it (lag 1: "the token after a boundary");
- ``latest(q)``: the largest event position ``p <= q`` (``strict``: ``p < q``), or none;
- ``POINTER``: one key, ``latest(q) + shift`` when it lies in ``[s, q]``;
- ``SCAN``: keys ``k`` in ``[latest(q) or s, q]`` weighted ``rate ** (q - k)`` (an event starts
  a new segment; ``rate == 1``: uniform);
- ``SAME_TOKEN``: uniform over keys ``k <= q`` with ``ids[k] == ids[q]``;
- ``INDUCTION``: the key right after the latest ``p < q`` with ``ids[p] == ids[q]``.

Then ``key_tab`` keeps only keys whose token is in that class (a pointer whose key is not gives an
empty row) and ``query_tab`` empties the rows of queries not in it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

POINTER, SCAN, SAME_TOKEN, INDUCTION = range(4)
KIND_CODES: dict[str, int] = {"pointer": POINTER, "scan": SCAN, "same_token": SAME_TOKEN,
                              "induction": INDUCTION}
NO_TABLE, EVERY = -1, -2  # ev_tab: no class event / every position is an event
MAX_SHIFT = 64  # |shift| bound: the decoding state of a pointer keeps |shift| + 1 values at most


@dataclass(frozen=True, eq=False)
class HeadSpec:
    """Arrays of one head program, ``n`` terms and ``n_tables`` vocabulary tables.

    kinds [n] int64 (POINTER, SCAN, SAME_TOKEN, INDUCTION); ev_tab [n] int64 (table row, NO_TABLE or
    EVERY), ev_lag [n] int64 (0 or 1), ev_start [n] int64 (0/1), strict [n] int64 (0/1),
    shift [n] int64 (pointer), rates [n] float64 (scan, in (0, 1]), key_tab / query_tab [n] int64
    (row of ``tables`` or -1), weights [n] float64, tables [n_tables, vocab] uint8.
    """

    kinds: np.ndarray
    ev_tab: np.ndarray
    ev_lag: np.ndarray
    ev_start: np.ndarray
    strict: np.ndarray
    shift: np.ndarray
    rates: np.ndarray
    key_tab: np.ndarray
    query_tab: np.ndarray
    weights: np.ndarray
    tables: np.ndarray

    def __post_init__(self) -> None:
        problems = spec_problems(self)
        if problems:
            raise ValueError("invalid head spec: " + "; ".join(problems))

    @property
    def n_terms(self) -> int:
        return int(self.kinds.shape[0])

    @property
    def vocab_size(self) -> int:
        return int(self.tables.shape[1])

    @classmethod
    def build(cls, terms: list[dict], tables: np.ndarray) -> HeadSpec:
        """From dicts ``{kind, ev_tab, ev_lag, ev_start, strict, shift, rate, key_tab, query_tab,
        weight}`` (kind: a primitive name; the others default to 'none')."""
        def col(name: str, dtype: type, default: object) -> np.ndarray:
            return np.asarray([t.get(name, default) for t in terms], dtype=dtype).reshape(-1)

        tabs = np.ascontiguousarray(np.asarray(tables, dtype=np.uint8))
        if tabs.ndim != 2:
            raise ValueError(f"tables must be [n_tables, vocab], got shape {tabs.shape}")
        unknown = sorted({str(t["kind"]) for t in terms} - set(KIND_CODES))
        if unknown:
            raise ValueError(f"unknown primitive kinds {unknown}; known: {sorted(KIND_CODES)}")
        return cls(
            kinds=np.asarray([KIND_CODES[t["kind"]] for t in terms], dtype=np.int64).reshape(-1),
            ev_tab=col("ev_tab", np.int64, NO_TABLE), ev_lag=col("ev_lag", np.int64, 0),
            ev_start=col("ev_start", np.int64, 0), strict=col("strict", np.int64, 0),
            shift=col("shift", np.int64, 0), rates=col("rate", np.float64, 1.0),
            key_tab=col("key_tab", np.int64, -1), query_tab=col("query_tab", np.int64, -1),
            weights=col("weight", np.float64, 1.0), tables=tabs,
        )


def spec_problems(spec: HeadSpec) -> list[str]:
    """Every reason the arrays are not a valid head (ranges, table rows), in one list."""
    n, nt = int(spec.kinds.shape[0]), int(spec.tables.shape[0])
    out = []
    for name in ("ev_tab", "ev_lag", "ev_start", "strict", "shift", "rates", "key_tab", "query_tab", "weights"):
        if getattr(spec, name).shape != (n,):
            out.append(f"{name} must have shape [{n}], got {getattr(spec, name).shape}")
    if out:
        return out
    for i in range(n):
        kind = int(spec.kinds[i])
        if kind not in KIND_CODES.values():
            out.append(f"term {i}: unknown kind code {kind}")
        if not (spec.ev_tab[i] in (NO_TABLE, EVERY) or 0 <= spec.ev_tab[i] < nt):
            out.append(f"term {i}: ev_tab {spec.ev_tab[i]} is not a table row (0..{nt - 1}), -1 or -2")
        for name in ("key_tab", "query_tab"):
            if not -1 <= getattr(spec, name)[i] < nt:
                out.append(f"term {i}: {name} {getattr(spec, name)[i]} is not a table row (0..{nt - 1}) or -1")
        if spec.ev_lag[i] not in (0, 1) or spec.ev_start[i] not in (0, 1) or spec.strict[i] not in (0, 1):
            out.append(f"term {i}: ev_lag, ev_start and strict must be 0 or 1")
        if abs(int(spec.shift[i])) > MAX_SHIFT:
            out.append(f"term {i}: |shift| {spec.shift[i]} is over {MAX_SHIFT}")
        if kind != POINTER and spec.strict[i] or kind != SCAN and spec.rates[i] != 1.0:
            out.append(f"term {i}: strict is for pointers and rate for scans only")
        if not (0.0 < spec.rates[i] <= 1.0):
            out.append(f"term {i}: rate {spec.rates[i]} must be in (0, 1]")
        if not (np.isfinite(spec.weights[i]) and spec.weights[i] >= 0):
            out.append(f"term {i}: weight {spec.weights[i]} must be finite and non-negative")
    return out


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
    nq = T if n_q is None else int(n_q)
    if not 0 <= nq <= T:
        raise ValueError(f"n_q must be in [0, T] = [0, {T}], got {n_q}")
    return nq
