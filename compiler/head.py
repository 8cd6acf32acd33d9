"""The compiler's products: ``Term``, ``CompiledHead`` and ``SurrogatePlan`` (frozen), and their
JSON form (used by ``export``). Plan keys are head names as text (``"L3.H7"``): the compiler
does not import the runtime; the runtime converts to ``HeadRef``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np

from headcode.compiler.ir import describe_selector
from headcode.compiler.selectors import REGISTRY, get
from headcode.kernels.program_head.spec import PRIMITIVES, HeadSpec, KernelTerm


@dataclass(frozen=True)
class Term:
    """One lowered selector term: ``weight * kind(params)`` with key/query predicates by name and
    by row of the head's table stack (-1: none)."""

    kind: str
    weight: float
    key: str | None = None
    key_table: int = -1
    query: str | None = None
    query_table: int = -1
    aux: str | None = None   # the class that places the key or starts a segment (selectors/)
    aux_table: int = -1
    k: int = 0               # the selector's parameters (its ``params``)
    rate: float = 0.0
    strict: bool = False

    def describe(self) -> str:
        return f"{self.weight:g}*" + describe_selector(self.kind, self.k, self.rate, self.strict, self.key,
                                                       self.query, self.aux)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def primitive(self) -> KernelTerm:
        """The kernel term this runs as: its selector's typed primitive (``lower``), with its key
        restriction, query gate and weight."""
        prim = get(self.kind).lower(self)
        if not isinstance(prim, tuple(PRIMITIVES.values())):
            raise TypeError(f"selector {self.kind} lowers to {type(prim).__name__}, not a kernel primitive")
        return KernelTerm(prim, weight=self.weight, key_tab=self.key_table, query_tab=self.query_table)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Term:
        return cls(kind=str(d["kind"]), weight=float(d["weight"]), k=int(d.get("k", 0)),
                   rate=float(d.get("rate", 0.0)), strict=bool(d.get("strict", False)),
                   key=d.get("key"), query=d.get("query"), key_table=int(d.get("key_table", -1)),
                   query_table=int(d.get("query_table", -1)), aux=d.get("aux"),
                   aux_table=int(d.get("aux_table", -1)))


@dataclass(frozen=True)
class Surrogate:
    """What runs in the head's place when it differs from the explanation: the same terms with
    ``weights`` (one per term) fitted for the model, and a ``constant`` output ``[D]`` added after
    ``A @ V``; ``fitted`` says how (method, data, steps, seed, the select-split KL)."""

    weights: tuple[float, ...]
    constant: tuple[float, ...] = ()
    fitted: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"weights": list(self.weights), "constant": list(self.constant), "fitted": self.fitted}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Surrogate:
        return cls(tuple(float(w) for w in d["weights"]), tuple(float(c) for c in d.get("constant", ())),
                   str(d.get("fitted", "")))


@dataclass(frozen=True, eq=False)
class CompiledHead:
    """A head's program lowered for the kernels.

    ``tables [n_tables, vocab] uint8`` (row ``i`` is predicate ``table_names[i]`` over the
    vocabulary). ``compiled=False``: ``reasons`` say why; ``terms`` is
    empty and only ``source`` is usable (through the reference path).

    Two things per head, kept apart: the *explanation* (``terms`` with the weights fitted to the
    head's own pattern and output: what a reader reads) and, once calibrated, the *surrogate*
    (``surrogate``: the same terms with weights fitted for the model, plus a constant output:
    what runs). ``run_spec`` and ``constant`` are what the runtime uses.
    """

    name: str
    source: str
    terms: tuple[Term, ...]
    table_names: tuple[str, ...]
    tables: np.ndarray = field(repr=False)
    fingerprint: str
    compiled: bool = True
    reasons: tuple[str, ...] = ()
    model_id: str = ""
    surrogate: Surrogate | None = None

    @property
    def vocab_size(self) -> int:
        return int(self.tables.shape[1])

    def describe(self) -> str:
        if not self.compiled:
            return f"{self.name}: uncompiled ({'; '.join(self.reasons)})"
        return f"{self.name}: " + (" + ".join(t.describe() for t in self.terms) or "(no terms: first token)")

    def describe_surrogate(self) -> str:
        """What runs, in the explanation's terms: the surrogate's weights and its constant output."""
        if self.surrogate is None:
            return "as explained (not calibrated)"
        terms = " + ".join(replace(t, weight=round(w, 3)).describe() for t, w in zip(self.terms, self.surrogate.weights))
        norm = math.sqrt(sum(c * c for c in self.constant))
        return f"{terms or '(no terms)'} plus a constant output (norm {norm:.3g})"

    @cached_property
    def spec(self) -> HeadSpec:
        """The kernel-level arrays of the explanation (built once per head)."""
        return HeadSpec.build([t.primitive() for t in self.terms], self.tables)

    @cached_property
    def run_spec(self) -> HeadSpec:
        """The kernel-level arrays of what runs: the surrogate's weights when calibrated."""
        if self.surrogate is None:
            return self.spec
        terms = [replace(t.primitive(), weight=w) for t, w in zip(self.terms, self.surrogate.weights)]
        return HeadSpec.build(terms, self.tables)

    @property
    def constant(self) -> tuple[float, ...]:
        """The output constant added after ``A @ V`` (empty: none)."""
        return self.surrogate.constant if self.surrogate is not None else ()

    def calibrated(self, weights: Any, constant: Any, fitted: str) -> CompiledHead:
        """This head with a surrogate (the explanation unchanged)."""
        return replace(self, surrogate=Surrogate(tuple(float(w) for w in weights),
                                                 tuple(float(c) for c in constant), fitted))

    def meta_json(self) -> dict[str, Any]:
        """Everything but the tables, as JSON-ready values."""
        return dict(name=self.name, source=self.source, terms=[t.to_json() for t in self.terms],
                    table_names=list(self.table_names), fingerprint=self.fingerprint,
                    compiled=self.compiled, reasons=list(self.reasons), model_id=self.model_id,
                    vocab_size=self.vocab_size) | (
                        {"surrogate": self.surrogate.to_json()} if self.surrogate is not None else {})

    @classmethod
    def from_meta_json(cls, d: dict[str, Any], tables: np.ndarray) -> CompiledHead:
        return cls(name=str(d["name"]), source=str(d["source"]),
                   terms=tuple(Term.from_json(t) for t in d["terms"]),
                   table_names=tuple(str(n) for n in d["table_names"]), tables=tables,
                   fingerprint=str(d["fingerprint"]), compiled=bool(d["compiled"]),
                   reasons=tuple(str(r) for r in d["reasons"]), model_id=str(d.get("model_id", "")),
                   surrogate=Surrogate.from_json(d["surrogate"]) if d.get("surrogate") is not None else None)


