"""The selector registry: one ``Selector`` per kind, each defined once in its own file.

A selector's definition is everything the rest of headcode derives from it:

- ``kind`` (its name in the IR and in plan files) and ``meaning`` (one line);
- ``functions``: the program-language functions that build it (``previous``, ``current``, ...);
- ``reference``: its dense scores ``[T, T]`` on one text (numpy, read straight off the
  definition; ``compiler.pattern.evaluate`` applies key restriction, query gate and row
  normalisation);
- ``lower``: the kernel primitive it runs as, a typed ``Pointer``/``Scan``/``SameToken``/
  ``Induction`` (``kernels/program_head/spec.py``) made from a lowered term's parameters and
  table rows — the torch, Numba and Triton kernels and their decoding states run it from
  there, so a selector needs no kernel code of its own;
- ``params`` (which of ``k``, ``rate``, ``strict`` it reads), ``problems`` (every reason its
  parameters are out of range), ``phrase`` (English) and ``key_words`` (how a key restriction
  reads);
- ``search``: the expressions the offline search tries for it (its entries in the dictionary);
- ``examples``: program bodies that use it; the test matrices (reference vs compiled vs Numba
  vs Triton, causality, English) are generated from these, and a selector without examples
  fails a test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from headcode.compiler.predicates import Pred
from headcode.kernels.program_head.spec import Primitive

PARAMS = ("k", "rate", "strict")
# 'the' on its own: many middle-layer heads of SmolLM2 use its occurrences as secondary sinks
THE = "token_in('the')"


@dataclass(frozen=True)
class Selector:
    """One selector kind, defined once (see the module docstring for each field)."""

    kind: str
    meaning: str
    functions: tuple[Callable[..., Any], ...]
    reference: Callable[[Any, Any], np.ndarray]
    lower: Callable[[Any], Primitive]
    phrase: Callable[[Any], str]
    examples: tuple[str, ...]
    params: tuple[str, ...] = ()
    problems: Callable[[Any], list[str]] = field(default=lambda s: [])
    aux: Pred | None = None      # the class that places its key (fixed by the selector), if any
    needs_aux: bool = False      # the program gives that class (``after_last(t, determiner)``)
    needs_key: bool = False      # the key restriction is the selector's own argument (most_recent)
    key_words: str | None = "if it is"  # "<phrase> if it is a noun-like word"; None: not said
    search: tuple[str, ...] = ()   # offline search dictionary entries (synth/basis.py)

    def __post_init__(self) -> None:
        bad = [p for p in self.params if p not in PARAMS]
        if bad:
            raise ValueError(f"selector {self.kind}: unknown params {bad}; known: {PARAMS}")

    def all_problems(self, s: Any) -> list[str]:
        """Every reason the term ``s`` (an ``ir.Sel`` or a compiled ``Term``) is not valid."""
        out = list(self.problems(s))
        if (self.aux is not None or self.needs_aux) and s.aux is None:
            out.append(f"{self.kind} needs its class (aux)")
        if self.needs_key and s.key is None:
            out.append(f"{self.kind} needs a key class")
        return out


REGISTRY: dict[str, Selector] = {}


def register(sel: Selector) -> Selector:
    """Add ``sel`` to the registry (its kind and function names must be new)."""
    if sel.kind in REGISTRY:
        raise ValueError(f"selector kind {sel.kind!r} is already registered")
    taken = {f.__name__ for s in REGISTRY.values() for f in s.functions}
    clash = [f.__name__ for f in sel.functions if f.__name__ in taken]
    if clash:
        raise ValueError(f"selector functions {clash} are already defined by another selector")
    REGISTRY[sel.kind] = sel
    return sel


@contextmanager
def registered(sel: Selector) -> Iterator[Selector]:
    """``register`` for the length of a ``with`` block (tests, plugins tried out)."""
    register(sel)
    try:
        yield sel
    finally:
        del REGISTRY[sel.kind]


def get(kind: str) -> Selector:
    try:
        return REGISTRY[kind]
    except KeyError:
        raise ValueError(f"unknown selector kind {kind!r}; known: {', '.join(sorted(REGISTRY))}") from None


def functions() -> dict[str, Callable[..., Any]]:
    """Every program-language function of every registered selector, by name."""
    return {f.__name__: f for s in REGISTRY.values() for f in s.functions}
