"""Check a program's source from outside, before any of it runs: an AST allow-list.

``check_source(source) -> list[str]`` lists every reason the source is refused (empty: it may
run in the sandbox). Parsing is not executing: the host can check untrusted source safely.

The rules (an allow-list at every level, so a construct nobody thought of is refused):

- node types: functions (``def``, ``lambda``), assignments, ``if``/``for``/``while``,
  ``try``/``except``, expressions, comprehensions, f-strings. No classes, ``global``,
  ``nonlocal``, ``yield``, ``async``, ``with``, ``match``, ``del``;
- names: no name starts with ``_`` (no ``__builtins__``, ``__import__``, ``__class__``...);
  a name read must be bound by the program, be a safe builtin (``SAFE_BUILTINS``: no
  ``getattr``, ``open``, ``eval``, ``type``, ``vars``...) or belong to the program API;
- attributes: never ``_``-prefixed, never assigned or deleted, and only names in
  ``allowed_attributes()``: the public attributes of the program API (``Tokens``,
  patterns, predicates), numpy (a few submodules) and the allowed modules, and of the
  builtin value types; minus ``DENIED_ATTRIBUTES`` (file I/O such as ``np.save``,
  ``ctypes``, ``str.format`` which reads attributes by name, frame and code objects);
- imports: only ``ALLOWED_IMPORTS``, absolute, no ``*``.

We wrote this rather than use RestrictedPython. RestrictedPython 9.0 supports Python 3.11
(checked with ``pip download``), and it refuses ``_`` names and a few frame attributes, but
its compile step accepts ``import os; os.system(...)``, ``np.save(...)``,
``'{0.__globals__}'.format(f)`` and ``getattr(f, '__globals__')`` (checked): it relies on
guards (``_getattr_``, a guarded ``__import__``) that run *inside* the interpreter that runs
the program. Here the program runs in another process under OS limits, and what the host
needs is a static allow-list of names, attributes and imports, decided before anything runs.
"""

from __future__ import annotations

import ast
import builtins
import collections
import dataclasses
import functools
import itertools
import math
import re
import string
import types
from collections.abc import Iterable

ALLOWED_IMPORTS = ("numpy", "math", "re", "itertools", "collections", "functools", "string")

SAFE_BUILTINS = frozenset("""
    abs all any bool callable chr dict divmod enumerate filter float frozenset int isinstance iter
    len list map max min next ord pow print range repr reversed round set slice sorted str sum
    tuple zip True False None BaseException Exception ValueError TypeError IndexError KeyError ZeroDivisionError
    ArithmeticError LookupError RuntimeError StopIteration
""".split())

# attribute names refused even where some allowed object has them
DENIED_ATTRIBUTES = frozenset("""
    format format_map Formatter vformat get_field load loads save savez savez_compressed savetxt
    loadtxt genfromtxt fromfile tofile dump dumps memmap fromregex DataSource ctypes ctypeslib cffi
    capsule lib testing f2py distutils os sys show_config show_runtime info source lookfor who
    get_include gi_frame gi_code gi_yieldfrom cr_frame cr_code ag_frame ag_code f_back f_globals
    f_locals f_builtins f_code tb_frame tb_next co_code mro register seterrcall geterrcall
    exec eval open system set_printoptions setbufsize set_string_function
""".split())

_ALLOWED_NODES = (
    ast.Module, ast.FunctionDef, ast.arguments, ast.arg, ast.Return, ast.Assign, ast.AugAssign,
    ast.AnnAssign, ast.For, ast.While, ast.If, ast.Expr, ast.Pass, ast.Break, ast.Continue,
    ast.Import, ast.ImportFrom, ast.alias, ast.Try, ast.ExceptHandler, ast.Raise, ast.Assert,
    ast.BoolOp, ast.BinOp, ast.UnaryOp, ast.Lambda, ast.IfExp, ast.Dict, ast.Set, ast.ListComp,
    ast.SetComp, ast.DictComp, ast.GeneratorExp, ast.comprehension, ast.Compare, ast.Call,
    ast.keyword, ast.Constant, ast.Attribute, ast.Subscript, ast.Starred, ast.Name, ast.List,
    ast.Tuple, ast.Slice, ast.NamedExpr, ast.JoinedStr, ast.FormattedValue,
    ast.Load, ast.Store, ast.boolop, ast.operator, ast.unaryop, ast.cmpop,
)


def _public(obj: object) -> set[str]:
    """Public attribute names of ``obj`` whose values are not modules (modules are gates to
    everything they import: ``re.enum.sys``)."""
    out = set()
    d = getattr(obj, "__dict__", {})
    for name in dir(obj):
        if name.startswith("_"):
            continue
        if isinstance(obj, types.ModuleType):
            v = d.get(name)  # a lazily loaded numpy submodule is not in __dict__: skip it
            if v is None or isinstance(v, types.ModuleType):
                continue
        out.add(name)
    return out


@functools.lru_cache(maxsize=1)
def allowed_attributes() -> frozenset[str]:
    import numpy as np

    from headcode.compiler import pattern, predicates
    from headcode.runtime.text.tokens import Tokens

    objs: list[object] = [Tokens, pattern.Pattern, predicates.Pred, np, np.ndarray, np.generic, np.dtype,
                          np.ufunc, np.random, np.random.Generator, np.linalg, np.fft, math, re,
                          re.Pattern, re.Match, itertools, functools, collections, collections.Counter,
                          collections.deque, collections.defaultdict, collections.OrderedDict, string,
                          str, bytes, list, dict, set, frozenset, tuple, int, float, complex, range,
                          slice, bool]
    names = set().union(*(_public(o) for o in objs)) | {"random", "linalg", "fft"}
    names |= {f.name for f in dataclasses.fields(Tokens)}  # fields without defaults are not in dir()
    return frozenset(names - DENIED_ATTRIBUTES)