@dataclass(frozen=True, eq=False)
class SurrogatePlan:
    """Compiled heads of one model: ``heads`` maps ``"L3.H7"`` to its ``CompiledHead``."""

    model_id: str
    fingerprint: str
    heads: dict[str, CompiledHead]

    def compiled_heads(self) -> dict[str, CompiledHead]:
        return {k: h for k, h in self.heads.items() if h.compiled}


def check_head_data(d: Any, tables: Any, vocab_size: int | None = None) -> list[str]:
    """Every reason the JSON form ``d`` of a head and its ``tables`` are not a well-formed
    ``CompiledHead`` (the data a sandboxed compile or a plan file gives: never trusted).
    Term kinds must be known, weights finite and non-negative, table rows in range, tables
    ``[len(table_names), vocab] uint8`` of 0/1."""
    if not isinstance(d, dict):
        return [f"head data is a {type(d).__name__}, not an object"]
    out = []
    if not isinstance(tables, np.ndarray) or tables.dtype != np.uint8 or tables.ndim != 2:
        return ["tables must be a 2-d uint8 array"]
    names = d.get("table_names")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return ["table_names must be a list of strings"]
    if tables.shape[0] != len(names):
        out.append(f"{tables.shape[0]} tables for {len(names)} table names")
    if vocab_size is not None and tables.shape[1] != vocab_size:
        out.append(f"tables cover {tables.shape[1]} tokens, the vocabulary has {vocab_size}")
    if tables.size and int(tables.max()) > 1:
        out.append("tables hold values other than 0 and 1")
    for key in ("name", "source", "fingerprint"):
        if not isinstance(d.get(key), str):
            out.append(f"{key} must be a string")
    if not isinstance(d.get("compiled"), bool) or not isinstance(d.get("reasons"), list):
        out.append("compiled must be true/false and reasons a list")
    terms = d.get("terms")
    if not isinstance(terms, list) or not all(isinstance(t, dict) for t in terms):
        return out + ["terms must be a list of objects"]
    if d.get("compiled") is False and terms:
        out.append("an uncompiled head has terms")
    if d.get("surrogate") is not None:
        out += [f"surrogate: {r}" for r in _surrogate_problems(d["surrogate"], len(terms))]
    out += [f"term {i}: {r}" for i, t in enumerate(terms) for r in _term_problems(t, tables, len(names))]
    return out


def _numbers(x: Any, most: int) -> bool:
    return (isinstance(x, list) and len(x) <= most and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                            and math.isfinite(v) for v in x))


def _surrogate_problems(s: Any, n_terms: int) -> list[str]:
    if not isinstance(s, dict):
        return ["not an object"]
    out = []
    w = s.get("weights")
    if not _numbers(w, n_terms) or len(w) != n_terms or any(v < 0 for v in w):
        out.append(f"weights must be {n_terms} finite non-negative numbers")
    if not _numbers(s.get("constant", []), 1 << 16):
        out.append("constant must be a list of finite numbers")
    if not isinstance(s.get("fitted", ""), str):
        out.append("fitted must be a string")
    return out


def _term_problems(t: dict, tables: np.ndarray, n: int) -> list[str]:
    """Every reason the JSON term ``t`` is not a valid term of its selector (``selectors/``) or does
    not lower to valid kernel arrays."""
    try:
        term = Term.from_json(t)
    except (KeyError, TypeError, ValueError) as e:
        return [f"malformed ({type(e).__name__}: {e})"]
    if term.kind not in REGISTRY:
        return [f"unknown selector kind {term.kind!r}"]
    sel = get(term.kind)
    out = sel.all_problems(term)
    if (sel.aux is not None or sel.needs_aux) and term.aux_table < 0:
        out.append(f"{term.kind} has no table row for its class")
    if sel.needs_key and term.key_table < 0:
        out.append(f"{term.kind} has no table row for its key class")
    if not (math.isfinite(term.weight) and term.weight >= 0):
        out.append(f"weight {term.weight} is not finite and non-negative")
    for tab in (term.key_table, term.query_table, term.aux_table):
        if not -1 <= tab < n:
            out.append(f"names table row {tab}, outside 0..{n - 1}")
    if not out:
        try:
            HeadSpec.build([term.primitive()], tables)
        except (KeyError, TypeError, ValueError) as e:
            out.append(f"does not lower to a kernel term ({e})")
    return out
