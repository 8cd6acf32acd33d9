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

Workers are reused (a small pool: starting one costs ~0.2 s). A request that runs past its
time limit — also in C code, where no Python-level alarm can fire — is answered by killing
the worker from here (``SIGKILL``) and starting a fresh one for the next request. Replies
are ``.npz`` frames read with ``allow_pickle=False`` and validated again here.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import io
import json
import os
import pickle
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from headcode.compiler.check import check_source
from headcode.compiler.compile import uncompiled
from headcode.compiler.head import CompiledHead, check_head_data
from headcode.errors import HeadcodeError
from headcode.runtime.tokens import Tokens

_PYTHON_LAYERS = [True]  # tests only (``python_layers_off``): show that the OS layers hold alone
GRACE_S = 2.0       # beyond a request's time limit before the worker is killed from outside
MAX_IDLE = 2        # workers kept for reuse
MAX_FRAME = 1 << 30  # a reply larger than this is refused (the worker is killed)


@dataclass(frozen=True)
class Limits:
    time_s: float = 10.0        # wall-clock per program (all texts of the request)
    memory_mb: int = 2048       # address space of the worker
    startup_s: float = 20.0     # allowance for a worker to start and import numpy


@dataclass(frozen=True, eq=False)
class SandboxResult:
    ok: bool
    scores: tuple[np.ndarray, ...] = ()
    reason: str = ""
    mode: str = ""              # "traced" (from the IR) or "prefix" (free-form, row q on tokens <= q)


class WorkerGone(Exception):
    """The worker was killed (time limit) or died (memory/CPU limit, crash); the message says why."""


def _env() -> dict[str, str]:
    keep = ("PATH", "LANG", "LC_ALL", "VIRTUAL_ENV", "SYSTEMROOT")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", NUMBA_NUM_THREADS="1",
               PYTHONDONTWRITEBYTECODE="1", PYTHONHASHSEED="0", HOME="/")
    return env


_ROOT: list[str] = []
_WARNED: list[bool] = []


def _empty_root() -> str:
    """An empty directory, read-only to the worker, that becomes its ``/`` (one per host process)."""
    if not _ROOT:
        d = tempfile.mkdtemp(prefix="headcode-sandbox-root-")
        os.chmod(d, 0o555)
        _ROOT.append(d)
        atexit.register(shutil.rmtree, d, True)
    return _ROOT[0]


@dataclass(eq=False)
class Worker:
    """One sandbox process. ``layers``: the isolation layers it reported as applied."""

    memory_mb: int = 2048
    startup_s: float = 20.0
    os_layers: bool = True
    python_layers: bool = True
    layers: tuple[str, ...] = ()
    uid: int = -1
    _texts: set = field(default_factory=set)
    _vocabs: set = field(default_factory=set)

    def __post_init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-I", "-m", "headcode.synth.sandbox_child"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=_env(), cwd="/", start_new_session=True)
        self._buf = bytearray()
        self._err: list[bytes] = []
        threading.Thread(target=self._drain, daemon=True).start()
        self._send({"root_dir": _empty_root(), "memory_mb": self.memory_mb,
                    "os_layers": self.os_layers, "python_layers": self.python_layers})
        status, _ = self._recv(self.startup_s)
        self.layers, self.uid = tuple(status.get("layers", ())), int(status.get("uid", -1))
        missing = [x for x in ("netns", "chroot") if x not in self.layers]
        if self.os_layers and missing and not _WARNED:
            _WARNED.append(True)
            warnings.warn(f"headcode sandbox: this system does not allow the {' and '.join(missing)} "
                          f"layer(s); running with {', '.join(self.layers)} (see README: what the "
                          "sandbox contains)", RuntimeWarning, stacklevel=2)

    def _drain(self) -> None:
        for line in self.proc.stderr:  # what programs print; keep the tail for error messages
            self._err = (self._err + [line])[-5:]

    def _send(self, obj: dict) -> None:
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            self.proc.stdin.write(struct.pack("<Q", len(data)) + data)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as e:
            raise self._gone(f"sandbox process is gone ({e})") from e

    def _read_exact(self, n: int, deadline: float) -> bytes:
        fd = self.proc.stdout.fileno()
        while len(self._buf) < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise self._gone(None)
            chunk = os.read(fd, max(n - len(self._buf), 1 << 16))
            if not chunk:
                raise self._gone("")
            self._buf += chunk
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def _recv(self, timeout: float) -> tuple[dict, dict[str, np.ndarray]]:
        deadline = time.monotonic() + timeout
        (n,) = struct.unpack("<Q", self._read_exact(8, deadline))
        if n > MAX_FRAME:
            raise self._gone(f"sandbox process sent a {n}-byte reply, more than {MAX_FRAME}")
        body = self._read_exact(n, deadline)
        try:
            with np.load(io.BytesIO(body), allow_pickle=False) as z:
                status = json.loads(bytes(z["status"]).decode())
                arrays = {k: z[k] for k in z.files if k != "status"}
        except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as e:
            raise self._gone(f"sandbox process sent a malformed reply ({type(e).__name__})") from e
        if not isinstance(status, dict):
            raise self._gone("sandbox process sent a malformed reply")
        return status, arrays

    def _gone(self, why: str | None) -> WorkerGone:
        """Kill the process (if alive) and say why it is gone (``None``: it ran out of time)."""
        timed_out = why is None and self.proc.poll() is None
        self.kill()
        rc = self.proc.returncode
        if timed_out:
            return WorkerGone("time limit exceeded (killed from outside)")
        if why:
            return WorkerGone(why)
        if rc == -signal.SIGXCPU:
            return WorkerGone("time limit exceeded (CPU seconds; killed by SIGXCPU)")
        if rc is not None and rc < 0:
            return WorkerGone(f"sandbox process killed by signal {-rc} (memory limit or crash)")
        tail = b"".join(self._err).decode(errors="replace").strip().splitlines()[-1:] or [""]
        return WorkerGone(f"sandbox process exited with code {rc}: {tail[0][:200]}")

    def request(self, req: dict, time_s: float) -> tuple[dict, dict[str, np.ndarray]]:
        """Send ``req`` (with ``time_s``) and wait for the reply; ``WorkerGone`` past ``time_s + GRACE_S``."""
        self._send(dict(req, time_s=time_s))
        return self._recv(time_s + GRACE_S)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # it exited between the poll and the kill
        self.proc.wait()


