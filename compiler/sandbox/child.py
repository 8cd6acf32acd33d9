"""The sandbox's worker process: runs untrusted programs and sends back data, never code.

Started by ``headcode.compiler.sandbox`` as ``python -I -m headcode.compiler.sandbox.child`` for one
program (a fresh process per program: nothing one program does reaches the next), and killed
after it. It dies with its host (``PR_SET_PDEATHSIG``). Before reading any program it imports everything it will need,
then locks itself down with the operating-system layers of ``sandbox.lockdown`` (rlimits, no new
privileges, its own network namespace, an empty read-only root, uid ``nobody``), then adds
the Python layers: programs run with ``check.safe_builtins`` and an import allow-list, under
an audit hook that refuses files, sockets, processes and ``ctypes``. Nothing depends on the
Python layers: the checked source cannot reach them, and the OS layers hold without them
(``tests/synth/test_sandbox_hostile.py`` runs programs with the Python layers switched off).

Protocol: frames of an 8-byte little-endian length and a body. Parent -> child: a pickle
(the parent is trusted). Child -> parent: an uncompressed ``.npz`` with a JSON ``status`` and
numeric arrays (``sandbox.frames``), which the host reads as hostile bytes. Requests:

- ``score``: the program compiled as ``compile`` compiles it, against the model's vocabulary
  (the host sends it, with the built-in predicates' tables): the host scores the head from
  token ids itself — what explain scores is what compile builds. ``traced: false`` for a
  program that is not a selector pattern.
- ``row``: a free-form program on one prefix of a text; the host sends prefixes in order, so
  the process never holds a token after the row it computes.
- ``compile``: trace, validate and lower a program against a vocabulary (``tok()`` tables
  are computed here); the reply is the head as JSON plus its tables.

Anything a program prints goes to stderr.
"""

from __future__ import annotations

import ast
import builtins
import ctypes
import os
import pickle
import resource
import signal
import struct
import sys
from typing import Any

import numpy as np

from headcode.compiler import check, tables
from headcode.compiler import program as program_mod
from headcode.compiler.compile import compile_in_process
from headcode.compiler.namespace import namespace
from headcode.compiler.sandbox import lockdown as sandbox_os
from headcode.compiler.sandbox.frames import write_reply
from headcode.compiler.tokens import Tokens
from headcode.compiler.validate import CompileError

PR_SET_PDEATHSIG = 1

ALLOWED_IMPORTS = check.ALLOWED_IMPORTS
_BLOCKED_EVENTS = ("socket.", "subprocess.", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
                   "os.fork", "os.forkpty", "os.kill", "os.killpg", "os.remove", "os.unlink",
                   "os.rmdir", "os.rename", "os.replace", "os.truncate", "os.chmod", "os.chown",
                   "os.mkdir", "os.symlink", "os.link", "os.putenv", "os.unsetenv", "os.chdir",
                   "shutil.", "ctypes.", "pty.", "webbrowser.", "urllib.", "http.", "ftplib.",
                   "smtplib.", "sqlite3.", "resource.", "signal.", "code.__new__", "function.__new__")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_violations: list[str] = []
_own_call = [False]  # set while the child itself (not a program) makes an audited call


class TimeLimit(BaseException):
    """Raised by the alarm; a BaseException so that ``except Exception`` in a program cannot eat it."""


class Refused(Exception):
    """The program failed the check (reasons joined)."""


def _audit(event: str, args: tuple) -> None:
    if _own_call[0]:
        return
    reason = None
    if event == "open":
        mode, flags = args[1], args[2]
        writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & _WRITE_FLAGS)
        reason = f"file access is not allowed (open {str(args[0])[:80]!r}{' for writing' if writes else ''})"
    elif event == "import":
        if str(args[0]).split(".")[0] not in ALLOWED_IMPORTS and str(args[0]) not in sys.modules:
            reason = f"import of {args[0]!r} is not allowed (allowed: {', '.join(ALLOWED_IMPORTS)})"
    elif event.startswith("socket."):
        reason = f"network access is not allowed ({event})"
    elif event.startswith(_BLOCKED_EVENTS):
        reason = f"{event} is not allowed in the sandbox"
    if reason:
        _violations.append(reason)
        raise PermissionError(f"sandbox: {reason}")


