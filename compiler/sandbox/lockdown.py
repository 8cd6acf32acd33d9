"""The sandbox's operating-system layers: what holds even if every Python-level layer falls.

``lock_down(root_dir, memory_mb, cpu_s)`` is called by the child (``sandbox.child``) after it
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
  supplementary groups, and so loses every capability;
- ``seccomp`` (x86-64): a filter that refuses (``EPERM``) the system calls a scoring process
  never needs and that widen the kernel's attack surface: sockets, ``execve``, ``fork``/``clone``,
  ``ptrace``, namespaces, mounts, ``bpf``, ``io_uring``, ``userfaultfd``, ``perf_event_open``,
  keyrings, modules, ``prlimit64`` on any process but itself, and every way to signal a process (``kill``, ``tgkill``, ``pidfd_*``, …:
  workers share the uid ``nobody``, so a worker could otherwise kill another); other ABIs
  (i386 ``int 0x80``, x32) kill the process.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import resource
import struct

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


# x86-64 numbers: socket socketpair execve execveat fork vfork ptrace mount umount2 pivot_root chroot
# unshare setns bpf userfaultfd perf_event_open add_key request_key keyctl io_uring_setup/enter/
# register kexec_load kexec_file_load init_module finit_module delete_module process_vm_readv/writev
# name_to_handle_at open_by_handle_at personality mknod mknodat acct swapon swapoff reboot
# sethostname setdomainname iopl ioperm syslog fanotify_init kcmp clone3 clone. The worker makes no
# process or thread after lock-down (numpy runs single-threaded), and RLIMIT_NPROC does not bind uid 0,
# so clone is refused here too: a root worker that could not drop its uid still cannot fork.
# Signals to any process: kill tkill tgkill rt_sigqueueinfo rt_tgsigqueueinfo pidfd_open
# pidfd_send_signal pidfd_getfd. Every worker runs as uid nobody, so without these one could kill
# another (or a host running as nobody); the worker itself never signals anything (its time
# limit is a timer the kernel delivers; the host kills it from outside).
SIGNAL_SYSCALLS_X86_64 = (62, 200, 234, 129, 297, 434, 424, 438)
DENIED_SYSCALLS_X86_64 = (41, 53, 59, 322, 57, 58, 56, 101, 165, 166, 155, 161, 272, 308, 321, 323, 298,
                          248, 249, 250, 425, 426, 427, 246, 320, 175, 313, 176, 310, 311, 303, 304,
                          135, 133, 259, 163, 167, 168, 169, 170, 171, 172, 173, 103, 300, 312,
                          435) + SIGNAL_SYSCALLS_X86_64
AUDIT_ARCH_X86_64 = 0xC000003E
PRLIMIT64 = 302
_X32_BIT = 0x40000000


def _bpf(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


def seccomp_filter() -> bool:
    """Install the deny-list filter (needs ``no_new_privs``); ``False`` where not supported."""
    if platform.machine() != "x86_64":
        return False
    ld, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    allow, kill = 0x7FFF0000, 0x80000000
    deny = 0x00050000 | errno.EPERM
    n = len(DENIED_SYSCALLS_X86_64)
    prog = [_bpf(ld, 0, 0, 4), _bpf(jeq, 0, 7 + n, AUDIT_ARCH_X86_64),   # arch: else kill
            _bpf(ld, 0, 0, 0), _bpf(jge, 5 + n, 0, _X32_BIT)]              # nr: x32 ABI -> kill
    prog += [_bpf(jeq, n - i + 3, 0, nr) for i, nr in enumerate(DENIED_SYSCALLS_X86_64)]
    # prlimit64 only on this process (pid 0, what glibc's setrlimit passes): on another process
    # (every worker is uid nobody) it could set a sibling's CPU limit to 1 s and so kill it
    prog += [_bpf(jeq, 0, 2, PRLIMIT64), _bpf(ld, 0, 0, 16), _bpf(jeq, 0, 1, 0)]
    prog += [_bpf(ret, 0, 0, allow), _bpf(ret, 0, 0, deny), _bpf(ret, 0, 0, kill)]
    buf = ctypes.create_string_buffer(b"".join(prog))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = SockFprog(len(prog), ctypes.addressof(buf))
    PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
    return _libc().prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) == 0


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
        try:
            os.setgroups([])
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)
            layers.append("setuid")
        except OSError:
            pass  # root without CAP_SETUID (a container dropped it): the other layers still apply
    # last: NPROC=0 counts this uid's processes, and the steps above need none
    set_rlimits(memory_mb, cpu_s)
    layers.append("rlimits")
    if "no_new_privs" in layers and seccomp_filter():
        layers.append("seccomp")
    return layers


def set_cpu_budget(seconds: float) -> None:
    """Let the process use ``seconds`` more CPU from now (soft limit; SIGXCPU kills it after)."""
    used = resource.getrusage(resource.RUSAGE_SELF)
    now = used.ru_utime + used.ru_stime
    soft = min(CPU_HARD_S, int(now + seconds) + 1)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, CPU_HARD_S))