class _Pool:
    """Idle workers for reuse, keyed by memory limit."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.idle: list[Worker] = []

    def acquire(self, limits: Limits) -> Worker:
        with self.lock:
            for w in self.idle:
                if w.memory_mb == limits.memory_mb and w.python_layers == _PYTHON_LAYERS[0]:
                    self.idle.remove(w)
                    if w.alive():
                        return w
                    w.kill()
                    break
        try:
            return Worker(limits.memory_mb, limits.startup_s, python_layers=_PYTHON_LAYERS[0])
        except WorkerGone as e:
            raise HeadcodeError(f"the sandbox process could not start ({e}); programs cannot run "
                                "without it: check that python can run here with a "
                                f"{limits.memory_mb} MB address-space limit") from e

    def release(self, w: Worker) -> None:
        with self.lock:
            if w.alive() and len(self.idle) < MAX_IDLE:
                self.idle.append(w)
                return
        w.kill()

    def close(self) -> None:
        with self.lock:
            idle, self.idle = self.idle, []
        for w in idle:
            w.kill()


_POOL = _Pool()
atexit.register(_POOL.close)


@contextlib.contextmanager
def python_layers_off() -> Iterator[None]:
    """For tests only: inside, programs skip the host's check and run in workers without the
    Python layers (full builtins, no audit hook): what holds then is the OS layers alone."""
    _PYTHON_LAYERS[0] = False
    try:
        yield
    finally:
        _PYTHON_LAYERS[0] = True
        _POOL.close()


def _check(source: str) -> list[str]:
    return check_source(source) if _PYTHON_LAYERS[0] else []


def _key(obj: object) -> str:
    return hashlib.sha1(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)).hexdigest()


def _call(w: Worker, req: dict, cache: str, key: str, payload_name: str, payload: object,
          time_s: float) -> tuple[dict, dict[str, np.ndarray]]:
    """One request; the (large) texts or vocabulary travel only to a worker that lacks them."""
    seen = w._texts if cache == "texts" else w._vocabs
    status, arrays = w.request(dict(req, **({payload_name: payload} if key not in seen else {})), time_s)
    if status.get("missing") == key:  # the worker dropped it from its small cache: send it again
        status, arrays = w.request(dict(req, **{payload_name: payload}), time_s)
    seen.add(key)
    return status, arrays


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
            w = w if w is not None and w.alive() else _POOL.acquire(limits)
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
            _POOL.release(w)
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
    with _POOL.lock:
        idle = list(_POOL.idle)
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
    w = _POOL.acquire(limits)
    try:
        status, arrays = _call(w, {"op": "compile", "source": source, "name": name, "vocab_key": key,
                                   "fingerprint": fingerprint, "model_id": model_id}, "vocabs", key,
                               "pieces", pieces, limits.time_s)
    except WorkerGone as e:
        return uncompiled(label, source, [f"sandbox: {e}"], len(pieces), fingerprint, model_id)
    finally:
        _POOL.release(w)
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
