"""The backends that run head programs, in one registry that launchers and commands query.

Each backend is a module with the same three functions (flash-linear-attention's
``fused_recurrent`` shape: state in, state out):

- ``prefill(spec, ids [B, T], v [B, T, D], start [B] | None, n_q | None) -> [B, n_q, D]``: one
  head over a whole sequence (the last ``n_q`` query rows);
- ``zero_state(program, batch, dim, device) -> state``: the state before the first token of a
  layer's ``stream.LayerProgram``;
- ``step(program, state, ids [B, n], v [B, G, n, D], start [B]) -> (out [B, H, n, D], state)``:
  the next ``n`` tokens. The state given is consumed (the kernels advance it in place: a step
  costs O(terms * D), never a copy of the state); keep using the one returned.

A whole sequence is one ``step`` from a zero state. Importing this module imports no backend
(the command line asks for ``names()`` before torch is loaded).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any

PACKAGE = "headcode.kernels.program_head"


@dataclass(frozen=True)
class Backend:
    """A backend: its name (``--backend``), one line for readers, and the module that implements
    ``prefill``, ``zero_state`` and ``step``."""

    name: str
    summary: str
    module: str

    def load(self) -> ModuleType:
        return importlib.import_module(f"{PACKAGE}.{self.module}")

    def prefill(self, spec: Any, ids: Any, v: Any, start: Any = None, n_q: int | None = None) -> Any:
        return self.load().prefill(spec, ids, v, start, n_q)

    def zero_state(self, program: Any, batch: int, dim: int, device: Any = None) -> Any:
        return self.load().zero_state(program, batch, dim, device)

    def step(self, program: Any, state: Any, ids: Any, v: Any, start: Any) -> tuple[Any, Any]:
        return self.load().step(program, state, ids, v, start)


BACKENDS: dict[str, Backend] = {b.name: b for b in (
    Backend("numba", "Numba on the CPU: decoding states, a whole sequence from a zero state", "stream"),
    Backend("triton", "Triton on a GPU (CPU under TRITON_INTERPRET=1): chunked scans and decoding states",
            "stream_triton"),
    Backend("torch", "the dense float64 torch reference, O(T^2): for checking, not for serving", "naive"),
)}
DEFAULT = "numba"


def names() -> tuple[str, ...]:
    """Every backend's name, the default first."""
    return tuple(BACKENDS)


def get(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}: use one of {', '.join(BACKENDS)}") from None
