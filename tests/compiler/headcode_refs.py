"""Helpers: the ground-truth output of a program on one text (numpy reference of
``compiler.vocab``) and padded batches for the kernels."""

from __future__ import annotations

import numpy as np

from headcode.compiler.pattern import attention_from_scores
from headcode.compiler.program import Program
from headcode.compiler.tokens import Tokens


def reference_output(program: Program, pieces: list[str] | tuple[str, ...], ids: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``attention_from_scores(program.scores(t)) @ V`` on the text ``ids`` (pieces from the vocabulary)."""
    t = Tokens.synthetic([pieces[i] for i in ids], [int(i) for i in ids])
    return attention_from_scores(program.scores(t)) @ v.astype(np.float64)


def padded_batch(rng: np.random.Generator, lengths: list[int], T: int, D: int, make_ids, pad_id: int = 0):
    """Left-padded batch: ``ids [B, T]``, ``v [B, T, D] float32``, ``start [B]``, and the per-row texts."""
    B = len(lengths)
    ids = np.full((B, T), pad_id, dtype=np.int64)
    v = rng.standard_normal((B, T, D)).astype(np.float32)
    start = np.array([T - n for n in lengths], dtype=np.int64)
    for b, n in enumerate(lengths):
        ids[b, T - n:] = make_ids(n)
    return ids, v, start
