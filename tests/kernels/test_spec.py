"""The typed primitives and their column table (``kernels/program_head/spec.py``): a term is
built typed (a misspelt field is an error, never a default), the columns follow the dataclasses,
a stale Numba cache is dropped, and no function outside Triton kernels takes more than 12
parameters."""

from __future__ import annotations

import ast
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

from headcode.kernels.program_head import spec as S
from headcode.kernels.program_head import stream_cpu

ROOT = Path(__file__).resolve().parents[2]


def test_a_misspelt_field_is_an_error_not_a_default():
    with pytest.raises(TypeError, match="shfit"):
        S.KernelTerm.of("pointer", shfit=-1)
    with pytest.raises(TypeError, match="rate"):
        S.KernelTerm.of("pointer", rate=0.5)  # a scan's field on a pointer
    with pytest.raises(ValueError, match="unknown primitive kind"):
        S.KernelTerm.of("pointr")
    with pytest.raises(ValueError, match="rate 1.5"):
        S.HeadSpec.build([S.KernelTerm(S.Scan(rate=1.5))], np.zeros((0, 4), np.uint8))


def test_the_columns_follow_the_dataclasses():
    names = {c.name for c in S.SCHEMA.ints + S.SCHEMA.reals}
    for cls in S.PRIMITIVES.values():
        for f in fields(cls):
            assert f.name in names, f"{cls.__name__}.{f.name} has no column"
            assert S.SCHEMA.is_real(f.name) == (f.type in (float, "float"))
    tables = np.zeros((3, 5), np.uint8)
    spec = S.HeadSpec.build([S.KernelTerm(S.Pointer(ev_tab=2, shift=-3, earliest=True), 0.5, key_tab=1),
                             S.KernelTerm(S.Scan(rate=0.25))], tables)
    assert spec.col("shift").tolist() == [-3, 0] and spec.col("earliest").tolist() == [1, 0]
    assert spec.col("rate").tolist() == [1.0, 0.25] and spec.col("key_tab").tolist() == [1, -1]
    assert spec.col("kind").tolist() == [S.POINTER, S.SCAN] and spec.weights.tolist() == [0.5, 1.0]
    moved = S.renumber_tables(spec.terms[0], 4)
    assert (moved.prim.ev_tab, moved.key_tab, moved.query_tab) == (6, 5, -1)


class _Cache:
    def __init__(self):
        self.flushed = 0

    def flush(self):
        self.flushed += 1


class _Dispatcher:
    def __init__(self, value=None):
        self._cache, self.value = _Cache(), value

    def __call__(self):
        return self.value


def test_a_numba_cache_compiled_under_another_column_table_is_dropped():
    layout, kernel = _Dispatcher(stream_cpu.LAYOUT), _Dispatcher()
    stream_cpu.fresh_cache(layout, stream_cpu.LAYOUT, (kernel,))
    assert kernel._cache.flushed == 0
    stale = _Dispatcher(tuple(reversed(stream_cpu.LAYOUT)))
    stream_cpu.fresh_cache(stale, stream_cpu.LAYOUT, (kernel,))
    assert kernel._cache.flushed == 1 and stale._cache.flushed == 1


def test_no_function_outside_triton_kernels_takes_more_than_12_parameters():
    over = []
    for folder in ("kernels", "compiler"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                a = node.args
                n = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs) + (a.vararg is not None) + (a.kwarg is not None)
                n -= bool(a.args) and a.args[0].arg in ("self", "cls")
                if n > 12 and not any("triton" in ast.unparse(d) for d in node.decorator_list):
                    over.append(f"{path.relative_to(ROOT)}:{node.name} ({n})")
    assert not over, over
