"""The kernel-level description of a head program: typed primitives, the one column table they
pack into, and the packed arrays every kernel reads.

A head is ``sum_i w_i * S_i`` over terms; the output row is
``out[q] = sum_i w_i g_i[q] num_i[q] / sum_i w_i g_i[q] has_i[q]`` where ``num_i[q]`` is the
row-normalised term ``S_i[q, :] @ V``, ``has_i[q]`` says whether that row is non-empty and
``g_i[q]`` is the query gate; a zero denominator gives ``V[start]`` (the framework sends an
empty row to the first token). Positions before ``start[b]`` (left padding) are not keys, and
their own output rows are zero.

Every selector of the program language (``compiler/selectors/``) lowers onto four primitives
(the frozen dataclasses below); the kernels implement only these, so a new selector that lowers
onto them runs everywhere. Over the real positions ``p in [s, T)`` of a row (``s = start[b]``):

- an **event** at ``p``: ``(ev_start and p == s) or ev_tab == EVERY or
  (ev_tab >= 0 and p - ev_lag >= s and tables[ev_tab, ids[p - ev_lag]])`` — a class read at the
  token itself (lag 0) or at the token before it (lag 1: "the token after a boundary");
- ``latest(q)``: the largest event position ``p <= q`` (``strict``: ``p < q``), or none;
  ``earliest(q)``: the smallest such position;
- ``Pointer``: one key, ``latest(q) + shift`` (``earliest``: ``earliest(q) + shift``) when it
  lies in ``[s, q]``;
- ``Scan``: keys ``k`` in ``[latest(q) or s, q]`` weighted ``rate ** (q - k)`` (an event starts
  a new segment; ``rate == 1``: uniform);
- ``SameToken``: uniform over keys ``k <= q`` with ``ids[k] == ids[q]``;
- ``Induction``: the key right after the latest ``p < q`` with ``ids[p] == ids[q]``.

Then a ``KernelTerm``'s ``key_tab`` keeps only keys whose token is in that class (a pointer whose
key is not gives an empty row) and ``query_tab`` empties the rows of queries not in it.

**The column table** (``Schema``) is derived from these dataclasses: the integer columns are
``kind, key_tab, query_tab`` and then every int/bool field of the primitives (first seen, in the
order of ``PRIMITIVES``), the real columns ``weight`` and then every float field. The Numba
packing (``HeadSpec.ints`` / ``reals``), the decoding programs (``stream.LayerProgram``) and the
Triton constants all read column positions from ``SCHEMA``; a new field of a primitive is one
line here plus each kernel's arithmetic for it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from functools import cached_property
from typing import Any, ClassVar

import numpy as np

POINTER, SCAN, SAME_TOKEN, INDUCTION = range(4)
NO_TABLE, EVERY = -1, -2  # ev_tab: no class event / every position is an event
MAX_SHIFT = 64  # |shift| bound: the decoding state of a pointer keeps |shift| + 1 values at most


@dataclass(frozen=True)
class Pointer:
    """One key: ``latest(q) + shift`` (``earliest``: the first event so far, not the latest).
    ``ev_tab``: table row of the event class, ``NO_TABLE`` or ``EVERY``; ``ev_lag``: 0 (the token)
    or 1 (the token before); ``ev_start``: the first real token is an event; ``strict``: events
    before ``q`` only."""

    code: ClassVar[int] = POINTER
    ev_tab: int = NO_TABLE
    ev_lag: int = 0
    ev_start: bool = False
    strict: bool = False
    shift: int = 0
    earliest: bool = False


@dataclass(frozen=True)
class Scan:
    """Keys since the latest event (a new segment), weighted ``rate ** (q - k)``; events as in
    ``Pointer``."""

    code: ClassVar[int] = SCAN
    ev_tab: int = NO_TABLE
    ev_lag: int = 0
    ev_start: bool = False
    rate: float = 1.0


@dataclass(frozen=True)
class SameToken:
    """Uniform over the occurrences of the query's token so far, itself included."""

    code: ClassVar[int] = SAME_TOKEN


@dataclass(frozen=True)
class Induction:
    """The key after the latest earlier occurrence of the query's token."""

    code: ClassVar[int] = INDUCTION


Primitive = Pointer | Scan | SameToken | Induction
PRIMITIVES: dict[str, type] = {"pointer": Pointer, "scan": Scan, "same_token": SameToken, "induction": Induction}


@dataclass(frozen=True)
class KernelTerm:
    """One term of a head: a primitive, its key restriction and query gate (table rows, -1: none)
    and its weight."""

    prim: Primitive
    weight: float = 1.0
    key_tab: int = -1
    query_tab: int = -1

    @property
    def kind(self) -> int:
        return self.prim.code

    @classmethod
    def of(cls, kind: str, weight: float = 1.0, key_tab: int = -1, query_tab: int = -1,
           **prim: Any) -> KernelTerm:
        """``KernelTerm.of("pointer", ev_tab=2, shift=-1, weight=0.5)``: a primitive by name; a
        field the primitive does not have raises ``TypeError`` (never a silent default)."""
        if kind not in PRIMITIVES:
            raise ValueError(f"unknown primitive kind {kind!r}; known: {sorted(PRIMITIVES)}")
        return cls(PRIMITIVES[kind](**prim), weight=float(weight), key_tab=int(key_tab), query_tab=int(query_tab))


