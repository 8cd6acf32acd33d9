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
- imports: only ``ALLOWED_IMPORTS``, absolute, no ``*``;
- bindings: what a name holds at run time is decided by the source *anywhere*, reached or
  not, so no binding of any kind (assignment, loop or comprehension target, walrus,
  parameter, ``def``, ``except ... as``, import alias) may take the name of a builtin or of
  the program API — ``if False: eval = repr`` would otherwise make a later ``eval(...)``
  look like a call of a program-defined name. (``import numpy as np`` rebinds ``np`` to the
  module it already is, and is allowed.) Default argument values are literals only: a
  mutable default is state that survives from one call to the next, so a predicate with
  one answers differently when explain scores it and when compile tabulates it;
- dtypes: wherever numpy takes a dtype (``dtype=``, ``astype``, ``view``, ``np.dtype``, and
  the positional places numpy's own signatures give it: ``np.zeros(3, 'O')``, ``a.sum(0, 'O')``,
  ``np.add.reduce(a, 0, 'O')``), the value must be a number or text type written out
  (``np.float32``, ``'int64'``, ``bool``, ``str``): object dtypes (``'O'``, ``'object'``,
  ``object``, ``'i8,O'``), records, raw bytes and dtypes computed at run time are refused. A
  numpy function reached through an alias the checker cannot follow (``z = np.zeros``) still
  takes a positional dtype unchecked: numpy itself refuses to reinterpret bytes as references,
  and the raw-memory constructors are not in the language;
- determinism: randomness (``np.random``) and uninitialised memory (``np.empty``) are not in
  the language: explain and compile run a program in two processes and must build one head.

What a program may call is a positive list, ``compiler/language.py`` (how it was chosen is
written there).

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
import re
from collections.abc import Iterable

from headcode.compiler.language import (  # noqa: F401 - re-exported: the language's lists
    ALLOWED_IMPORTS,
    BUILTIN_NAMES,
    DENIED_METHODS,
    DTYPE_BUILTINS,
    DTYPE_KINDS,
    NONDETERMINISTIC,
    NUMPY_TYPES,
    SAFE_BUILTINS,
    allowed_attributes,
    dtype_positions,
)
from headcode.compiler.namespace import namespace

DENIED_ATTRIBUTES = DENIED_METHODS

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


def api_names() -> frozenset[str]:
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


def _binding_names(n: ast.AST) -> Iterable[tuple[str, ast.AST]]:
    """(name, node) for every name ``n`` binds (imports: see ``_rebinding_reasons``)."""
    if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
        yield n.id, n
    elif isinstance(n, ast.arg):
        yield n.arg, n
    elif isinstance(n, ast.FunctionDef):
        yield n.name, n
    elif isinstance(n, ast.ExceptHandler) and n.name:
        yield n.name, n


_MODULE_ALIASES = {"np": "numpy", "numpy": "numpy"}  # api names that *are* a module


def _rebinding_reasons(tree: ast.AST, reserved: frozenset[str]) -> Iterable[str]:
    for parent in ast.walk(tree):
        if isinstance(parent, ast.Import):  # `import numpy as np` binds np to numpy: allowed
            for a in parent.names:
                bound = a.asname or a.name.split(".")[0]
                if bound in reserved and _MODULE_ALIASES.get(bound) != a.name:
                    yield f"{_where(parent)}: `import {a.name} as {bound}` rebinds `{bound}`, a name of the language"
            continue
        if isinstance(parent, ast.ImportFrom):
            for a in parent.names:
                bound = a.asname or a.name
                if bound in reserved:
                    yield f"{_where(parent)}: importing `{a.name}` as `{bound}` rebinds a name of the language"
            continue
        for name, node in _binding_names(parent):
            if name in reserved:
                yield (f"{_where(node)}: `{name}` is a builtin or program-API name and cannot be rebound "
                       "(choose another name)")


def _literal(n: ast.AST) -> bool:
    if isinstance(n, ast.Constant):
        return True
    if isinstance(n, ast.UnaryOp) and isinstance(n.op, (ast.USub, ast.UAdd)):
        return _literal(n.operand)
    return isinstance(n, ast.Tuple) and all(_literal(e) for e in n.elts)


def _default_reasons(tree: ast.AST) -> Iterable[str]:
    for n in ast.walk(tree):
        if isinstance(n, ast.arguments):
            for d in [*n.defaults, *(d for d in n.kw_defaults if d is not None)]:
                if not _literal(d):
                    yield (f"{_where(d)}: a default argument value must be a literal (a mutable default "
                           "keeps state from one call to the next)")


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
            yield f"{_where(n)}: attribute `.{n.attr}` is not allowed ({_why_not(n.attr)})"
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


def _why_not(attr: str) -> str:
    if attr in NONDETERMINISTIC:
        return (f"{NONDETERMINISTIC[attr]}: a program must answer the same in every run, since explain "
                "and compile run it in two processes and must build the same head")
    return "not part of the program API"


def _imported(tree: ast.AST) -> tuple[dict[str, str], dict[str, str]]:
    """``(modules, numpy functions)``: names bound by an import and by nothing else, so they hold
    what was imported: ``import numpy as np`` -> ``{"np": "numpy"}``, ``from numpy import zeros as
    z`` -> ``{"z": "zeros"}``."""
    modules: dict[str, str] = {}
    functions: dict[str, str] = {}
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            modules.update({a.asname or a.name: a.name for a in n.names if "." not in a.name})
        elif isinstance(n, ast.ImportFrom) and n.module == "numpy":
            functions.update({a.asname or a.name: a.name for a in n.names})
    other = {name for parent in ast.walk(tree) for name, _ in _binding_names(parent)}
    return ({k: v for k, v in modules.items() if k not in other} | {"np": "numpy", "numpy": "numpy"},
            {k: v for k, v in functions.items() if k not in other})