def _restricted_import(name: str, globals: Any = None, locals: Any = None, fromlist: Any = (),
                       level: int = 0) -> Any:
    if level != 0 or name.split(".")[0] not in ALLOWED_IMPORTS:
        reason = f"import of {name!r} is not allowed (allowed: {', '.join(ALLOWED_IMPORTS)})"
        _violations.append(reason)
        raise ImportError(f"sandbox: {reason}")
    return builtins.__import__(name, globals, locals, fromlist, level)


class Child:
    """The worker's state: one program (a worker runs one program, then is killed), built on
    first use, and which layers are on."""

    def __init__(self, python_layers: bool):
        self.python_layers = python_layers
        self.built: tuple[str, str, Any] | None = None  # (source, function name, function)

    # building a program ----------------------------------------------------------------------
    def function(self, source: str) -> tuple[str, Any]:
        if self.built is not None and self.built[0] == source:
            return self.built[1], self.built[2]
        if self.built is not None:
            raise Refused("this worker already ran another program")
        if self.python_layers:
            reasons = check.check_source(source)
            if reasons:
                raise Refused("; ".join(reasons))
        tree = ast.parse(source)
        fns = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
        if not fns:
            raise Refused("program source defines no function (expected `def attend(t): ...`)")
        ns = namespace()
        if self.python_layers:
            b = check.safe_builtins()
            b["__import__"] = _restricted_import
            ns["__builtins__"] = b
        exec(compile(tree, "<program>", "exec"), ns)  # noqa: S102 - this process is the sandbox
        name = "attend" if "attend" in fns else fns[-1]
        self.built = (source, name, ns[name])
        return name, ns[name]

    # requests ----------------------------------------------------------------------------------
    def score(self, req: dict) -> tuple[dict, dict[str, np.ndarray]]:
        """The program compiled exactly as ``compile`` compiles it — the same function, against
        the same vocabulary (the model's own, sent by the host): the host scores that head
        from token ids itself, so what explain scores is what compile builds, and this process
        never sees a text. A program that does not compile to selectors answers
        ``traced: false`` (the host then sends prefixes, ``row``)."""
        name, fn = self.function(req["source"])
        prog = program_mod.Program(name, req["source"], fn)
        tables.preload(req.get("tables", {}), len(req["pieces"]), req["fingerprint"])
        try:
            head = compile_in_process(prog, list(req["pieces"]), req["fingerprint"], strict=True)
        except CompileError as e:
            if isinstance(e.__cause__, tables.TableError):  # compile would refuse it for this reason
                raise Refused("; ".join(e.reasons)) from e
            return {"ok": True, "traced": False}, {}
        return {"ok": True, "traced": True, "head": head.meta_json()}, {"tables": np.ascontiguousarray(head.tables)}

    def row(self, req: dict) -> tuple[dict, dict[str, np.ndarray]]:
        """Row ``q = len(prefix) - 1`` of a free-form program run on that prefix alone: the
        host sends a text one prefix at a time, so no later token is in this process."""
        _, fn = self.function(req["source"])
        t: Tokens = req["prefix"]
        return {"ok": True}, {"row": program_mod.raw_scores(fn, t)[len(t) - 1]}

    def compile(self, req: dict) -> tuple[dict, dict[str, np.ndarray]]:
        name, fn = self.function(req["source"])
        prog = program_mod.Program(req.get("name") or name, req["source"], fn)
        tables.preload(req.get("tables", {}), len(req["pieces"]), req["fingerprint"])
        head = compile_in_process(prog, list(req["pieces"]), req["fingerprint"], req.get("model_id", ""))
        return {"ok": True, "head": head.meta_json()}, {"tables": np.ascontiguousarray(head.tables)}


def _on_alarm(signum: int, frame: Any) -> None:
    raise TimeLimit()


_NP_ERR = np.geterr()


