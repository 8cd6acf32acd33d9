"""Run untrusted programs (from a language model) in a separate, locked-down process.

``run_programs(sources, texts)`` starts ``headcode.synth.sandbox_child`` (see its docstring
for the lock-down: memory and CPU limits, no network, no file writes, an import allow-list,
a per-program alarm), runs every program on every text, and returns one ``SandboxResult``
per program: the validated ``[T, T]`` score matrices, or the reason they are missing. A
program that hangs or crashes the child costs its own candidacy: the child is killed and the
programs after it run in a fresh child. Results come back as ``.npz`` frames loaded with
``allow_pickle=False``, and are validated again here.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from headcode.runtime.tokens import Tokens


@dataclass(frozen=True)
class Limits:
    time_s: float = 10.0        # wall-clock per program (all texts of the batch)
    memory_mb: int = 2048       # address space of the child
    startup_s: float = 20.0     # allowance for the child to start and import numpy


@dataclass(frozen=True, eq=False)
class SandboxResult:
    ok: bool
    scores: tuple[np.ndarray, ...] = ()
    reason: str = ""


def _env() -> dict[str, str]:
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "PYTHONPATH", "VIRTUAL_ENV", "SYSTEMROOT")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONDONTWRITEBYTECODE="1", PYTHONHASHSEED="0")
    return env


def _parse(out: bytes, texts: Sequence[Tokens]) -> list[SandboxResult]:
    results, pos = [], 0
    while pos + 8 <= len(out):
        (n,) = struct.unpack("<Q", out[pos:pos + 8])
        if pos + 8 + n > len(out):
            break
        with np.load(io.BytesIO(out[pos + 8:pos + 8 + n]), allow_pickle=False) as z:
            status = json.loads(bytes(z["status"]).decode())
            mats = [z[f"s{i}"] for i in range(len(texts))] if status.get("ok") else []
        results.append(_validate(status, mats, texts))
        pos += 8 + n
    return results


def _validate(status: dict, mats: list[np.ndarray], texts: Sequence[Tokens]) -> SandboxResult:
    if not status.get("ok"):
        return SandboxResult(False, (), str(status.get("reason", "failed"))[:300])
    for m, t in zip(mats, texts):
        T = len(t)
        if m.shape != (T, T) or m.dtype.kind != "f":
            return SandboxResult(False, (), f"returned shape {m.shape}, expected ({T}, {T})")
        if not np.all(np.isfinite(m)) or np.any(m < 0):
            return SandboxResult(False, (), "returned NaN, infinite or negative scores")
    return SandboxResult(True, tuple(mats), "")


def _run_child(sources: Sequence[str], texts: Sequence[Tokens], limits: Limits) -> list[SandboxResult]:
    job = {"sources": list(sources), "texts": list(texts), "time_limit_s": limits.time_s,
           "memory_mb": limits.memory_mb, "cpu_s": int(limits.time_s * len(sources) + limits.startup_s)}
    wall = limits.startup_s + limits.time_s * len(sources) + 2.0
    proc = subprocess.Popen([sys.executable, "-I", "-m", "headcode.synth.sandbox_child"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=_env(), cwd="/", start_new_session=True)
    killed = False
    try:
        out, err = proc.communicate(pickle.dumps(job), timeout=wall)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        killed = True
    results = _parse(out, texts)
    if len(results) >= len(sources):
        return results[:len(sources)]
    # the child died on program number len(results): that program is out, the rest run again
    if killed:
        why = f"time limit exceeded ({limits.time_s:g} s; killed)"
    elif proc.returncode and proc.returncode < 0:
        why = f"sandbox process killed by signal {-proc.returncode} (memory or CPU limit)"
    else:
        tail = err.decode(errors="replace").strip().splitlines()[-1:] or [""]
        why = f"sandbox process exited with code {proc.returncode}: {tail[0][:200]}"
    results.append(SandboxResult(False, (), why))
    rest = sources[len(results):]
    return results + (_run_child(rest, texts, limits) if rest else [])


def run_programs(sources: Sequence[str], texts: Sequence[Tokens], limits: Limits | None = None,
                 workers: int = 1, chunk: int = 4) -> list[SandboxResult]:
    """Run each program source on every text in the sandbox; one result per source, in order."""
    limits = limits or Limits()
    sources = list(sources)
    if not sources:
        return []
    if not texts:
        return [SandboxResult(True, (), "") for _ in sources]
    chunks = [sources[i:i + chunk] for i in range(0, len(sources), chunk)]
    if workers <= 1 or len(chunks) == 1:
        return [r for c in chunks for r in _run_child(c, texts, limits)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        parts = list(pool.map(lambda c: _run_child(c, texts, limits), chunks))
    return [r for p in parts for r in p]
