"""The token history that surrogate heads read: ids of the whole sequence, and each row's start.

The attention function sees hidden states, not tokens; programs need the ids. A forward
pre-hook on the model's base module (``model.model`` for Llama, ``model.transformer`` for GPT-2;
so calling either the LM or its base model works) records them:

- no cache, or an empty one: a new sequence, the history is this call's ``input_ids``;
- a cache holding ``past`` tokens: the call continues the sequence the history holds, if that
  cache is the one the history was built with (or the history was built without a visible
  cache and has exactly ``past`` tokens, e.g. ``out = model(ids); model(next, past_key_values=
  out.past_key_values)``); a cache cropped by assisted decoding drops the tail of the history.
- the 2D ``attention_mask`` (when it covers the whole history) gives each row's first real
  position ``start`` (left padding); right padding needs nothing (causal programs never see it).

A ``HeadcodeCache`` (``runtime.surrogate.cache``) keeps what its surrogate heads need itself:
the hook hands it each call's ids (``observe_tokens``) and records it as the current cache, and
the history above is not used. It is what ``generate`` uses once a plan is applied.

Limitation of the history path (a ``DynamicCache`` given by hand): beam search reorders the
cache's rows behind the model's back; the history is not reordered, so surrogate heads would
read the wrong tokens. Use the headcode cache (the default in ``generate``) for beam search.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

import torch
from transformers.cache_utils import Cache

from headcode.errors import HeadcodeError
from headcode.runtime.surrogate.cache import HeadcodeCache


def find_cache(args: tuple, kwargs: dict) -> Cache | None:
    """The ``Cache`` a forward call was given, whatever the keyword is called (transformers 5.24
    renamed ``past_key_values`` to ``cache``; the outer model forwards either spelling as the new one)."""
    found = [v for v in (*args, *kwargs.values()) if isinstance(v, Cache)]
    if len(found) > 1:
        raise HeadcodeError("the model was called with two KV caches: pass one")
    return found[0] if found else None


def base_module(model: torch.nn.Module) -> torch.nn.Module:
    """The module that receives ``input_ids`` for both ``model(...)`` and ``model.<base>(...)``."""
    prefix = getattr(model, "base_model_prefix", "")
    return getattr(model, prefix, model) if prefix else model


def _per_thread(name: str) -> Any:
    """An attribute kept per thread: concurrent ``generate`` calls (a server's threads) on one
    model each see their own ids and cache."""
    def get(self: TokenHistory) -> Any:
        return getattr(self._tls, name, None)

    def put(self: TokenHistory, value: Any) -> None:
        setattr(self._tls, name, value)
    return property(get, put)


class TokenHistory:
    """Ids ``[B, T]`` and starts ``[B]`` of the sequence being run; updated before each forward.
    Everything is per thread."""

    ids = _per_thread("ids")            # [B, T] int64 or None
    start = _per_thread("start")        # [B] int64 or None
    _cache = _per_thread("cache")       # weakref to the cache this history continues, or None
    _current = _per_thread("current")   # weakref to the cache of the call running now, or None

    def __init__(self) -> None:
        self._tls = threading.local()

    def reset(self) -> None:
        self._tls = threading.local()

    @property
    def cache(self) -> Cache | None:
        """The cache the running forward call was given (``None``: none)."""
        return self._current() if self._current is not None else None

    def _same_cache(self, cache: Any) -> bool:
        return self._cache is not None and self._cache() is cache

    def update(self, ids: torch.Tensor | None, mask: torch.Tensor | None, cache: Any) -> None:
        if ids is None:
            raise HeadcodeError("surrogate heads need token ids: call the model with input_ids, "
                                "not inputs_embeds")
        if ids.dim() == 1:
            ids = ids[None]
        past = int(cache.get_seq_length()) if cache is not None else 0
        if past == 0:
            hist = ids
        else:
            if self.ids is None or self.ids.shape[0] != ids.shape[0]:
                raise HeadcodeError("this KV cache does not continue the sequence the surrogate model "
                                    "last ran: start again from the prompt without a cache")
            ok = self.ids.shape[1] >= past if self._same_cache(cache) else (
                self._cache is None and self.ids.shape[1] == past)
            if not ok:
                raise HeadcodeError(f"the KV cache holds {past} tokens but the surrogate model's token "
                                    f"history has {self.ids.shape[1]} for another cache: start again "
                                    "from the prompt without a cache")
            hist = torch.cat([self.ids[:, :past], ids.to(self.ids.device)], dim=1)
        if mask is not None and mask.dim() == 2 and mask.shape == hist.shape:
            m = mask.to(torch.bool)
            start = torch.where(m.any(1), m.to(torch.int8).argmax(1), torch.zeros_like(m[:, 0], dtype=torch.long))
            self.start = start.to(torch.long)
        elif past == 0 or self.start is None:
            self.start = torch.zeros(hist.shape[0], dtype=torch.long, device=hist.device)
        self.ids = hist
        self._cache = weakref.ref(cache) if cache is not None else None

    def hook(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids")
        if ids is None and args:
            ids = args[0]
        cache = find_cache(args, kwargs)
        self._current = weakref.ref(cache) if cache is not None else None
        if isinstance(cache, HeadcodeCache):
            cache.observe_tokens(ids, kwargs.get("attention_mask"))
            return
        self.update(ids, kwargs.get("attention_mask"), cache)

    def attach(self, model: torch.nn.Module) -> Any:
        """Register the pre-hook on the model's base module; returns the hook handle."""
        return base_module(model).register_forward_pre_hook(self.hook, with_kwargs=True)

    def current(self, n_kv: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids [B, T], start [B])`` for an attention call whose values hold ``n_kv`` positions."""
        if self.ids is None or self.start is None:
            raise HeadcodeError("surrogate heads ran without a token history: call the model itself "
                                "(not one layer) so headcode can record the input ids")
        if self.ids.shape[1] > n_kv:
            raise HeadcodeError(f"the attention saw {n_kv} cached positions but the sequence has "
                                f"{self.ids.shape[1]} tokens: sliding-window caches are not supported "
                                "with surrogate heads")
        return self.ids, self.start
