"""Replacement heads: what can stand in for one attention head.

Every replacement is a callable with one signature (``HeadFn``)::

    fn(ids [B, T] int64, v [B, T, D], start [B] int64, n_q: int) -> out [B, n_q, D]

``ids`` is the whole token history (prefill: the prompt; decoding: prompt and generated
tokens so far), ``v`` the values the head reads (its KV group's, the same history), ``start[b]``
the first real position of row ``b`` (left padding before it) and ``n_q`` the number of query
rows wanted (the last ``n_q`` positions). Output rows before ``start`` are zero.

Kinds here:
- ``CompiledHeadFn``: a compiled program, through ``headcode.compiler.run_head`` (Numba/Triton);
- ``ProgramHeadFn``: any ``Program`` through its numpy reference (``Program.attention``), for
  programs that do not compile (and tests);
- ``PatternHeadFn``: a given attention matrix per text (the exactness test);
- baselines: ``FirstTokenHead`` (redirect to the first token), ``UniformHead`` (uniform causal),
  ``MeanHead`` (the head's mean output over a dataset: mean-ablation).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from headcode.errors import HeadcodeError


class HeadFn(Protocol):
    def __call__(self, ids: torch.Tensor, v: torch.Tensor, start: torch.Tensor, n_q: int) -> torch.Tensor: ...


def _apply_rows(ids: torch.Tensor, v: torch.Tensor, start: torch.Tensor, n_q: int, attention) -> torch.Tensor:
    """Per row: ``attention(b, ids_valid [L]) -> A [L, L]`` (numpy), out = A[-n_q:] @ v_valid."""
    B, T, D = v.shape
    out = torch.zeros(B, n_q, D, dtype=torch.float64)
    for b in range(B):
        s = int(start[b])
        L = T - s
        if L <= 0:
            continue
        A = torch.from_numpy(np.ascontiguousarray(attention(b, ids[b, s:].cpu().numpy()), dtype=np.float64))
        rows = min(n_q, L)
        out[b, n_q - rows:] = A[L - rows:] @ v[b, s:].double().cpu()
    return out.to(device=v.device, dtype=v.dtype)


class ProgramHeadFn:
    """A ``Program`` run through its numpy reference on ``Tokens.from_ids`` of each row."""

    def __init__(self, program: Any, tokenizer: Any):
        self.program = program
        self.tokenizer = tokenizer

    def __call__(self, ids: torch.Tensor, v: torch.Tensor, start: torch.Tensor, n_q: int) -> torch.Tensor:
        from headcode.compiler.tokens import Tokens

        def attention(b: int, row: np.ndarray) -> np.ndarray:
            return self.program.attention(Tokens.from_ids(self.tokenizer, row))

        return _apply_rows(ids, v, start, n_q, attention)

    def __repr__(self) -> str:
        return f"ProgramHeadFn({self.program.name})"


class CompiledHeadFn:
    """A compiled head, through ``headcode.compiler.run_head`` on the chosen backend."""

    def __init__(self, head: Any, backend: str = "numba"):
        try:
            from headcode.compiler import run_head
        except ImportError as e:
            raise HeadcodeError("compiled heads need headcode.compiler.run_head, which this install "
                                "lacks: update headcode, or run programs through ProgramHeadFn") from e
        self.head = head
        self.backend = backend
        self._run = run_head

    def __call__(self, ids: torch.Tensor, v: torch.Tensor, start: torch.Tensor, n_q: int) -> torch.Tensor:
        return self._run(self.head, ids, v, start=start, n_q=n_q, backend=self.backend)

    def __repr__(self) -> str:
        return f"CompiledHeadFn({getattr(self.head, 'name', '?')}, {self.backend})"


class PatternHeadFn:
    """Given attention per text (``ids -> A [T, T]``); a prefix of a known text uses ``A[:L, :L]``."""

    def __init__(self, texts: Sequence[tuple[np.ndarray, np.ndarray]]):
        self.texts = [(np.asarray(ids, dtype=np.int64), np.asarray(A, dtype=np.float64)) for ids, A in texts]
        self._exact = {ids.tobytes(): A for ids, A in self.texts}

    def _lookup(self, row: np.ndarray) -> np.ndarray:
        A = self._exact.get(row.tobytes())
        if A is not None:
            return A
        L = len(row)
        for ids, A in self.texts:
            if len(ids) >= L and np.array_equal(ids[:L], row):
                return A[:L, :L]  # a prefix (incremental decoding)
        for ids, A in self.texts:
            n = len(ids)
            if n < L and np.array_equal(row[:n], ids):  # right padding after a known text
                out = np.zeros((L, L))
                out[:n, :n] = A
                out[n:, 0] = 1.0
                return out
        raise HeadcodeError(f"no captured pattern for a text of {L} tokens: pattern heads only "
                            "replay the texts they were captured on")

    def __call__(self, ids: torch.Tensor, v: torch.Tensor, start: torch.Tensor, n_q: int) -> torch.Tensor:
        return _apply_rows(ids, v, start, n_q, lambda b, row: self._lookup(row))


def pattern_heads(patterns: Any) -> dict[Any, PatternHeadFn]:
    """``{HeadRef: PatternHeadFn}`` replaying every head of a ``HeadPatterns`` on its texts."""
    return {h: PatternHeadFn([(t.ids, patterns.attention(i, h)) for i, t in enumerate(patterns.tokens)])
            for h in patterns.heads}


def _query_rows(x: torch.Tensor, start: torch.Tensor, n_q: int) -> torch.Tensor:
    """Keep the last ``n_q`` rows of ``x [B, T, D]`` and zero the rows before ``start``."""
    T = x.shape[1]
    pos = torch.arange(T - n_q, T, device=x.device)
    return x[:, T - n_q:] * (pos[None, :] >= start[:, None]).unsqueeze(-1).to(x.dtype)


class FirstTokenHead:
    """Baseline: all attention on the first real token."""

    def __call__(self, ids: torch.Tensor, v: torch.Tensor, start: torch.Tensor, n_q: int) -> torch.Tensor:
        first = v[torch.arange(v.shape[0], device=v.device), start.to(v.device)]  # [B, D]
        return _query_rows(first[:, None].expand(-1, v.shape[1], -1), start, n_q)


class UniformHead:
    """Baseline: uniform attention over the real tokens so far."""

    def __call__(self, ids: torch.Tensor, v: torch.Tensor, start: torch.Tensor, n_q: int) -> torch.Tensor:
        T = v.shape[1]
        pos = torch.arange(T, device=v.device)
        valid = (pos[None, :] >= start[:, None]).to(torch.float64)
        num = torch.cumsum(v.double() * valid[..., None], dim=1)
        cnt = torch.cumsum(valid, dim=1).clamp(min=1)
        return _query_rows((num / cnt[..., None]).to(v.dtype), start, n_q)


class MeanHead:
    """Baseline: the head's output averaged over a dataset (mean-ablation), whatever the input."""

    def __init__(self, mean: torch.Tensor):
        self.mean = mean.detach().reshape(-1)

    def __call__(self, ids: torch.Tensor, v: torch.Tensor, start: torch.Tensor, n_q: int) -> torch.Tensor:
        full = self.mean.to(v.device, v.dtype)[None, None].expand(v.shape[0], v.shape[1], -1)
        return _query_rows(full, start, n_q)


def baseline_heads(kind: str, heads: Sequence[Any], means: torch.Tensor | None = None) -> Mapping[Any, HeadFn]:
    """``{head: fn}`` for a baseline ``kind``: ``first_token``, ``uniform`` or ``mean_ablation``
    (``means [L, H, D]`` from ``evaluate.head_output_means``)."""
    if kind == "first_token":
        return {h: FirstTokenHead() for h in heads}
    if kind == "uniform":
        return {h: UniformHead() for h in heads}
    if kind == "mean_ablation":
        if means is None:
            raise ValueError("mean_ablation needs the heads' mean outputs")
        return {h: MeanHead(means[h.layer, h.head]) for h in heads}
    raise ValueError(f"unknown baseline {kind!r}")
