"""``decay(t, rate, pred)``: recency, ``rate ** (q - k)`` over the keys so far."""

from __future__ import annotations

from typing import Any

import numpy as np

from headcode.compiler import ir
from headcode.compiler.pattern import Pattern, causal
from headcode.compiler.predicates import Pred
from headcode.compiler.selectors.registry import THE, Selector, register
from headcode.kernels.program_head.spec import Scan


def decay(t: Any, rate: float, pred: Pred | None = None) -> Pattern:
    """Recency: weights ``rate**(q-k)`` over keys so far (where ``pred`` holds), 0 < rate < 1."""
    rate = float(rate)
    if not 0.0 < rate < 1.0:
        raise ValueError(f"decay rate must be in (0, 1), got {rate}")
    return Pattern(ir.Sel("decay", rate=rate, key=pred), t)


def _reference(s: Any, t: Any) -> np.ndarray:
    ar = np.arange(len(t))
    return np.where(causal(len(t)), s.rate ** np.maximum(ar[:, None] - ar[None, :], 0), 0.0)


SELECTOR = register(Selector(
    kind="decay", meaning="weights rate**(q-k) over keys so far", functions=(decay,), reference=_reference,
    lower=lambda s: Scan(rate=s.rate), params=("rate",),
    problems=lambda s: [] if 0.0 < s.rate < 1.0 else [f"decay rate must be in (0, 1), got {s.rate}"],
    phrase=lambda s: f"recent tokens (decay {s.rate:g})", key_words="that are",
    search=(*(f"decay(t, {r})" for r in (0.5, 0.8, 0.95)),
            *(f"decay(t, {r}, {c})" for c in ("noun_like", "content_word", "name", "punct", "~punct")
              for r in (0.8, 0.95)), f"decay(t, 0.95, {THE})"),
    examples=("decay(t, 0.5)", "decay(t, 0.8, noun_like)"),
))