def _dtype_reason(v: ast.AST, where: str, modules: set[str]) -> str | None:
    """Why ``v``, in a dtype position, is refused (``None``: a number or text type written out)."""
    if isinstance(v, ast.Constant) and v.value is None:
        return None
    bad = None
    if isinstance(v, ast.Constant) and isinstance(v.value, str) and len(v.value) <= 64:
        import numpy as np

        try:
            d = np.dtype(v.value)  # numpy's parser of dtype strings: runs no program code
        except Exception:  # noqa: BLE001 - not a dtype: numpy refuses it when the program runs, too
            return None
        if d.hasobject:
            bad = "an object dtype"
        elif d.kind not in DTYPE_KINDS or d.fields is not None or d.subdtype is not None:
            bad = f"dtype {v.value!r} (records, raw bytes, dates)"
        else:
            return None
    elif isinstance(v, ast.Name) and v.id in DTYPE_BUILTINS:
        return None
    elif isinstance(v, ast.Attribute) and isinstance(v.value, ast.Name) and v.value.id in modules:
        if v.attr in NUMPY_TYPES:
            return None
        bad = "an object dtype" if v.attr.startswith("object") else None
    elif isinstance(v, ast.Name) and v.id == "object":
        bad = "an object dtype"
    if bad:
        return f"{where}: {bad} is not allowed (object arrays hold references that raw memory could forge)"
    return (f"{where}: a dtype must be written out as a number or text type (np.float32, 'int64', bool, "
            f"str), not computed: `{ast.unparse(v)[:40]}`")


def _dtype_reasons(tree: ast.AST) -> Iterable[str]:
    """A dtype (keyword ``dtype=``, or the positional place numpy gives it: ``astype``, ``view``,
    ``np.dtype``, ``np.zeros(3, 'O')``, ``a.sum(0, 'O')``) must be a number or text type written
    out: object dtypes, records and computed dtypes are refused."""
    functions, methods = dtype_positions()
    modules, imported = _imported(tree)
    numpy = {k for k, v in modules.items() if v == "numpy"}
    for n in ast.walk(tree):
        if not isinstance(n, ast.Call):
            continue
        f, place = n.func, None
        if isinstance(f, ast.Attribute):
            module = modules.get(f.value.id) if isinstance(f.value, ast.Name) else None
            # numpy's functions; no other allowed module takes a dtype; anything else may be an array
            place = functions.get(f.attr) if module == "numpy" else None if module else methods.get(f.attr)
        elif isinstance(f, ast.Name) and f.id in imported:
            place = functions.get(imported[f.id])
        where = f"{_where(n)}: `{ast.unparse(f)[:40]}`"
        for kw in n.keywords:
            if kw.arg == "dtype" and (r := _dtype_reason(kw.value, where, numpy)):
                yield r
            elif kw.arg is None and place is not None:
                yield f"{where}: `**` arguments are not allowed here (its dtype could not be checked)"
        if place is None:
            continue
        for i, a in enumerate(n.args):
            if isinstance(a, ast.Starred):
                yield f"{where}: `*` arguments are not allowed here (its dtype could not be checked)"
                break
            if i == place and (r := _dtype_reason(a, where, numpy)):
                yield r


def _alias_reasons(n: ast.AST, a: ast.alias, attrs: frozenset[str], path: list[str]) -> Iterable[str]:
    if a.name == "*":
        yield f"{_where(n)}: `import *` is not allowed"
        return
    for part in path:
        if part.startswith("_") or part not in attrs:
            yield f"{_where(n)}: importing `{part}` is not allowed ({_why_not(part)})"
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
    api = api_names()
    known = SAFE_BUILTINS | api | _bound(tree)
    attrs = allowed_attributes()
    reasons.extend(_rebinding_reasons(tree, BUILTIN_NAMES | api))
    reasons.extend(_default_reasons(tree))
    reasons.extend(_dtype_reasons(tree))
    for n in ast.walk(tree):
        reasons.extend(_node_reasons(n, known, attrs))
    def line(r: str) -> int:
        m = re.match(r"line (\d+):", r)
        return int(m.group(1)) if m else 0

    return sorted(dict.fromkeys(reasons), key=line)


def safe_builtins() -> dict[str, object]:
    """The builtins a program runs with (in the sandbox): ``SAFE_BUILTINS`` only."""
    return {k: getattr(builtins, k) for k in SAFE_BUILTINS if hasattr(builtins, k)}


def _allowed_import(name: str, globals: object = None, locals: object = None, fromlist: object = (),
                    level: int = 0) -> object:
    if level != 0 or name.split(".")[0] not in ALLOWED_IMPORTS:
        raise ImportError(f"import of {name!r} is not allowed (allowed: {', '.join(ALLOWED_IMPORTS)})")
    return builtins.__import__(name, globals, locals, fromlist, level)


def program_builtins() -> dict[str, object]:
    """``safe_builtins`` plus an ``__import__`` that admits ``ALLOWED_IMPORTS`` only: what a
    checked program runs with wherever it runs (the sandbox adds its audit hook)."""
    return {**safe_builtins(), "__import__": _allowed_import}

