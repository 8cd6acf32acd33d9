"""What a program may call: a positive list, module by module.

How the list was chosen. We read every program the project has seen — the catalogue
(``benchmarks/catalogue.py``), the offline search's bases, the prompts' examples, the test
programs and a few hundred language-model replies — and listed the module members they
call. We kept a member only if it computes on values it is given: numeric and array
functions, iterator tools, regular expressions, string constants. We left out every member
that reads or writes attributes *by name* (``functools.update_wrapper``/``wraps``,
``operator.attrgetter``/``methodcaller``, ``getattr``), reinterprets raw memory
(``np.ndarray(buffer=...)``, ``np.frombuffer``, ``np.lib.stride_tricks``, ``np.recarray``),
touches files or the process (``np.load``/``save``/``memmap``, ``np.seterrcall``), or builds
classes or code (``collections.namedtuple``), and every member whose answer changes from one
run to the next (``NONDETERMINISTIC``: ``np.random``, ``np.empty``): explain and compile run a
program in two fresh processes, and both must build the same head. Methods of the value types a program holds
(``str``, ``list``, ``dict``, arrays, ``Tokens``, patterns, predicates, regex matches) are
allowed by name, less ``DENIED_METHODS``.

Attribute names are checked without knowing the object's type (the check is static), so
the list is one set of names: a name is allowed if some allowed object offers it. A name
that is harmless on one object and harmful on another is therefore left out everywhere.
"""

from __future__ import annotations

import builtins
import collections
import dataclasses
import functools
import itertools
import math
import re

ALLOWED_IMPORTS = ("numpy", "math", "re", "itertools", "collections", "functools", "string")

SAFE_BUILTINS = frozenset("""
    abs all any bool callable chr dict divmod enumerate filter float frozenset int isinstance iter
    len list map max min next ord pow print range repr reversed round set slice sorted str sum
    tuple zip True False None BaseException Exception ValueError TypeError IndexError KeyError ZeroDivisionError
    ArithmeticError LookupError RuntimeError StopIteration
""".split())

# every name the interpreter's builtins module has: none may be rebound by a program
BUILTIN_NAMES = frozenset(dir(builtins))

NUMPY = frozenset("""
    array asarray zeros ones full zeros_like ones_like full_like arange linspace eye
    identity tri tril triu tril_indices triu_indices diag diagonal diag_indices fill_diagonal outer inner
    dot matmul einsum where nonzero flatnonzero argwhere count_nonzero searchsorted unique sort argsort
    concatenate stack vstack hstack column_stack append repeat tile roll flip fliplr flipud broadcast_to
    reshape ravel transpose swapaxes expand_dims squeeze take take_along_axis put_along_axis choose
    clip cumsum cumprod diff sum prod mean median std var max min amax amin argmax argmin ptp
    maximum minimum fmax fmin exp exp2 expm1 log log2 log10 log1p sqrt square power abs absolute sign
    floor ceil round rint trunc add subtract multiply divide true_divide floor_divide mod remainder
    negative reciprocal isin isnan isinf isfinite nan_to_num logical_and logical_or logical_not
    logical_xor any all allclose isclose array_equal equal not_equal less less_equal greater
    greater_equal bincount histogram digitize interp convolve cumulative_sum sin cos tanh arctan
    float16 float32 float64 int8 int16 int32 int64 uint8 uint16 uint32 uint64 bool_ intp
    inf nan pi e newaxis linalg norm
""".split())
# the numpy scalar types a program may name as a dtype (``np.float32``), and the builtins (``bool``)
NUMPY_TYPES = frozenset("float16 float32 float64 int8 int16 int32 int64 uint8 uint16 uint32 uint64 bool_ intp".split())
DTYPE_BUILTINS = frozenset("bool int float complex str".split())
# kinds of a dtype written as a string ('int64', '<f4', 'U8'): numbers and text; no objects
# ('O', 'object', 'i8,O'), records or raw bytes ('V8'), which can hold or forge references
DTYPE_KINDS = "biufcUS"
MATH = frozenset(n for n in dir(math) if not n.startswith("_"))
RE = frozenset("""
    compile search match fullmatch findall finditer sub subn split escape
    I IGNORECASE M MULTILINE S DOTALL X VERBOSE A ASCII
""".split())
ITERTOOLS = frozenset(n for n in dir(itertools) if not n.startswith("_")) | {"from_iterable"}
COLLECTIONS = frozenset("Counter OrderedDict defaultdict deque".split())
FUNCTOOLS = frozenset("reduce partial lru_cache cache cmp_to_key".split())
STRING = frozenset("""ascii_letters ascii_lowercase ascii_uppercase digits hexdigits octdigits
    punctuation printable whitespace capwords""".split())

