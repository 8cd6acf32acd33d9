"""Running one compiled head on a backend (``kernels.program_head.backends``): the single entry
point the runtime's per-head path and the tests call.

``run_head(head, ids [B, T], v [B, T, D]) -> [B, n_q or T, D]``: the head's output
``attention_from_scores(program) @ V`` computed from token ids, the head's vocabulary tables
and V, without a T x T matrix (except on the ``torch`` reference backend, which is dense).
"""

from __future__ import annotations

import torch

from headcode.compiler.head import CompiledHead
from headcode.compiler.validate import CompileError
from headcode.kernels.program_head import backends


def run_head(head: CompiledHead, ids: torch.Tensor, v: torch.Tensor, start: torch.Tensor | None = None,
             n_q: int | None = None, backend: str = backends.DEFAULT) -> torch.Tensor:
    """``ids [B, T] int64, v [B, T, D] (the head's values; GQA: its KV head's), start [B] int64
    (first real position per row, left padding) -> out [B, n_q or T, D]`` in v's dtype.

    ``n_q``: only the last ``n_q`` query rows (the whole history of ids and values is passed).
    Rows before ``start`` are zero. ``backend``: one of ``backends.names()`` -- ``numba`` (CPU;
    a GPU tensor makes a round trip), ``triton`` (GPU tensors, or CPU under
    ``TRITON_INTERPRET=1``), ``torch`` (dense O(T^2) float64 reference). Raises ``CompileError``
    for an uncompiled head. A calibrated head runs its surrogate's weights (``head.run_spec``);
    its constant output is added by the layer that holds it (``runtime.surrogate``), not here.
    """
    if not head.compiled:
        raise CompileError(head.reasons, head.name)
    return backends.get(backend).prefill(head.run_spec, ids, v, start, n_q)
