"""The sandbox's worker processes, seen from the host: start, talk to, kill.

A ``Worker`` is one ``python -I -m headcode.compiler.sandbox.child`` process, which locks itself
down (``sandbox.lockdown``) and then answers requests for *one* program: ``_POOL.acquire`` always
starts a fresh process and ``release`` kills it, so no state — a patched module, a cached
table, numpy's error state, anything an escaped program left behind — passes from one
program to the next. ``Worker.request`` sends one pickled request (host -> worker is the
trusted direction) and waits for the reply with a deadline; past it — also when the program
hangs in C code, where no Python-level alarm fires — the process group is ``SIGKILL``ed from
here and ``WorkerGone`` says why. Replies are read as hostile bytes (``sandbox.frames``): any
malformed reply, whatever it makes the readers raise, kills the worker and costs that
program its candidacy, never the host.
"""

from __future__ import annotations

import atexit
import contextlib
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
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from headcode.compiler.sandbox.frames import MalformedReply, read_reply
from headcode.errors import HeadcodeError

_PYTHON_LAYERS = [True]  # tests only (``python_layers_off``): show that the OS layers hold alone
GRACE_S = 2.0       # beyond a request's time limit before the worker is killed from outside
MAX_FRAME = 1 << 30  # a reply larger than this is refused (the worker is killed)


@dataclass(frozen=True)
class Limits:
    time_s: float = 10.0        # wall-clock per program (all texts of the request)
    memory_mb: int = 2048       # address space of the worker
    startup_s: float = 20.0     # allowance for a worker to start and import numpy


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

    def __post_init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-I", "-m", "headcode.compiler.sandbox.child"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=_env(), cwd="/", start_new_session=True)
        self._buf = bytearray()
        self._err: list[bytes] = []
        threading.Thread(target=self._drain, daemon=True).start()
        self._send({"host_pid": os.getpid(), "root_dir": _empty_root(), "memory_mb": self.memory_mb,
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
        """Read what programs print (stderr) in chunks, keeping only the tail for error messages:
        a program cannot grow this process's memory by printing."""
        fd = self.proc.stderr.fileno()
        while chunk := os.read(fd, 1 << 16):
            self._err = [(b"".join(self._err) + chunk)[-2048:]]

    def _send(self, obj: dict) -> None:
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            self.proc.stdin.write(struct.pack("<Q", len(data)) + data)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as e:
            raise self._gone(f"sandbox process is gone ({e})") from e

    def _read_exact(self, n: int, deadline: float) -> bytes:
        fd = self.proc.stdout.fileno()
        poll = select.poll()  # not select.select: it fails for descriptors >= 1024 in a busy host
        poll.register(fd, select.POLLIN)
        while len(self._buf) < n:
            left = deadline - time.monotonic()
            if left <= 0 or not poll.poll(left * 1000):
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
            return read_reply(body)
        except MalformedReply as e:
            raise self._gone(f"program refused: malformed reply from the sandbox process ({str(e)[:80]})") from e

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
        status, arrays = self._recv(time_s + GRACE_S)
        return status, arrays

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
    """Starts a fresh worker per program and kills it after (``release``); ``close`` kills any
    still running (the host's exit)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.live: set[Worker] = set()

    def acquire(self, limits: Limits) -> Worker:
        try:
            w = Worker(limits.memory_mb, limits.startup_s, python_layers=_PYTHON_LAYERS[0])
        except WorkerGone as e:
            raise HeadcodeError(f"the sandbox process could not start ({e}); programs cannot run "
                                "without it: check that python can run here with a "
                                f"{limits.memory_mb} MB address-space limit") from e
        with self.lock:
            self.live.add(w)
        return w

    def release(self, w: Worker) -> None:
        with self.lock:
            self.live.discard(w)
        w.kill()

    def close(self) -> None:
        with self.lock:
            live, self.live = list(self.live), set()
        for w in live:
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