@dataclass(frozen=True)
class Column:
    """One packed column: ``real`` (float64, else int64), the value a term whose primitive lacks
    the field holds, and the primitive codes that have it (empty: every term)."""

    name: str
    real: bool
    default: float
    owners: tuple[int, ...] = ()


TERM_COLUMNS = (Column("kind", False, -1), Column("key_tab", False, -1), Column("query_tab", False, -1),
                Column("weight", True, 1.0))
TABLE_COLUMNS = ("ev_tab", "key_tab", "query_tab")  # columns that name a row of the tables
_TYPES = {"int": int, "bool": bool, "float": float}


class Schema:
    """The column table of a set of primitives (see the module docstring for the order)."""

    def __init__(self, primitives: Mapping[str, type]):
        self.primitives = dict(primitives)
        cols: dict[str, Column] = {c.name: c for c in TERM_COLUMNS}
        for cls in self.primitives.values():
            for f in fields(cls):
                real = (f.type if isinstance(f.type, type) else _TYPES[f.type]) is float
                if f.name in {c.name for c in TERM_COLUMNS}:
                    raise ValueError(f"{cls.__name__}.{f.name} shadows a term column")
                old = cols.get(f.name)
                if old is not None and (old.real != real or old.default != f.default):
                    raise ValueError(f"field {f.name} has another type or default in {cls.__name__}")
                cols[f.name] = Column(f.name, real, f.default, (*(old.owners if old else ()), cls.code))
        self.ints = tuple(c for c in cols.values() if not c.real)
        self.reals = tuple(c for c in cols.values() if c.real)
        self._index = {**{c.name: i for i, c in enumerate(self.ints)}, **{c.name: i for i, c in enumerate(self.reals)}}

    def index(self, *names: str) -> tuple[int, ...]:
        """The column positions of ``names`` (each within its int or real group)."""
        return tuple(self._index[n] for n in names)

    def is_real(self, name: str) -> bool:
        return any(c.name == name for c in self.reals)

    def pack(self, terms: Sequence[KernelTerm]) -> tuple[np.ndarray, np.ndarray]:
        """``terms`` -> ``ints [n, len(ints)] int64``, ``reals [n, len(reals)] float64``."""
        ints = np.empty((len(terms), len(self.ints)), np.int64)
        reals = np.empty((len(terms), len(self.reals)), np.float64)
        for i, t in enumerate(terms):
            vals = {f.name: getattr(t.prim, f.name) for f in fields(t.prim)}
            unknown = set(vals) - set(self._index)
            if unknown:
                raise ValueError(f"{type(t.prim).__name__} fields {sorted(unknown)} have no column in the schema")
            vals.update(kind=t.kind, key_tab=t.key_tab, query_tab=t.query_tab, weight=t.weight)
            ints[i] = [vals.get(c.name, c.default) for c in self.ints]  # the default: a field the primitive lacks
            reals[i] = [vals.get(c.name, c.default) for c in self.reals]
        return ints, reals


SCHEMA = Schema(PRIMITIVES)


def renumber_tables(t: KernelTerm, offset: int) -> KernelTerm:
    """``t`` with every table row it names moved by ``offset`` (tables stacked after others)."""
    prim = {f.name: getattr(t.prim, f.name) for f in fields(t.prim)}
    prim = {k: v + offset if k in TABLE_COLUMNS and v >= 0 else v for k, v in prim.items()}
    return KernelTerm(type(t.prim)(**prim), t.weight, t.key_tab + offset if t.key_tab >= 0 else -1,
                      t.query_tab + offset if t.query_tab >= 0 else -1)


def by_type(table: Mapping[type, Any], prim: Primitive) -> Any:
    """``table``'s entry for the primitive's type, looked up along its MRO (a subclass of a
    primitive, e.g. one with a new field, runs as its base until it has an entry of its own)."""
    for cls in type(prim).__mro__:
        if cls in table:
            return table[cls]
    raise ValueError(f"no entry for primitive {type(prim).__name__}")


