"""The hostile suite: programs of the kinds a language model (or an attacker writing a program
file or a plan) might return. Each must be contained — in explain (``run_programs``), in
compile (``compile_in_sandbox``) and at plan load — with a reason that contains one of its
fragments. Every program that could do harm aims at ``MARKER`` (or prints what it read), so
a test can see whether anything escaped.
"""

from __future__ import annotations

from dataclasses import dataclass

MARKER = "/tmp/headcode-hostile-marker"
RET = "    return 0.5 * previous(t, 1) + 0.5 * first(t)\n"


@dataclass(frozen=True)
class Hostile:
    name: str
    source: str
    reasons: tuple[str, ...]  # one of these must be in the reason


def _h(name: str, body: str, *reasons: str, head: str = "") -> Hostile:
    return Hostile(name, f"{head}def attend(t):\n{body}{RET}", reasons)


HOSTILE: tuple[Hostile, ...] = (
    # the review's escape: builtins through a vocabulary function's __globals__, then a shell
    _h("globals_of_vocabulary", "    b = previous.__globals__['__builtins__']\n"
       "    b['__import__']('os').system('touch " + MARKER + "')\n", "`.__globals__`"),
    _h("empty_the_blocklist", "    m = first.__globals__['sys'].modules['__main__']\n    m._BLOCKED_EVENTS = ()\n",
       "`.__globals__`", "`._BLOCKED_EVENTS`"),
    # the review's second escape: read a file through the real open, return it in the error
    _h("read_os_release", "    raise ValueError(open('/etc/os-release').read())\n", "name `open`"),
    _h("subclasses_walk", "    for c in ().__class__.__base__.__subclasses__():\n        pass\n", "`.__class__`"),
    _h("generator_frame_walk", "    g = (x for x in [1])\n    f = g.gi_frame.f_back.f_globals\n", "`.gi_frame`"),
    _h("traceback_frame_walk", "    try:\n        1 / 0\n    except Exception as e:\n"
       "        f = e.__traceback__.tb_frame.f_back\n", "`.__traceback__`"),
    _h("rebind_builtins", "    __builtins__ = {'open': 1}\n", "name `__builtins__`"),
    _h("builtins_module", "    import builtins\n    builtins.open('" + MARKER + "', 'w')\n", "import of 'builtins'"),
    _h("getattr_by_string", "    getattr(first, '__glo' + 'bals__')\n", "name `getattr`"),
    _h("format_reads_attributes", "    '{0.__globals__}'.format(first)\n", "attribute `.format`"),
    _h("eval_exec", "    eval(\"__import__('os').system('touch " + MARKER + "')\")\n", "name `eval`"),
    _h("type_makes_class", "    X = type('X', (), {})\n", "name `type`"),
    _h("code_object", "    c = (lambda: 0).__code__\n", "`.__code__`"),
    _h("ctypes_libc", "    ctypes.CDLL(None).system(b'touch " + MARKER + "')\n", "import of 'ctypes'",
       head="import ctypes\n"),
    _h("resource_prlimit", "    resource.prlimit(0, resource.RLIMIT_NPROC, (-1, -1))\n", "import of 'resource'",
       head="import resource\n"),
    _h("fork_bomb", "    while True:\n        os.fork()\n", "import of 'os'", head="import os\n"),
    _h("proc_self_mem", "    with open('/proc/self/mem', 'wb') as f:\n        f.write(b'x')\n",
       "`With` is not allowed", "name `open`"),
    _h("numpy_file_read", "    raise ValueError(str(np.loadtxt('/etc/os-release', dtype=str)))\n",
       "attribute `.loadtxt`", head="import numpy as np\n"),
    _h("numpy_file_write", "    np.zeros(3).tofile('" + MARKER + "')\n", "attribute `.tofile`",
       head="import numpy as np\n"),
    _h("numpy_ctypes", "    p = np.zeros(3).ctypes.data\n", "attribute `.ctypes`", head="import numpy as np\n"),
    _h("socket", "    socket.create_connection(('1.1.1.1', 53))\n", "import of 'socket'", head="import socket\n"),
    _h("class_metaclass", "    class A(metaclass=lambda *a: 0):\n        pass\n", "`ClassDef` is not allowed"),
    _h("relative_import", "    from . import sandbox_child\n", "import from '.'"),
    _h("huge_string", "    s = 'x' * (10 ** 11)\n", "memory limit", "MemoryError"),
    _h("huge_array", "    a = np.ones(10 ** 11)\n", "memory limit", "MemoryError", head="import numpy as np\n"),
    _h("deep_recursion", "    def f(n):\n        return f(n + 1) + 1\n    f(0)\n", "RecursionError"),
    _h("infinite_loop_eating_exceptions", "    while True:\n        try:\n            pass\n"
       "        except BaseException:\n            pass\n", "time limit"),
    # a C loop that never checks for signals: only a kill from outside (SIGXCPU or SIGKILL) stops it
    _h("c_level_spin", "    any(itertools.repeat(0))\n", "killed", head="import itertools\n"),
    _h("huge_pow", "    x = 7 ** (10 ** 10)\n", "time limit", "memory limit", "MemoryError"),
    _h("regex_backtracking", "    re.match(r'(a+)+$', 'a' * 64 + 'b')\n", "time limit", head="import re\n"),
    # issue 17: helpers that copy attributes by name (the update_wrapper escape, and its shape)
    _h("update_wrapper_merges_globals", "    def f():\n        return 0\n"
       "    functools.update_wrapper(f, first, assigned=(), updated=('__globals__',))\n"
       "    eval(\"__import__('os').system('touch " + MARKER + "')\")\n", "attribute `.update_wrapper`",
       head="import functools\n"),
    _h("wraps_by_name", "    w = wraps(first, updated=('__globals__',))\n", "importing `wraps`",
       head="from functools import wraps\n"),
    _h("attrgetter_by_name", "    g = operator.attrgetter('__glo' + 'bals__')(first)\n", "import of 'operator'",
       head="import operator\n"),
    _h("methodcaller_from_functools", "    m = functools.WRAPPER_UPDATES\n", "attribute `.WRAPPER_UPDATES`",
       head="import functools\n"),
    # issue 17: a name rebound in code that never runs makes a later call look program-defined
    _h("dead_branch_rebinding", "    if False:\n        eval = repr\n    eval('1')\n", "cannot be rebound"),
    _h("dead_loop_rebinding", "    for open in []:\n        pass\n    open('" + MARKER + "', 'w')\n",
       "cannot be rebound"),
    _h("walrus_rebinding", "    while 0:\n        (getattr := repr)\n    getattr(first, 'x')\n", "cannot be rebound"),
    _h("parameter_rebinding", "    f = lambda eval=repr: eval('1')\n", "cannot be rebound"),
    _h("api_name_rebinding", "    if False:\n        first = None\n", "cannot be rebound"),
    # issue 17: raw buffers reinterpreted as object references (a read/write primitive)
    _h("ndarray_over_a_buffer", "    a = np.ndarray((1,), np.dtype('O'), b'\\x00' * 8)\n    print(a[0])\n",
       "attribute `.ndarray`", head="import numpy as np\n"),
    _h("frombuffer_objects", "    a = np.frombuffer(b'\\x00' * 8, dtype='O')\n", "attribute `.frombuffer`",
       head="import numpy as np\n"),
    # object dtypes in every place numpy takes a dtype (the review after issue 17)
    _h("object_dtype_by_name", "    d = np.dtype('O')\n", "object dtype", head="import numpy as np\n"),
    _h("astype_object", "    a = np.zeros(2).astype('object')\n", "object dtype", head="import numpy as np\n"),
    _h("dtype_keyword_object", "    a = np.array([1], dtype='O')\n    b = np.ones(2, dtype=object)\n",
       "object dtype", head="import numpy as np\n"),
    _h("dtype_positional_object", "    a = np.zeros(2, 'O')\n    b = np.ones(3).sum(0, 'O')\n", "object dtype",
       head="import numpy as np\n"),
    _h("view_as_objects", "    a = np.zeros(1, 'int64').view('O')\n", "object dtype", head="import numpy as np\n"),
    _h("record_with_an_object_field", "    a = np.zeros(1, dtype='i8,O')\n", "object dtype",
       head="import numpy as np\n"),
    _h("dtype_from_a_variable", "    d = 'O'\n    a = np.ones(2).astype(d)\n", "dtype must be written out",
       head="import numpy as np\n"),
    _h("imported_constructor_object", "    a = z(2, 'O')\n", "object dtype", head="from numpy import zeros as z\n"),
    # randomness and uninitialised memory: explain and compile would build different heads
    _h("numpy_random_generator", "    r = np.random.default_rng(0)\n    x = r.integers(0, 2)\n",
       "random numbers", head="import numpy as np\n"),
    _h("numpy_random_imported", "    x = default_rng(0).random()\n", "random numbers",
       head="from numpy.random import default_rng\n"),
    _h("uninitialised_memory", "    a = np.empty(4)\n", "uninitialised memory", head="import numpy as np\n"),
    # issue 17: a predicate with a mutable default answers one way when scored, another when tabulated
    _h("mutable_default_predicate", "    p = tok(lambda s, seen=[]: seen.append(s) or len(seen) < 3)\n",
       "default argument value must be a literal"),
    # harmless in the sandbox (the write fails there and is caught), harmful anywhere else
    _h("harmful_elsewhere", "    try:\n        f = open('" + MARKER + "', 'a')\n        f.write('ran')\n"
       "        f.close()\n    except Exception:\n        pass\n", "name `open`"),
)

assert len(HOSTILE) >= 20 and len({h.name for h in HOSTILE}) == len(HOSTILE)
