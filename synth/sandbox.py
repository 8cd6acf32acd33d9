"""Run untrusted programs (from a language model, a program file, a plan) in a locked-down process.

Every program is first checked here, from outside, before any of it runs
(``compiler.check.check_source``: an AST allow-list; all reasons at once). What passes runs
in a worker process (``sandbox_child``) that has locked itself down with OS layers
(``sandbox_os``: rlimits, no new privileges, own network namespace, empty read-only root,
uid ``nobody``) and Python layers (safe builtins, import allow-list, audit hook).

- ``run_programs(sources, texts)``: each program's ``[T, T]`` scores, or why not. Traced
  programs are evaluated from their IR; free-form ones on prefixes only (causal).
- ``compile_in_sandbox(source, pieces, fingerprint)``: the program traced, validated and
  lowered in the worker; the host gets the head as data and validates it.

Workers (``sandbox_worker``) are reused: starting one costs ~0.1 s. A request that runs past its
time limit — also in C code, where no Python-level alarm can fire — is answered by killing
the worker from here (``SIGKILL``) and starting a fresh one for the next request. Replies
are ``.npz`` frames read with ``allow_pickle=False`` and validated again here.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from headcode.compiler.check import check_source
from headcode.compiler.compile import uncompiled
from headcode.compiler.head import CompiledHead, check_head_data
from headcode.runtime.text.tokens import Tokens
from headcode.synth import sandbox_worker as W
from headcode.synth.sandbox_worker import (  # noqa: F401 - re-exported: the sandbox's public face
    Limits,
    Worker,
    WorkerGone,
    _call,
    _key,
    python_layers_off,
)


@dataclass(frozen=True, eq=False)
class SandboxResult:
    ok: bool
    scores: tuple[np.ndarray, ...] = ()
    reason: str = ""
    mode: str = ""              # "traced" (from the IR) or "prefix" (free-form, row q on tokens <= q)


def _check(source: str) -> list[str]:
    return check_source(source) if W._PYTHON_LAYERS[0] else []


def _validate(status: dict, arrays: dict[str, np.ndarray], texts: Sequence[Tokens]) -> SandboxResult:
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
    return SandboxResult(True, tuple(mats), "", str(status.get("mode", "")))


def _run_share(sources: Sequence[str], texts: list[Tokens], key: str, limits: Limits) -> list[SandboxResult]:
    out: list[SandboxResult] = []
    w = None
    try:
        for src in sources:
            w = w if w is not None and w.alive() else W._POOL.acquire(limits)
            try:
                status, arrays = _call(w, {"op": "run", "source": src, "texts_key": key}, "texts", key,
                                       "texts", texts, limits.time_s)
                out.append(_validate(status, arrays, texts))
            except WorkerGone as e:
                out.append(SandboxResult(False, (), str(e).replace("time limit exceeded",
                                                                   f"time limit exceeded ({limits.time_s:g} s)")))
                w = None
    finally:
        if w is not None:
            W._POOL.release(w)
    return out


def run_programs(sources: Sequence[str], texts: Sequence[Tokens], limits: Limits | None = None,
                 workers: int = 1, chunk: int = 4) -> list[SandboxResult]:
    """Run each program source on every text in the sandbox; one result per source, in order.
    ``workers`` programs run at once (each in its own process); ``chunk`` is kept for callers."""
    limits = limits or Limits()
    sources = list(sources)
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
    texts = list(texts)
    key = _key([(t.ids.tobytes(), t.pieces, t.text) for t in texts])
    shares = [todo[j::max(1, workers)] for j in range(max(1, min(workers, len(todo))))]
    if len(shares) == 1:
        parts = [_run_share([sources[i] for i in shares[0]], texts, key, limits)]
    else:
        with ThreadPoolExecutor(max_workers=len(shares)) as pool:
            parts = list(pool.map(lambda s: _run_share([sources[i] for i in s], texts, key, limits), shares))
    for share, part in zip(shares, parts):
        for i, r in zip(share, part):
            results[i] = r
    return [r for r in results if r is not None]


def clear_table_caches() -> None:
    """Empty the vocabulary-table cache of every idle worker (benchmarks of a cold compile)."""
    from headcode.compiler.tables import clear_cache

    clear_cache()
    with W._POOL.lock:
        idle = list(W._POOL.idle)
    for w in idle:
        w.request({"op": "clear_tables"}, 5.0)


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
    key = f"{fingerprint}:{len(pieces)}:{_key(pieces)}"
    w = W._POOL.acquire(limits)
    try:
        status, arrays = _call(w, {"op": "compile", "source": source, "name": name, "vocab_key": key,
                                   "fingerprint": fingerprint, "model_id": model_id}, "vocabs", key,
                               "pieces", pieces, limits.time_s)
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
