"""Property: no program the checker accepts reaches anything outside the language at run time.

Programs are generated two ways, from a seed: random walks over the language's statement
forms (bindings in reached and dead code, calls of names and attribute chains drawn from a
pool that mixes the allowed with builtins, dunders and by-name helpers), and mutations of the
hostile suite (its bodies moved into dead branches, lambdas, defaults, comprehensions and
nested functions, its names split across aliases). Every generated program aims at the same
harm — ``eval``/``exec``/``open``/``__import__``/``getattr`` on ``MARKER`` — so that one
reaching a real builtin shows up as an audit event in the worker or as the marker file.

The oracle: a program is either refused by the checker, or it runs in the sandbox (Python
layers on) without the audit hook or the restricted import ever refusing it (their reasons
start ``refused:`` where the checker's start ``refused: line``), and the marker stays absent.
"""

from __future__ import annotations

import os
import random

import pytest
from hostile import HOSTILE, MARKER

from headcode.compiler import sandbox as S
from headcode.compiler.check import check_source
from headcode.compiler.tokens import Tokens

TEXTS = [Tokens.synthetic(["<s>", " The", " cat", "."])]
HARM = (f"eval(\"__import__('os').system('touch {MARKER}')\")", f"open({MARKER!r}, 'w')",
        "__import__('os')", "getattr(first, '__globals__')", f"exec('open({MARKER!r}, \"w\")')")
TARGETS = ("eval", "exec", "open", "getattr", "__import__", "setattr", "type", "vars", "globals", "compile",
           "print", "len", "first", "previous", "np", "tok", "repr", "sum")
OBJECTS = ("first", "t", "np", "functools", "re", "(lambda: 0)", "'s'", "tok", "[]", "np.zeros(2)")
ATTRS = ("__globals__", "__builtins__", "update_wrapper", "wraps", "format", "ndarray", "frombuffer",
         "__class__", "zeros", "sum", "join", "upper", "compile", "partial", "reduce", "gi_frame", "view",
         "ctypes", "data", "base", "tolist", "WRAPPER_UPDATES", "__code__", "f_back", "mro")


def _stmt(rng: random.Random, depth: int = 0) -> list[str]:
    kind = rng.randrange(7 if depth < 2 else 4)
    name = rng.choice(TARGETS + ("x", "y", "helper"))
    if kind == 0:
        return [f"{name} = {rng.choice(TARGETS + OBJECTS)}"]
    if kind == 1:
        return [f"z = {rng.choice(OBJECTS)}.{rng.choice(ATTRS)}"]
    if kind == 2:
        return [rng.choice(HARM)]
    if kind == 3:
        return [f"w = {rng.choice(TARGETS)}({rng.choice(OBJECTS)})"]
    head = rng.choice(("if False:", "while 0:", f"for {name} in []:", "try:", f"def {name}(a=1):"))
    body = ["    " + s for _ in range(rng.randint(1, 2)) for s in _stmt(rng, depth + 1)]
    tail = ["except Exception:", "    pass"] if head == "try:" else []
    return [head, *body, *tail]


def random_walk(rng: random.Random) -> str:
    imports = rng.sample(["import functools", "import re", "import numpy as np", "from functools import wraps",
                          "import operator"], rng.randint(0, 2))
    body = [s for _ in range(rng.randint(1, 4)) for s in _stmt(rng)]
    return "\n".join(imports + ["def attend(t):"] + ["    " + s for s in body]
                     + ["    return 0.5 * previous(t, 1) + 0.5 * first(t)", ""])


def mutate(rng: random.Random, source: str) -> str:
    """One hostile program with its body moved somewhere else in the language."""
    head, _, rest = source.partition("def attend(t):\n")
    body = [ln[4:] for ln in rest.splitlines() if ln.startswith("    ") and not ln.startswith("    return")]
    form = rng.randrange(5)
    if form == 0:
        new = ["if False:"] + ["    " + ln for ln in body]
    elif form == 1:
        new = ["def helper(k=0):"] + ["    " + ln for ln in body] + ["    return 0", "helper()"]
    elif form == 2:
        new = ["for i in range(1):"] + ["    " + ln for ln in body]
    elif form == 3:
        new = ["try:"] + ["    " + ln for ln in body] + ["except Exception:", "    pass"]
    else:
        new = [f"f = lambda: {rng.choice(HARM)}", "f()"] + body
    return head + "def attend(t):\n" + "".join("    " + ln + "\n" for ln in new) + \
        "    return 0.5 * previous(t, 1) + 0.5 * first(t)\n"


def _programs(seed: int, n_walks: int) -> list[str]:
    rng = random.Random(seed)
    out = [random_walk(rng) for _ in range(n_walks)]
    out += [mutate(rng, h.source) for h in HOSTILE for _ in range(3)]
    return out


def test_the_generator_makes_programs_the_checker_must_decide():
    progs = _programs(0, 300)
    accepted = [p for p in progs if not check_source(p)]
    assert len(progs) > 400 and 0 < len(accepted) < len(progs) / 2  # both kinds: the property is not vacuous


@pytest.mark.parametrize("seed", [0, 1])
def test_no_accepted_program_reaches_outside_the_language(seed):
    if os.path.exists(MARKER):
        os.remove(MARKER)
    accepted = [p for p in _programs(seed, 300) if not check_source(p)]
    res = S.run_programs(accepted[:24], TEXTS, S.Limits(time_s=0.5, memory_mb=1024), workers=2)
    for p, r in zip(accepted, res):
        assert r.ok or not r.reason.startswith("refused:"), (p, r.reason)
    assert not os.path.exists(MARKER)
