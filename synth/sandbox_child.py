"""The sandbox's child process: runs untrusted programs on texts and writes back score matrices.

Started by ``headcode.synth.sandbox`` as ``python -m headcode.synth.sandbox_child``. It reads
one pickled job from stdin (written by the trusted parent), then locks itself down before
running any program:

- resource limits: address space (``RLIMIT_AS``), CPU seconds, no file growth (``RLIMIT_FSIZE=0``);
- an audit hook that refuses sockets, subprocesses, ``os.system``/``exec``/``fork``, file
  writes and deletions, ``ctypes``, and imports outside the allow-list;
- programs see restricted builtins: an ``__import__`` with the allow-list, no ``open``,
  ``exec``, ``eval``, ``compile``, ``input``, ``breakpoint``;
- a per-program wall-clock alarm.

Results go to the original stdout as frames (8-byte length + an ``.npz`` holding the
matrices and a JSON status): no pickle flows back to the parent. Anything the program
prints goes to stderr.
"""

from __future__ import annotations

import ast
import builtins
import io
import json
import os
import pickle
import resource
import signal
import struct
import sys
from typing import Any

import numpy as np

from headcode.compiler import program as program_mod
from headcode.compiler import vocab

ALLOWED_IMPORTS = ("numpy", "math", "re", "itertools", "collections", "functools", "string")
_BLOCKED_EVENTS = ("socket.", "subprocess.", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
                   "os.fork", "os.forkpty", "os.kill", "os.killpg", "os.remove", "os.unlink",
                   "os.rmdir", "os.rename", "os.replace", "os.truncate", "os.chmod", "os.chown",
                   "os.mkdir", "os.symlink", "os.link", "os.putenv", "os.unsetenv", "os.chdir",
                   "shutil.", "ctypes.", "pty.", "webbrowser.", "urllib.", "http.", "ftplib.",
                   "smtplib.", "sqlite3.", "resource.setrlimit", "signal.")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_REMOVED_BUILTINS = ("open", "exec", "eval", "compile", "input", "breakpoint", "help", "exit", "quit")

violations: list[str] = []


class TimeLimit(BaseException):
    """Raised by the alarm; a BaseException so that ``except Exception`` in a program cannot eat it."""


def _top(name: str) -> str:
    return name.split(".")[0]


def _audit(event: str, args: tuple) -> None:
    reason = None
    if event == "open":
        mode, flags = args[1], args[2]
        writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & _WRITE_FLAGS)
        if writes:
            reason = f"file writes are not allowed (open {args[0]!r} mode={mode!r})"
    elif event == "import":
        if _top(str(args[0])) not in ALLOWED_IMPORTS and str(args[0]) not in sys.modules:
            reason = f"import of {args[0]!r} is not allowed (allowed: {', '.join(ALLOWED_IMPORTS)})"
    elif event.startswith("socket."):
        reason = f"network access is not allowed ({event})"
    elif event.startswith(_BLOCKED_EVENTS):
        reason = f"{event} is not allowed in the sandbox"
    if reason:
        violations.append(reason)
        raise PermissionError(f"sandbox: {reason}")


def _restricted_import(name: str, globals: Any = None, locals: Any = None, fromlist: Any = (),
                       level: int = 0) -> Any:
    if level != 0 or _top(name) not in ALLOWED_IMPORTS:
        reason = f"import of {name!r} is not allowed (allowed: {', '.join(ALLOWED_IMPORTS)})"
        violations.append(reason)
        raise ImportError(f"sandbox: {reason}")
    return builtins.__import__(name, globals, locals, fromlist, level)


def _builtins() -> dict[str, Any]:
    b = {k: v for k, v in vars(builtins).items() if k not in _REMOVED_BUILTINS}
    b["__import__"] = _restricted_import
    return b


def _function(source: str) -> Any:
    tree = ast.parse(source)
    fns = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
    if not fns:
        raise ValueError("program source defines no function (expected `def attend(t): ...`)")
    ns = program_mod.namespace()
    ns["__builtins__"] = _builtins()
    exec(compile(tree, "<program>", "exec"), ns)  # noqa: S102 - this process is the sandbox
    return ns["attend" if "attend" in fns else fns[-1]]


def _scores(fn: Any, t: Any) -> np.ndarray:
    out = fn(t)
    if isinstance(out, vocab.Pattern):
        out = out.dense()
    s = np.asarray(out, dtype=np.float64)
    T = len(t)
    if s.shape != (T, T):
        raise ValueError(f"returned shape {tuple(s.shape)}, expected ({T}, {T})")
    if not np.all(np.isfinite(s)):
        raise ValueError("returned NaN or infinite scores")
    if np.any(s < 0):
        raise ValueError("returned negative scores")
    return s


def _on_alarm(signum: int, frame: Any) -> None:
    raise TimeLimit()


def _frame(status: dict, mats: list[np.ndarray]) -> bytes:
    buf = io.BytesIO()
    arrays = {f"s{i}": m for i, m in enumerate(mats)}
    arrays["status"] = np.frombuffer(json.dumps(status).encode(), dtype=np.uint8)
    np.savez(buf, **arrays)
    data = buf.getvalue()
    return struct.pack("<Q", len(data)) + data


def run_one(source: str, texts: list[Any], time_limit: float) -> tuple[dict, list[np.ndarray]]:
    del violations[:]
    signal.setitimer(signal.ITIMER_REAL, time_limit)
    try:
        fn = _function(source)
        mats = [_scores(fn, t) for t in texts]
        status = {"ok": True, "reason": ""}
    except TimeLimit:
        mats, status = [], {"ok": False, "reason": f"time limit exceeded ({time_limit:g} s)"}
    except MemoryError:
        mats, status = [], {"ok": False, "reason": "memory limit exceeded"}
    except Exception as e:  # noqa: BLE001 - any failure of untrusted code is its own, reported
        mats, status = [], {"ok": False, "reason": f"{type(e).__name__}: {e}"[:300]}
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    if violations:
        mats, status = [], {"ok": False, "reason": f"refused: {violations[0]}"}
    return status, mats


def main() -> None:
    job = pickle.load(sys.stdin.buffer)  # written by the trusted parent
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # prints of programs go to stderr
    mem = int(job["memory_mb"]) * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    cpu = int(job["cpu_s"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    signal.signal(signal.SIGALRM, _on_alarm)
    texts = job["texts"]
    for t in texts:  # warm the token features programs commonly read
        _ = t.sentence_index, t.word_index
    _frame({"ok": True}, [np.zeros((1, 1))])  # warm the imports the frames need
    sys.addaudithook(_audit)
    for source in job["sources"]:
        status, mats = run_one(source, texts, float(job["time_limit_s"]))
        out.write(_frame(status, mats))
        out.flush()


if __name__ == "__main__":
    main()