def handle(child: Child, req: dict) -> tuple[dict, dict[str, np.ndarray]]:
    del _violations[:]
    np.seterr(**_NP_ERR)  # a program's np.seterr must not change how the next one runs
    time_s = float(req.get("time_s", 10.0))
    _own_call[0] = True
    try:
        sandbox_os.set_cpu_budget(time_s + 1.0)
    finally:
        _own_call[0] = False
    signal.setitimer(signal.ITIMER_REAL, time_s)
    try:
        op = {"score": child.score, "row": child.row, "compile": child.compile}.get(req["op"])
        if op is None:
            raise Refused(f"unknown request {req['op']!r}")
        status, arrays = op(req)
    except TimeLimit:
        status, arrays = {"ok": False, "reason": f"time limit exceeded ({time_s:g} s)"}, {}
    except MemoryError:
        status, arrays = {"ok": False, "reason": "memory limit exceeded"}, {}
    except Refused as e:
        status, arrays = {"ok": False, "reason": f"refused: {e}"}, {}
    except RecursionError:
        status, arrays = {"ok": False, "reason": "RecursionError: maximum recursion depth exceeded"}, {}
    except Exception as e:  # noqa: BLE001 - any failure of untrusted code is its own, reported
        status, arrays = {"ok": False, "reason": f"{type(e).__name__}: {e}"[:300]}, {}
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    if _violations:
        status, arrays = {"ok": False, "reason": f"refused: {_violations[0]}"}, {}
    use = resource.getrusage(resource.RUSAGE_SELF)
    status["cpu_s"] = use.ru_utime + use.ru_stime  # the host retires a worker that has used much
    return status, arrays


def frame(status: dict, arrays: dict[str, np.ndarray]) -> bytes:
    data = write_reply(status, arrays)
    return struct.pack("<Q", len(data)) + data


def _read(inp: Any) -> Any:
    head = inp.read(8)
    if len(head) < 8:
        return None
    (n,) = struct.unpack("<Q", head)
    return pickle.loads(inp.read(n))  # written by the trusted parent


def _preload() -> None:
    """Import and warm what programs and replies need: nothing can be read from disk later."""
    import collections  # noqa: F401
    import functools  # noqa: F401
    import itertools  # noqa: F401
    import math  # noqa: F401
    import re
    import string  # noqa: F401

    for m in ("numpy.random", "numpy.linalg", "numpy.fft"):
        __import__(m)
    re.compile(r"(\w+)\s").findall("warm up ")
    check.allowed_attributes()
    check.check_source("def attend(t):\n    return first(t)\n")
    frame({"ok": True}, {"a": np.zeros((1, 1))})
    t = Tokens.synthetic(["<s>", " a", "."])
    _ = t.sentence_index, t.word_index, t.prefix(2)
    warm = Child(python_layers=False)  # every selector's lowering, the tables, the head's JSON
    src = "def attend(t):\n    return " + " + ".join(f"{f}(t)" for f in _ZERO_ARG) + "\n"
    warm.score({"source": src, "pieces": ["<s>", " a", "."], "fingerprint": "warm"})


_ZERO_ARG = ("first", "uniform", "same_token", "sentence_start", "word_start", "in_same_sentence",
             "induction", "clause_start")


def die_with_host() -> None:
    """``PR_SET_PDEATHSIG``: the kernel kills this process when the host thread that started it
    ends; if the host is already gone (the race before the call), exit now. Called at start and
    after the uid change (which clears it)."""
    parent = os.getppid()
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0 or parent == 1:
        os._exit(3)


def main() -> None:
    die_with_host()
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # prints of programs go to stderr
    inp = sys.stdin.buffer
    hello = _read(inp)
    if hello is None or os.getppid() != hello.get("host_pid"):
        os._exit(3)  # the host that wrote the hello is not our parent any more
    _preload()
    layers = []
    if hello.get("os_layers", True):
        layers = sandbox_os.lock_down(hello["root_dir"], int(hello["memory_mb"]), 60)
        die_with_host()  # again: the kernel clears the parent-death signal when the uid changes
        if os.getppid() != hello.get("host_pid"):
            os._exit(3)
    child = Child(bool(hello.get("python_layers", True)))
    if child.python_layers:
        sys.addaudithook(_audit)
        layers += ["ast_check", "restricted_builtins", "audit_hook"]
    signal.signal(signal.SIGALRM, _on_alarm)
    out.write(frame({"ok": True, "layers": layers, "uid": os.getuid()}, {}))
    out.flush()
    while (req := _read(inp)) is not None:
        status, arrays = handle(child, req)
        out.write(frame(status, arrays))
        out.flush()


if __name__ == "__main__":
    main()
