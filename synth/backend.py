"""The interface every synthesis backend implements, and the data passed out of ``synth``.

A backend *proposes* programs for a head from the fit split (it may use the select split to
choose among its own variants, never the test split) and gives the *attention* of a program
it proposed on any text. Ranking on held-out text (``headcode.synth.ranking``) is the same
for every backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from headcode.runtime.model.heads import HeadRef
from headcode.runtime.model.patterns import HeadPatterns


class Rejected(Exception):
    """A program could not be run (sandbox refusal, error, bad output); the message says why."""


@dataclass(frozen=True)
class Candidate:
    """A program's scores on one head. Score dicts are keyed by split (``fit``/``select``/``test``)."""

    program: str  # the program's name
    source: str
    head: str     # "L3.H7"
    iou: dict[str, float] = field(default_factory=dict)
    output_error: dict[str, float] = field(default_factory=dict)
    jsd: dict[str, float] = field(default_factory=dict)
    size: int = 0          # AST nodes of attend's body (``compiler.size``)
    terms: int = 0         # selector terms
    description: str = ""  # one line of English from the program's IR ("" if the backend has none)
    front: list = field(default_factory=list)  # the (size, select fidelity) front the program was chosen from


class Backend(Protocol):
    name: str

    def prepare(self, patterns: HeadPatterns, heads: Sequence[HeadRef]) -> None:
        """Work shared by all heads (e.g. the dictionary on every text). Called once."""

    def propose(self, patterns: HeadPatterns, head: HeadRef) -> list[str]:
        """Program sources for ``head``, written from the fit split (best first)."""

    def attention(self, source: str, texts: Sequence[int]) -> list[np.ndarray]:
        """The ``[T, T]`` attention of a proposed program on each text; ``Rejected`` if it cannot run."""
