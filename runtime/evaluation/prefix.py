"""Losses that reuse what does not change: the residual stream below the first replaced layer.

With heads replaced only at layers ``>= L``, the stream entering layer ``L`` is the base model's:
``BasePrefix`` records it once per batch of texts (right-padded as ``token_loss`` pads them), and a
loss with heads replaced then skips layers ``< L`` (each returns its input, the last one the kept
stream). Choosing heads measures hundreds of such losses on the same few texts (issue 19, item 6).

Decoder layers are found as the ``nn.ModuleList`` holding one block per layer (Llama-style
``model.layers``, GPT-2 ``transformer.h``); each returns its hidden states as a tensor
(transformers >= 5).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import numpy as np
import torch
from torch import nn

from headcode.errors import HeadcodeError
from headcode.runtime.model.heads import HeadRef


def decoder_layers(model: nn.Module, n_layers: int) -> nn.ModuleList:
    """The model's list of ``n_layers`` decoder blocks."""
    for _, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) == n_layers:
            return mod
    raise HeadcodeError(f"{type(model).__name__}: cannot find its list of {n_layers} decoder layers")


class _Pass(nn.Module):
    def forward(self, hidden_states: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        return hidden_states


class _Replay(nn.Module):
    def __init__(self, hidden: torch.Tensor):
        super().__init__()
        self.hidden = hidden

    def forward(self, hidden_states: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        if hidden_states.shape != self.hidden.shape:
            raise HeadcodeError("the kept residual stream is for another batch: make a new BasePrefix")
        return self.hidden.to(hidden_states.dtype)


@contextmanager
def starting_at(layers: nn.ModuleList, layer: int, hidden: torch.Tensor | None) -> Iterator[None]:
    """Inside, layers ``< layer`` are skipped and layer ``layer`` receives ``hidden`` (``[B, T, d]``,
    the stream that entered it in the base model); ``layer == 0`` or ``hidden`` None: unchanged."""
    if layer <= 0 or hidden is None:
        yield
        return
    saved = [layers[i] for i in range(layer)]
    try:
        for i in range(layer - 1):
            layers[i] = _Pass()
        layers[layer - 1] = _Replay(hidden)
        yield
    finally:
        for i, m in enumerate(saved):
            layers[i] = m


@contextmanager
def recording(layers: nn.ModuleList, out: dict[int, torch.Tensor]) -> Iterator[None]:
    """Inside, each forward stores the stream entering every layer ``> 0`` in ``out[layer]``."""
    def hook_for(layer: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            out[layer] = (args[0] if args else kwargs["hidden_states"]).detach()
        return hook

    handles = [layers[i].register_forward_pre_hook(hook_for(i), with_kwargs=True) for i in range(1, len(layers))]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


class BasePrefix:
    """The base model's residual stream entering every layer, per batch of ``texts``, computed once.
    Memory: ``n_layers * tokens * d_model`` floats (8 texts of 128 tokens, SmolLM2-135M: 70 MB)."""

    def __init__(self, loaded: Any, texts: Sequence[np.ndarray], batch_size: int = 8):
        from headcode.runtime.model.batching import PaddedBatches, pad_id

        self.loaded = loaded
        self.blocks = decoder_layers(loaded.model, loaded.n_layers)
        self.batches = list(PaddedBatches([t for t in texts if len(t) > 1], batch_size, pad_id(loaded.tokenizer)))
        if not self.batches:
            raise HeadcodeError("no text with two or more tokens to measure the loss on")
        self.hidden: list[dict[int, torch.Tensor]] = []
        with torch.no_grad():
            for _, ids, mask in self.batches:
                kept: dict[int, torch.Tensor] = {}
                with recording(self.blocks, kept):
                    loaded.model(input_ids=ids, attention_mask=mask, use_cache=False)
                self.hidden.append(kept)

    def mean_loss(self, fns: Mapping[HeadRef, Any]) -> float:
        """Mean next-token loss on the texts with ``fns`` (``{HeadRef: HeadFn}``) in place; the
        layers below the first replaced one are not run."""
        from headcode.runtime.evaluation.measures import _logprobs
        from headcode.runtime.surrogate.apply import apply_plan

        first = min((h.layer for h in fns), default=0)
        nll, n = 0.0, 0
        with torch.no_grad(), apply_plan(self.loaded.model, fns) if fns else nullcontext():
            for (_, ids, mask), kept in zip(self.batches, self.hidden):
                with starting_at(self.blocks, first, kept.get(first)):
                    lp = _logprobs(self.loaded.model, ids, mask)
                m = mask[:, 1:].bool()
                nll -= float(lp[m].double().sum())
                n += int(m.sum())
        return nll / max(n, 1)
