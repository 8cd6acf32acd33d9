"""Acceptance of the column table (issue 21): a new flag on a primitive is one schema entry plus
each kernel's arithmetic, and the generated grid (``test_program_head.primitive_grid``) covers it
in every backend -- a kernel that ignores it fails.

The toy flag, added here only: ``odd`` on ``Pointer`` -- only events at an odd distance from the
row's first real token count. Its schema entry is one field of a ``Pointer`` subclass put in
``spec.PRIMITIVES``; its arithmetic is one function per kernel (the reference's pointer matrix,
the Numba and Triton prefill kernels' key placement, the Numba and Triton decoding steps), each wrapping the real one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba as nb
import numpy as np
import pytest
import torch
import triton
import triton.language as tl
from test_program_head import _batch, _spec, primitive_grid

from headcode.kernels.program_head import backends, naive, numba_cpu, prep, stream_cpu, stream_triton
from headcode.kernels.program_head import spec as S
from headcode.kernels.program_head.stream import LayerProgram

DEV = "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class OddPointer(S.Pointer):
    odd: bool = False  # the toy flag: only events at an odd distance from the row start count


ODD = len(S.SCHEMA.ints)  # where the new column lands: after every column the kernels already read


def _odd(ev: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` events kept at odd distances from each row's start."""
    pos = torch.arange(ev.shape[1], device=ev.device)[None, :]
    return ev & ((pos - start[:, None]) % 2 == 1)


def _naive_pointer(p: OddPointer, r: naive.Row) -> torch.Tensor:
    ev = naive.events(p, r)
    a = naive.anchor(p, _odd(ev, r.start) if p.odd else ev)
    j = a + int(p.shift)
    return naive.one_hot(torch.where((a >= 0) & (j >= r.start[:, None]) & (j <= r.pos[None, :]), j, -1),
                         r.ids.shape[1])


def _prep_pointer(p: OddPointer, pr: prep.Prep) -> torch.Tensor:
    ev = pr.events(p)
    a = naive.anchor(p, _odd(ev, pr.start) if p.odd else ev)
    return torch.where(a >= 0, a + int(p.shift), -1)


REAL_NUMBA_CODES = numba_cpu._pointer_codes


@nb.njit(inline="always")
def _numba_codes(ints, i, s, ev, kok, qok, code):
    if ints[i, ODD] != 0:  # ev[j] is position s + j
        for j in range(ev.shape[0]):
            ev[j] = ev[j] and j % 2 == 1
    REAL_NUMBA_CODES(ints, i, s, ev, kok, qok, code)


REAL_NUMBA_POINTER = stream_cpu._pointer


@nb.njit(inline="always")
def _numba_pointer(prog, j, st, tok, x, ev, kok, qok, o, den):
    ev = ev and (prog.ints[j, ODD] == 0 or (tok[1] - tok[2]) % 2 == 1)
    return REAL_NUMBA_POINTER(prog, j, st, tok, x, ev, kok, qok, o, den)


REAL_TRITON_POINTER = stream_triton._pointer
ODD_COL = tl.constexpr(ODD)


@triton.jit
def _triton_pointer(row, vok_ptr, pend_ptr, seen_ptr, rok_ptr, vi, rb, q, s, ev, kok, qok, vrow, ring0, R, none):
    ev = ev & ((tl.load(row + ODD_COL) == 0) | ((q - s) % 2 == 1))
    return REAL_TRITON_POINTER(row, vok_ptr, pend_ptr, seen_ptr, rok_ptr, vi, rb, q, s, ev, kok, qok, vrow, ring0,
                               R, none)


def _check(backend: str, part: str, cases: list[dict]) -> None:
    """Every case through ``backend``'s ``prefill``, or (``part == "step"``) from a zero state
    stepped in pieces then token by token, against the reference."""
    b = backends.get(backend)
    ids, v, start = _batch(3, T=24)
    for case in cases:
        spec = _spec([dict(case, weight=0.7), dict(kind="pointer", ev_start=True, weight=0.01)])
        ref = naive.program_head_naive(spec, ids, v, start)
        if part == "prefill":
            got = b.prefill(spec, ids.to(DEV), v.to(DEV), start.to(DEV)).cpu()
        else:
            prog = LayerProgram.build([spec], [0])
            state, outs = b.zero_state(prog, 3, v.shape[-1], DEV), []
            for lo, hi in zip([0, 7, *range(15, 24)], [7, *range(15, 25)]):
                out, state = b.step(prog, state, ids[:, lo:hi].to(DEV), v[:, None, lo:hi].to(DEV), start.to(DEV))
                outs.append(out.cpu())
            got = torch.cat(outs, 2)[:, 0]
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=0, msg=f"{backend} {part}: {case}")


def test_a_new_pointer_flag_is_one_schema_entry_plus_each_kernels_arithmetic(monkeypatch):
    before = {c.name: i for i, c in enumerate(S.SCHEMA.ints)}
    monkeypatch.setitem(S.PRIMITIVES, "pointer", OddPointer)          # the one schema entry
    monkeypatch.setattr(S, "SCHEMA", S.Schema(S.PRIMITIVES))
    assert S.SCHEMA.index("odd") == (ODD,) and all(S.SCHEMA.index(n) == (i,) for n, i in before.items())
    cases = [c for c in primitive_grid("pointer") if c.get("odd")][::4]  # the generated grid has the flag
    assert len(cases) >= 8 and {c["shift"] for c in cases} == {-2, 0, 1}

    # the reference's arithmetic: checked against the definition on one case (every event, shift 0)
    monkeypatch.setitem(naive.MATRIX, OddPointer, _naive_pointer)
    ids, v, start = _batch(3, T=24)
    spec = _spec([dict(kind="pointer", ev_tab=S.EVERY, odd=True)])
    got = naive.program_head_naive(spec, ids, v, start)
    for b in range(3):
        s = int(start[b])
        for q in range(s + 1, 24):
            torch.testing.assert_close(got[b, q], v[b, q if (q - s) % 2 else q - 1])

    for backend in ("numba", "triton"):  # kernels without the flag's arithmetic fail the grid
        for part in ("prefill", "step"):
            with pytest.raises(AssertionError):
                _check(backend, part, cases)
    monkeypatch.setitem(prep.KEY_INDEX, OddPointer, _prep_pointer)   # each kernel's arithmetic
    monkeypatch.setattr(numba_cpu, "_pointer_codes", _numba_codes)
    monkeypatch.setattr(numba_cpu, "KERNELS", numba_cpu.compile_kernels())
    monkeypatch.setattr(stream_cpu, "_pointer", _numba_pointer)
    monkeypatch.setattr(stream_cpu, "KERNELS", stream_cpu.compile_kernels())
    monkeypatch.setattr(stream_triton, "_pointer", _triton_pointer)
    for backend in backends.names():
        for part in ("prefill", "step"):
            _check(backend, part, cases)
    assert np.array_equal(_spec(cases[:1]).ints[0, [ODD]], [1])