def api_names() -> frozenset[str]:
    from headcode.compiler.program import namespace

    return frozenset(namespace())


def _bound(tree: ast.AST) -> set[str]:
    """Every name the program binds anywhere (assignments, arguments, defs, imports, loops)."""
    out: set[str] = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
            out.add(n.id)
        elif isinstance(n, ast.arg):
            out.add(n.arg)
        elif isinstance(n, ast.FunctionDef):
            out.add(n.name)
        elif isinstance(n, ast.alias):
            out.add((n.asname or n.name).split(".")[0])
        elif isinstance(n, ast.ExceptHandler) and n.name:
            out.add(n.name)
    return out


def _where(n: ast.AST) -> str:
    return f"line {getattr(n, 'lineno', '?')}"


def _node_reasons(n: ast.AST, known: set[str], attrs: frozenset[str]) -> Iterable[str]:
    if not isinstance(n, _ALLOWED_NODES):
        yield f"{_where(n)}: `{type(n).__name__}` is not allowed in a program"
    elif isinstance(n, ast.Name):
        if n.id.startswith("_"):
            yield f"{_where(n)}: name `{n.id}` is not allowed (names starting with `_`)"
        elif isinstance(n.ctx, ast.Load) and n.id not in known:
            yield f"{_where(n)}: name `{n.id}` is not allowed (not a safe builtin, not in the program API, not defined)"
    elif isinstance(n, ast.Attribute):
        if n.attr.startswith("_"):
            yield f"{_where(n)}: attribute `.{n.attr}` is not allowed (attributes starting with `_`)"
        elif n.attr not in attrs:
            yield f"{_where(n)}: attribute `.{n.attr}` is not allowed (not part of the program API)"
        if not isinstance(n.ctx, ast.Load):
            yield f"{_where(n)}: assigning or deleting attributes (`.{n.attr} = ...`) is not allowed"
    elif isinstance(n, ast.Import):
        for a in n.names:
            if a.name.split(".")[0] not in ALLOWED_IMPORTS:
                yield f"{_where(n)}: import of {a.name!r} is not allowed (allowed: {', '.join(ALLOWED_IMPORTS)})"
            yield from _alias_reasons(n, a, attrs, a.name.split(".")[1:])
    elif isinstance(n, ast.ImportFrom):
        mod = n.module or ""
        if n.level or mod.split(".")[0] not in ALLOWED_IMPORTS:
            yield f"{_where(n)}: import from {'.' * n.level + mod!r} is not allowed (allowed: {', '.join(ALLOWED_IMPORTS)})"
        for a in n.names:
            yield from _alias_reasons(n, a, attrs, mod.split(".")[1:] + [a.name])
    elif isinstance(n, ast.FunctionDef):
        if n.decorator_list or n.name.startswith("_"):
            yield f"{_where(n)}: function `{n.name}`: decorators and names starting with `_` are not allowed"
    elif isinstance(n, ast.ExceptHandler) and n.name and n.name.startswith("_"):
        yield f"{_where(n)}: name `{n.name}` is not allowed (names starting with `_`)"


def _alias_reasons(n: ast.AST, a: ast.alias, attrs: frozenset[str], path: list[str]) -> Iterable[str]:
    if a.name == "*":
        yield f"{_where(n)}: `import *` is not allowed"
        return
    for part in path:
        if part.startswith("_") or part not in attrs:
            yield f"{_where(n)}: importing `{part}` is not allowed (not part of the program API)"
    if a.asname and a.asname.startswith("_"):
        yield f"{_where(n)}: name `{a.asname}` is not allowed (names starting with `_`)"


def check_source(source: str, max_chars: int = 200_000) -> list[str]:
    """Every reason ``source`` may not run (empty list: it may run in the sandbox)."""
    if not isinstance(source, str):
        return [f"a program is source text, got {type(source).__name__}"]
    if len(source) > max_chars:
        return [f"program source is {len(source)} characters long, more than {max_chars}"]
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        return [f"SyntaxError: line {e.lineno}: {e.msg}"]
    except (ValueError, RecursionError, MemoryError) as e:
        return [f"source cannot be parsed: {type(e).__name__}: {e}"[:200]]
    reasons = []
    if not any(isinstance(n, ast.FunctionDef) for n in tree.body):
        reasons.append("program source defines no function (expected `def attend(t): ...`)")
    known = SAFE_BUILTINS | api_names() | _bound(tree)
    attrs = allowed_attributes()
    for n in ast.walk(tree):
        reasons.extend(_node_reasons(n, known, attrs))
    def line(r: str) -> int:
        m = re.match(r"line (\d+):", r)
        return int(m.group(1)) if m else 0

    return sorted(dict.fromkeys(reasons), key=line)


def safe_builtins() -> dict[str, object]:
    """The builtins a program runs with (in the sandbox): ``SAFE_BUILTINS`` only."""
    return {k: getattr(builtins, k) for k in SAFE_BUILTINS if hasattr(builtins, k)}


assert set(ALLOWED_IMPORTS) == {m.__name__ for m in (math, re, itertools, collections, functools, string)} | {"numpy"}
