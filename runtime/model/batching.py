"""Batches of token-id sequences for a forward pass: similar lengths together (little padding),
right-padded (a causal row of a real token never sees a pad), with the attention mask."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch


def pad_id(tokenizer: Any) -> int:
    """The tokenizer's pad id, or 0 (pads are masked out, so any id serves)."""
    pad = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else None
    return 0 if pad is None else int(pad)


def right_pad(seqs: Sequence[Any], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids [B, T] int64, mask [B, T] int64)``: each sequence from position 0, then ``pad``."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, : len(s)] = torch.as_tensor(np.asarray(s, dtype=np.int64))
        mask[b, : len(s)] = 1
    return ids, mask


class PaddedBatches:
    """``for idx, ids, mask in PaddedBatches(seqs, batch_size, pad)``: ``idx`` the positions in
    ``seqs`` of the batch's rows (longest first), ``ids``/``mask`` as ``right_pad`` makes them.
    Has a ``len`` (the number of batches) for progress bars."""

    def __init__(self, seqs: Sequence[Any], batch_size: int, pad: int = 0):
        self.seqs, self.pad = seqs, pad
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
        step = max(1, batch_size)
        self.batches = [order[i:i + step] for i in range(0, len(order), step)]

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
        for idx in self.batches:
            yield (idx, *right_pad([self.seqs[i] for i in idx], self.pad))