@dataclass(frozen=True, eq=False)
class HeadSpec:
    """One head program: ``terms`` and ``tables [n_tables, vocab] uint8``; ``ints``/``reals`` are
    its terms packed by ``SCHEMA`` (``[n, n_int_columns]`` int64, ``[n, n_real_columns]`` float64)."""

    terms: tuple[KernelTerm, ...]
    tables: np.ndarray

    def __post_init__(self) -> None:
        problems = spec_problems(self)
        if problems:
            raise ValueError("invalid head spec: " + "; ".join(problems))

    @property
    def n_terms(self) -> int:
        return len(self.terms)

    @property
    def vocab_size(self) -> int:
        return int(self.tables.shape[1])

    @cached_property
    def packed(self) -> tuple[np.ndarray, np.ndarray]:
        return SCHEMA.pack(self.terms)

    @property
    def ints(self) -> np.ndarray:
        return self.packed[0]

    @property
    def reals(self) -> np.ndarray:
        return self.packed[1]

    def col(self, name: str) -> np.ndarray:
        """One column over the terms, e.g. ``spec.col("shift")`` ``[n]``."""
        (i,) = SCHEMA.index(name)
        return (self.reals if SCHEMA.is_real(name) else self.ints)[:, i]

    @property
    def weights(self) -> np.ndarray:
        """``[n]`` float64: ``col("weight")``."""
        return self.col("weight")

    @property
    def kinds(self) -> np.ndarray:
        """``[n]`` int64: ``col("kind")``."""
        return self.col("kind")

    @classmethod
    def build(cls, terms: Sequence[KernelTerm | Mapping[str, Any]], tables: np.ndarray) -> HeadSpec:
        """From ``KernelTerm``s (or mappings for ``KernelTerm.of``: ``{"kind": "scan", "rate": 0.5}``)."""
        tabs = np.ascontiguousarray(np.asarray(tables, dtype=np.uint8))
        if tabs.ndim != 2:
            raise ValueError(f"tables must be [n_tables, vocab], got shape {tabs.shape}")
        typed = tuple(t if isinstance(t, KernelTerm) else KernelTerm.of(**t) for t in terms)
        return cls(terms=typed, tables=tabs)


def _prim_problems(p: Primitive, nt: int) -> list[str]:
    out = []
    if isinstance(p, (Pointer, Scan)):
        if not (p.ev_tab in (NO_TABLE, EVERY) or 0 <= p.ev_tab < nt):
            out.append(f"ev_tab {p.ev_tab} is not a table row (0..{nt - 1}), -1 or -2")
        if p.ev_lag not in (0, 1):
            out.append(f"ev_lag must be 0 or 1, got {p.ev_lag}")
    if isinstance(p, Pointer) and abs(int(p.shift)) > MAX_SHIFT:
        out.append(f"|shift| {p.shift} is over {MAX_SHIFT}")
    if isinstance(p, Scan) and not (0.0 < p.rate <= 1.0):
        out.append(f"rate {p.rate} must be in (0, 1]")
    return out


def spec_problems(spec: HeadSpec) -> list[str]:
    """Every reason the terms are not a valid head (types, ranges, table rows), in one list."""
    nt, out = int(spec.tables.shape[0]), []
    for i, t in enumerate(spec.terms):
        if not isinstance(t, KernelTerm) or not isinstance(t.prim, tuple(SCHEMA.primitives.values())):
            out.append(f"term {i}: {t!r} is not a KernelTerm of a known primitive")
            continue
        out += [f"term {i}: {r}" for r in _prim_problems(t.prim, nt)]
        for name in ("key_tab", "query_tab"):
            if not -1 <= getattr(t, name) < nt:
                out.append(f"term {i}: {name} {getattr(t, name)} is not a table row (0..{nt - 1}) or -1")
        if not (np.isfinite(t.weight) and t.weight >= 0):
            out.append(f"term {i}: weight {t.weight} must be finite and non-negative")
    return out


def check_inputs(spec: HeadSpec, ids_shape: tuple[int, ...], v_shape: tuple[int, ...],
                 ids_range: tuple[int, int], start: np.ndarray | None, n_q: int | None) -> int:
    """Shape and range checks shared by the launchers (``ids_range``: min and max id); returns
    the query window ``n_q``."""
    if len(ids_shape) != 2 or len(v_shape) != 3 or tuple(v_shape[:2]) != tuple(ids_shape):
        raise ValueError(f"expected ids [B, T] and v [B, T, D], got {tuple(ids_shape)} and {tuple(v_shape)}")
    T = int(ids_shape[1])
    lo, hi = ids_range
    if T and spec.tables.shape[0] and (lo < 0 or hi >= spec.vocab_size):
        raise ValueError(f"token ids must be in [0, {spec.vocab_size}) (the vocabulary the head was "
                         f"compiled for), got [{lo}, {hi}]")
    if start is not None:
        if start.shape != (ids_shape[0],):
            raise ValueError(f"start must be [B] = [{ids_shape[0]}], got {tuple(start.shape)}")
        if T and (start.min() < 0 or start.max() >= T):
            raise ValueError(f"start must be in [0, T) = [0, {T}), got {start.tolist()}")
    nq = T if n_q is None else int(n_q)
    if not 0 <= nq <= T:
        raise ValueError(f"n_q must be in [0, T] = [0, {T}], got {n_q}")
    return nq
