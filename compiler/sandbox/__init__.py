"""Run untrusted programs (from a language model, a program file, a plan) in a locked-down process.

Every program is first checked here, from outside, before any of it runs
(``compiler.check.check_source``: an AST allow-list; all reasons at once). What passes runs
in a worker process (``sandbox.child``) of its own — started for that program, killed after
it — that has locked itself down with OS layers (``sandbox.lockdown``: rlimits, no new privileges,
own network namespace, empty read-only root, uid ``nobody``, a seccomp filter that also
refuses signalling other processes; it dies with its host) and Python layers (safe
builtins, import allow-list, audit hook).

- ``run_programs(sources, texts, vocabulary=...)``: each program's ``[T, T]`` scores, or why
  not. A program that compiles to selectors is compiled in the worker by the function
  ``compile`` uses, against the model's whole vocabulary (``Vocabulary``: the pieces and
  fingerprint ``compile`` uses), and scored *here* from the texts' token ids by the kernels'
  reference — the same tables and terms ``compile`` builds, so what explain scores is what a
  plan runs (a predicate that keeps state answers the same over the same vocabulary in a fresh
  process; over another set of pieces it could answer otherwise). A free-form one is run on
  prefixes sent one at a time (row q from tokens <= q; the worker never holds a later token).
- ``compile_in_sandbox(source, pieces, fingerprint)``: the program traced, validated and
  lowered in the worker; the host gets the head as data and validates it.

A request that runs past its time limit — also in C code, where no Python-level alarm can
fire — is answered by killing the worker from here (``SIGKILL``). Replies are read as hostile
bytes (``sandbox.frames``): a malformed one costs its program, never the host.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch

from headcode.compiler.check import check_source
from headcode.compiler.compile import uncompiled
from headcode.compiler.head import CompiledHead, check_head_data
from headcode.compiler.program import Program
from headcode.compiler.sandbox import worker as W
from headcode.compiler.sandbox.worker import (  # noqa: F401 - re-exported: the sandbox's public face
    Limits,
    Worker,
    WorkerGone,
    python_layers_off,
)
from headcode.compiler.tables import builtin_tables
from headcode.compiler.tokens import Tokens
from headcode.compiler.validate import CompileError


@dataclass(frozen=True, eq=False)
class SandboxResult:
    ok: bool
    scores: tuple[np.ndarray, ...] = ()
    reason: str = ""
    mode: str = ""              # "traced" (from the IR) or "prefix" (free-form, row q on tokens <= q)


@dataclass(frozen=True, eq=False)
class Vocabulary:
    """What programs are compiled against: ``pieces[id]`` and the vocabulary's fingerprint.
    ``model``: the model's own (``of_tokenizer``: ``vocabulary_pieces`` and
    ``tokenizer_fingerprint``, what ``headcode compile`` uses), indexed by the texts' token
    ids; otherwise the distinct pieces of some texts (``of_texts``: texts without a model, as
    in tests), where a token's id is its piece's place."""

    pieces: tuple[str, ...]
    fingerprint: str
    model: bool = True

    @classmethod
    def of_tokenizer(cls, tokenizer: Any) -> Vocabulary:
        from headcode.compiler.tokens import tokenizer_fingerprint, vocabulary_pieces

        return cls(tuple(vocabulary_pieces(tokenizer)), tokenizer_fingerprint(tokenizer))

    @classmethod
    def of_texts(cls, texts: Sequence[Tokens]) -> Vocabulary:
        pieces = tuple(sorted({p for t in texts for p in t.pieces}))
        return cls(pieces, "texts:" + hashlib.sha256("\0".join(pieces).encode()).hexdigest()[:16], model=False)

    @cached_property
    def _index(self) -> dict[str, int]:
        return {p: i for i, p in enumerate(self.pieces)}

    def ids(self, t: Tokens) -> np.ndarray:
        """``[T] int64``: the ids of ``t``'s tokens in this vocabulary; ``ValueError`` if ``t`` was
        not tokenised with it (the model's ids must name the pieces the text holds)."""
        if not self.model:
            try:
                return np.array([self._index[p] for p in t.pieces], dtype=np.int64)
            except KeyError as e:
                raise ValueError(f"piece {e.args[0]!r} is not in the vocabulary") from None
        ids = np.asarray(t.ids, dtype=np.int64)
        if len(ids) and (ids.min() < 0 or ids.max() >= len(self.pieces)):
            raise ValueError(f"token id {int(ids.max())} is outside the vocabulary ({len(self.pieces)} pieces)")
        bad = next((i for i, p in zip(ids.tolist(), t.pieces) if self.pieces[i] != p), None)
        if bad is not None:
            raise ValueError(f"token id {bad} is {self.pieces[bad]!r} in the vocabulary but not in the text: "
                             "the text was tokenised by another tokenizer")
        return ids

    @cached_property
    def builtin_tables(self) -> dict[str, np.ndarray]:
        """The built-in predicates' tables, computed here once (sent with every program)."""
        return builtin_tables(self.pieces, self.fingerprint)


def _check(source: str) -> list[str]:
    return check_source(source) if W._PYTHON_LAYERS[0] else []


def _validate(status: dict, arrays: dict[str, np.ndarray], texts: Sequence[Tokens], mode: str) -> SandboxResult:
    if not status.get("ok"):
        return SandboxResult(False, (), str(status.get("reason", "failed"))[:600])
    mats = []
    for i, t in enumerate(texts):
        m, T = arrays.get(f"s{i}"), len(t)
        if m is None or m.shape != (T, T) or m.dtype.kind != "f":
            return SandboxResult(False, (), f"returned shape {getattr(m, 'shape', None)}, expected ({T}, {T})")
        if not np.all(np.isfinite(m)) or np.any(m < 0):
            return SandboxResult(False, (), "returned NaN, infinite or negative scores")
        if np.any(np.triu(m, 1)):
            return SandboxResult(False, (), "scores above the diagonal (the future): refused")
        mats.append(m)
    return SandboxResult(True, tuple(mats), "", mode)


def _head_scores(status: dict, arrays: dict[str, np.ndarray], n_pieces: int,
                 ids: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The worker's head (compiled against the vocabulary) scored here from each text's token
    ids ``[T]``: ``[T, T]`` raw scores per text. ``ValueError`` if the head is malformed."""
    from headcode.kernels.program_head.naive import program_scores_naive

    tables = arrays.get("tables")
    bad = check_head_data(status.get("head"), tables, n_pieces)
    if bad:
        raise ValueError("the sandbox returned a malformed head: " + "; ".join(bad[:3]))
    spec = CompiledHead.from_meta_json(dict(status["head"], source=""), tables).spec
    # the reference reads ids only through ``tables[:, id]`` and id equality, so the head restricted
    # to the ids the texts hold scores them the same (a [n, 49k] table costs ~14 ms per call)
    used = np.unique(np.concatenate([np.zeros(0, np.int64), *ids]))
    if not used.size:
        return [np.zeros((0, 0)) for _ in ids]
    spec = type(spec)(spec.terms, np.ascontiguousarray(spec.tables[:, used]))
    return [program_scores_naive(spec, torch.from_numpy(np.searchsorted(used, i))[None])[0].numpy()
            if len(i) else np.zeros((0, 0)) for i in ids]


def _prefix_scores(w: Worker, source: str, texts: Sequence[Tokens], deadline: float) -> list[np.ndarray]:
    """A free-form program's rows, one prefix per request: row q sees tokens <= q only."""
    out = []
    for t in texts:
        m = np.zeros((len(t), len(t)))
        for q in range(len(t)):
            status, arrays = w.request({"op": "row", "source": source, "prefix": t.prefix(q + 1)},
                                       max(0.05, deadline - time.monotonic()))
            if not status.get("ok"):
                raise _Failed(str(status.get("reason", "failed")))
            row = arrays.get("row")
            if row is None or row.shape != (q + 1,) or row.dtype.kind != "f":
                raise _Failed(f"returned a row of shape {getattr(row, 'shape', None)} on a prefix of {q + 1} tokens")
            m[q, :q + 1] = row
        out.append(m)
    return out


class _Failed(Exception):
    """The program failed in its worker (the message is the reason)."""


def _run_one(source: str, texts: list[Tokens], ids: list[np.ndarray], vocab: Vocabulary,
             limits: Limits) -> SandboxResult:
    w = W._POOL.acquire(limits)
    deadline = time.monotonic() + limits.time_s
    try:
        status, arrays = w.request({"op": "score", "source": source, "pieces": vocab.pieces,
                                    "fingerprint": vocab.fingerprint, "tables": vocab.builtin_tables},
                                   limits.time_s)
        if not status.get("ok"):
            return SandboxResult(False, (), str(status.get("reason", "failed"))[:600])
        if status.get("traced"):
            mats = _head_scores(status, arrays, len(vocab.pieces), ids)
            return _validate({"ok": True}, {f"s{i}": m for i, m in enumerate(mats)}, texts, "traced")
        mats = _prefix_scores(w, source, texts, deadline)
        return _validate({"ok": True}, {f"s{i}": m for i, m in enumerate(mats)}, texts, "prefix")
    except WorkerGone as e:
        return SandboxResult(False, (), str(e).replace("time limit exceeded",
                                                       f"time limit exceeded ({limits.time_s:g} s)"))
    except (_Failed, ValueError) as e:
        return SandboxResult(False, (), str(e)[:600])
    finally:
        W._POOL.release(w)


def run_programs(sources: Sequence[str], texts: Sequence[Tokens], limits: Limits | None = None,
                 workers: int = 1, chunk: int = 4, vocabulary: Vocabulary | None = None) -> list[SandboxResult]:
    """Run each program source on every text in the sandbox; one result per source, in order.
    Each program runs in a fresh worker process; ``workers`` run at once. ``vocabulary``: what
    traced programs are compiled against — the model's (``Vocabulary.of_tokenizer``) whenever
    the texts have one, as explain does; default: the texts' distinct pieces (texts without a
    model). ``ValueError`` if a text is not in the vocabulary. ``chunk`` is kept for callers."""
    limits = limits or Limits()
    sources, texts = list(sources), list(texts)
    vocab = vocabulary or Vocabulary.of_texts(texts)
    ids = [vocab.ids(t) for t in texts]
    results: list[SandboxResult | None] = [None] * len(sources)
    todo = []
    for i, src in enumerate(sources):
        reasons = _check(src)
        if reasons:
            results[i] = SandboxResult(False, (), "refused: " + "; ".join(reasons))
        elif not texts:
            results[i] = SandboxResult(True, (), "")
        else:
            todo.append(i)
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(todo) or 1))) as pool:
        for i, r in zip(todo, pool.map(lambda i: _run_one(sources[i], texts, ids, vocab, limits), todo)):
            results[i] = r
    return [r for r in results if r is not None]