# never allowed: what makes a program answer differently from one run to the next. Explain and
# compile run a program in two processes and must build the same head (randomness, uninitialised
# memory, whose bytes depend on the process's history and address layout)
NONDETERMINISTIC = {
    **dict.fromkeys("random default_rng Generator RandomState seed rand randn randint shuffle permutation "
                    "choice bit_generator".split(), "random numbers"),
    **dict.fromkeys("empty empty_like".split(), "uninitialised memory"),
}

# never allowed, whatever object offers them: attribute-by-name helpers, memory and file
# access, code and frame objects, printing and error hooks, string formatting by attribute
DENIED_METHODS = frozenset("""
    format format_map Formatter vformat get_field update_wrapper wraps WRAPPER_ASSIGNMENTS
    WRAPPER_UPDATES attrgetter itemgetter methodcaller getfield setfield data base ctypes ctypeslib
    tofile dump dumps load loads save savez savez_compressed savetxt loadtxt genfromtxt fromfile
    frombuffer fromstring from_dlpack memmap ndarray recarray record rec char lib setflags
    gi_frame gi_code gi_yieldfrom cr_frame cr_code ag_frame ag_code f_back f_globals f_locals
    f_builtins f_code tb_frame tb_next co_code mro register seterrcall geterrcall exec eval open
    system set_printoptions setbufsize set_string_function namedtuple resolve_dtypes
""".split())


def _methods(obj: object) -> set[str]:
    return {n for n in dir(obj) if not n.startswith("_")}


@functools.lru_cache(maxsize=1)
def allowed_attributes() -> frozenset[str]:
    """Every attribute name a program may read: the modules' listed members and the public
    methods of the value types, less ``DENIED_METHODS``."""
    import numpy as np

    from headcode.compiler import pattern, predicates
    from headcode.compiler.tokens import Tokens

    values: list[object] = [Tokens, pattern.Pattern, predicates.Pred, np.ndarray, np.generic, np.dtype,
                            np.ufunc, re.Pattern, re.Match, collections.Counter,
                            collections.deque, collections.defaultdict, collections.OrderedDict,
                            str, bytes, list, dict, set, frozenset, tuple, int, float, complex, range,
                            slice, bool]
    names = set(NUMPY | MATH | RE | ITERTOOLS | COLLECTIONS | FUNCTOOLS | STRING)
    names |= {"norm", "solve", "inv"}  # np.linalg
    for v in values:
        names |= _methods(v)
    names |= {f.name for f in dataclasses.fields(Tokens)}  # fields without defaults are not in dir()
    return frozenset(names - DENIED_METHODS - set(NONDETERMINISTIC))


@functools.lru_cache(maxsize=1)
def dtype_positions() -> tuple[dict[str, int], dict[str, int]]:
    """Where a call takes its dtype positionally: ``(functions, methods)``, name -> index of the
    positional argument. ``functions``: numpy's module functions (``np.zeros(3, 'O')``: 1);
    ``methods``: methods of arrays, numpy scalars and ufuncs (``a.sum(0, 'O')``: 1,
    ``np.add.reduce(a, 0, 'O')``: 2). Read from numpy's own signatures, plus ``np.dtype``,
    ``astype`` and ``view`` (first argument)."""
    import inspect

    import numpy as np

    def position(fn: object, skip_self: bool) -> int | None:
        try:
            params = list(inspect.signature(fn).parameters.values())  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return None
        params = params[1:] if skip_self else params
        names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        return names.index("dtype") if "dtype" in names else None

    functions = {"dtype": 0}
    for name in NUMPY:
        k = position(getattr(np, name, None), False)
        if k is not None:
            functions[name] = k
    methods = {"astype": 0, "view": 0}
    for kind, skip in ((np.ndarray, True), (np.generic, True), (np.add, False)):
        for name in dir(kind):
            k = None if name.startswith("_") else position(getattr(kind, name), skip)
            if k is not None:
                methods.setdefault(name, k)
    return functions, methods
