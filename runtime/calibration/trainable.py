"""One replaced head as a differentiable ``HeadFn``: ``A(w) @ V + c``.

``A(w)`` is the head's program with term weights ``w = softmax(logits)`` (the simplex: a row's
scores are normalised anyway, so only their ratios matter), built from the kernels' dense torch
reference of each term (``kernels.program_head.naive.term_matrix``): a term's matrix depends only
on the token ids, so it is computed once per text and kept. ``c [D]`` is the head's constant
output. With no terms (``head=None``) the head is its constant alone: optimal ablation.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from headcode.kernels.program_head.naive import term_matrix

MAX_TEXTS = 96  # term matrices kept per head: more than a run's fit + select texts, or evaluations thrash


class TrainableHead(nn.Module):
    """``fn(ids [B, T], v [B, T, D], start [B], n_q) -> [B, n_q, D]``, differentiable in ``logits``
    and ``constant`` (and ``v``). ``head``: a ``CompiledHead`` (its explanation's terms and weights
    start the fit) or ``None`` (constant only)."""

    def __init__(self, head: Any, head_dim: int, constant: torch.Tensor | None = None):
        super().__init__()
        self.spec = head.spec if head is not None else None
        n = self.spec.n_terms if self.spec is not None else 0
        w = torch.tensor([float(x) for x in (head.surrogate.weights if head is not None and head.surrogate
                                             else (self.spec.weights if n else []))], dtype=torch.float64)
        self.logits = nn.Parameter(torch.log(w.clamp(min=1e-6) / w.sum().clamp(min=1e-12)) if n else torch.zeros(0,
                                   dtype=torch.float64))
        c = torch.zeros(head_dim, dtype=torch.float64) if constant is None else constant.double().reshape(-1)
        self.constant = nn.Parameter(c.clone())
        self._mats: OrderedDict[bytes, torch.Tensor] = OrderedDict()

    @property
    def weights(self) -> torch.Tensor:
        return torch.softmax(self.logits, 0)

    def _terms(self, ids: torch.Tensor) -> torch.Tensor:
        """``[n_terms, L, L]`` float64 for one row of real tokens ``ids [L]`` (cached)."""
        key = ids.cpu().numpy().tobytes()
        hit = self._mats.get(key)
        if hit is None:
            start = torch.zeros(1, dtype=torch.long)
            hit = torch.stack([term_matrix(self.spec, i, ids[None].cpu(), start)[0] for i in range(self.spec.n_terms)])
            self._mats[key] = hit.float()  # kept in float32 (half the memory); summed in float64
            if len(self._mats) > MAX_TEXTS:
                self._mats.popitem(last=False)
        self._mats.move_to_end(key)
        return hit.double()

    def attention(self, ids: torch.Tensor) -> torch.Tensor:
        """``A [L, L]`` for real tokens ``ids [L]``: the weighted terms, rows normalised; an empty
        row attends to the first token (the kernels' rule)."""
        L = ids.shape[0]
        scores = torch.einsum("n,nqk->qk", self.weights, self._terms(ids))
        tot = scores.sum(-1, keepdim=True)
        empty = torch.zeros(L, L, dtype=torch.float64)
        empty[:, 0] = 1.0
        return torch.where(tot > 0, scores / tot.clamp(min=1e-300), empty)

    def forward(self, ids: torch.Tensor, v: torch.Tensor, start: torch.Tensor, n_q: int) -> torch.Tensor:
        B, T, D = v.shape
        rows = []
        for b in range(B):
            s = int(start[b])
            out = torch.zeros(n_q, D, dtype=torch.float64, device=v.device)
            L = T - s
            if L > 0:
                k = min(n_q, L)
                head = self.attention(ids[b, s:])[L - k:] @ v[b, s:].double() if self.spec is not None else 0.0
                out = torch.cat([out[:n_q - k], head + self.constant.expand(k, D)])
            rows.append(out)
        return torch.stack(rows).to(v.dtype)