def clear_table_caches() -> None:
    """Empty this process's vocabulary-table cache (workers are fresh per program: theirs start empty)."""
    from headcode.compiler.tables import clear_cache

    clear_cache()


def compile_in_sandbox(source: str, pieces: Sequence[str], fingerprint: str, name: str | None = None,
                       model_id: str = "", limits: Limits | None = None) -> CompiledHead:
    """Trace, validate and lower ``source`` in the sandbox; the head built here from the data it
    returns (validated), or an uncompiled head whose reasons say why (refused, untraceable, ...)."""
    limits = limits or Limits()
    label = name or "attend"
    reasons = _check(source)
    if reasons:
        return uncompiled(label, source, ["refused: " + r for r in reasons], len(pieces), fingerprint, model_id)
    pieces = list(pieces)
    w = W._POOL.acquire(limits)
    try:
        status, arrays = w.request({"op": "compile", "source": source, "name": name, "pieces": pieces,
                                    "fingerprint": fingerprint, "model_id": model_id,
                                    "tables": builtin_tables(pieces, fingerprint)}, limits.time_s)
    except WorkerGone as e:
        return uncompiled(label, source, [f"sandbox: {e}"], len(pieces), fingerprint, model_id)
    finally:
        W._POOL.release(w)
    if not status.get("ok"):
        return uncompiled(label, source, [str(status.get("reason", "failed"))[:600]], len(pieces),
                          fingerprint, model_id)
    d, tables = status.get("head"), arrays.get("tables")
    bad = check_head_data(d, tables, len(pieces))
    if bad:
        return uncompiled(label, source, ["sandbox returned a malformed head: " + "; ".join(bad)],
                          len(pieces), fingerprint, model_id)
    d = dict(d, name=name or str(d["name"])[:100], source=source, fingerprint=fingerprint, model_id=model_id)
    return CompiledHead.from_meta_json(d, tables)


def compile_source(source: str, pieces: Sequence[str], fingerprint: str, name: str | None = None,
                   model_id: str = "", strict: bool = False, time_limit_s: float | None = None) -> CompiledHead:
    """Compile ``source`` against a vocabulary (``pieces[id]`` = the decoded piece of token
    ``id``; ``fingerprint`` names that vocabulary) in the sandbox (``time_limit_s``: for the
    trace and the tables; default ``sandbox.Limits``). Returns a compiled head, or an
    uncompiled one with reasons (``strict``: raise ``CompileError`` instead)."""
    limits = Limits(time_s=time_limit_s) if time_limit_s else None
    head = compile_in_sandbox(source, pieces, fingerprint, name=name, model_id=model_id, limits=limits)
    if strict and not head.compiled:
        raise CompileError(head.reasons, head.name)
    return head


def compile_program(program: Program, pieces: Sequence[str], fingerprint: str, model_id: str = "",
                    strict: bool = False) -> CompiledHead:
    """``compile_source`` of the program's source (the callable built here is not used)."""
    return compile_source(program.source, pieces, fingerprint, program.name, model_id, strict)
