"""The sandbox's operating-system layers: what holds even if every Python-level layer falls.

``lock_down(root_dir, memory_mb, cpu_s)`` is called by the child (``sandbox_child``) after it
has imported everything it will need and before it reads any program. It applies, in order,
and returns the names of the layers that took effect (a layer the system does not allow is
skipped and left out of the list, never silently claimed):

- ``rlimits``: address space (``RLIMIT_AS``), CPU seconds, no file growth (``RLIMIT_FSIZE=0``),
  no new processes or threads (``RLIMIT_NPROC=0``), few file descriptors, no core dumps;
- ``no_new_privs``: ``prctl(PR_SET_NO_NEW_PRIVS)``: no set-uid binary or file capability can
  give back a privilege;
- ``netns``: ``unshare(CLONE_NEWNET)``: a network namespace with no interface but a down
  loopback (as root; otherwise ``userns`` first, where unprivileged user namespaces exist);
- ``chroot``: the root directory becomes an empty, read-only directory: no file on the
  machine can be read or written, no program executed;
- ``setuid``: started as root, the child becomes uid/gid 65534 (``nobody``) with no
  supplementary groups, and so loses every capability.
"""

from __future__ import annotations

import ctypes
import os
import resource

CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
PR_SET_NO_NEW_PRIVS = 38
NOBODY = 65534
CPU_HARD_S = 3600  # a worker's lifetime CPU; the wall-clock kill in the parent is the real limit


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def set_rlimits(memory_mb: int, cpu_s: int, nofile: int = 32) -> None:
    mem = int(memory_mb) * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_CPU, (int(cpu_s), CPU_HARD_S))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))


def lock_down(root_dir: str, memory_mb: int, cpu_s: int) -> list[str]:
    """Apply every layer the system allows; the names of those applied."""
    libc = _libc()
    layers = []
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0:
        layers.append("no_new_privs")
    root = os.geteuid() == 0
    if not root and libc.unshare(CLONE_NEWUSER) == 0:
        layers.append("userns")
    if (root or "userns" in layers) and libc.unshare(CLONE_NEWNET) == 0:
        layers.append("netns")
    try:
        os.chroot(root_dir)
        os.chdir("/")
        layers.append("chroot")
    except OSError:
        pass  # not allowed here: the other layers still apply
    if root:
        os.setgroups([])
        os.setresgid(NOBODY, NOBODY, NOBODY)
        os.setresuid(NOBODY, NOBODY, NOBODY)
        layers.append("setuid")
    # last: NPROC=0 counts this uid's processes, and the steps above need none
    set_rlimits(memory_mb, cpu_s)
    layers.append("rlimits")
    return layers


def set_cpu_budget(seconds: float) -> None:
    """Let the process use ``seconds`` more CPU from now (soft limit; SIGXCPU kills it after)."""
    used = resource.getrusage(resource.RUSAGE_SELF)
    now = used.ru_utime + used.ru_stime
    soft = min(CPU_HARD_S, int(now + seconds) + 1)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, CPU_HARD_S))
