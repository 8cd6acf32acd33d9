"""Running compiled heads: the single entry point the runtime calls.

``run_head(head, ids [B, T], v [B, T, D]) -> [B, n_q or T, D]``: the head's output
``attention_from_scores(program) @ V`` computed from token ids, the head's vocabulary tables
and V, without a T x T matrix (except on the ``torch`` reference backend, which is dense).
"""

from __future__ import annotations

from typing import Literal

import torch

from headcode.compiler.head import CompiledHead
from headcode.compiler.validate import CompileError

Backend = Literal["torch", "numba", "triton"]


def run_head(head: CompiledHead, ids: torch.Tensor, v: torch.Tensor, start: torch.Tensor | None = None,
             n_q: int | None = None, backend: Backend = "numba") -> torch.Tensor:
    """``ids [B, T] int64, v [B, T, D] (the head's values; GQA: its KV head's), start [B] int64
    (first real position per row, left padding) -> out [B, n_q or T, D]`` in v's dtype.

    ``n_q``: only the last ``n_q`` query rows (incremental decoding: the whole history of ids
    and values is passed). Rows before ``start`` are zero. ``backend``: ``numba`` (CPU, fused;
    CPU tensors), ``triton`` (GPU tensors, or CPU under ``TRITON_INTERPRET=1``), ``torch``
    (dense O(T^2) float64 reference). Raises ``CompileError`` for an uncompiled head. A
    calibrated head runs its surrogate's weights (``head.run_spec``); its constant output is
    added by the layer that holds it (``runtime.surrogate.apply.LayerSurrogate``), not here.
    """
    if not head.compiled:
        raise CompileError(head.reasons, head.name)
    if backend == "numba":
        from headcode.kernels.program_head.numba_cpu import program_head_numba

        if v.device.type != "cpu":
            return program_head_numba(head.run_spec, ids, v, start, n_q).to(v.device)
        return program_head_numba(head.run_spec, ids, v, start, n_q)
    if backend == "triton":
        from headcode.kernels.program_head.triton_gpu import program_head_triton

        return program_head_triton(head.run_spec, ids, v, start, n_q)
    if backend == "torch":
        from headcode.kernels.program_head.naive import program_head_naive

        return program_head_naive(head.run_spec, ids, v, start, n_q)
    raise ValueError(f"unknown backend {backend!r}: use 'numba', 'triton' or 'torch'")

