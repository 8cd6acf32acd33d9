"""Rows of a running batch's cache: a prefilled request joins, a finished one leaves.

Every row of the batch cache has the same length ``T`` (the batch's position); a row whose
sequence is shorter is left-padded, and ``start[b]`` is its first real position (the attention
mask and the selector states skip what is before it). A request is prefilled alone (batch 1, no
padding: its numbers are those of a run alone), then joins: the shorter side is padded on the left
to the other's length and the rows are concatenated. When rows leave, the columns that are padding
in every remaining row are dropped.

What a row holds, per layer: K/V (``DynamicLayer``: every KV group; ``HeadcodeLayer``: only the
kept groups) and, for layers with compiled heads, the selector states (``LayerState``). The
states are position-free except a pointer's pending key position (``pend``) and its ring of recent
values, indexed by position modulo the ring's length: padding shifts both.

Pure tensor work over the caches' public fields; the states through ``LayerState``'s ``tensors()``
(batch first) and ``map_apply``. The Triton states (``TritonLayerState``) are not joined here: with
the ``triton`` backend the engine runs one request at a time.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer

from headcode.errors import HeadcodeError
from headcode.kernels.program_head.stream import LayerState
from headcode.kernels.program_head.stream_cpu import rehash
from headcode.runtime.surrogate.cache import HeadcodeCache, HeadcodeLayer


def _kv_layers(cache: Cache) -> list[DynamicLayer]:
    layers = list(cache.layers)
    bad = [type(x).__name__ for x in layers if not isinstance(x, DynamicLayer)]
    if bad:
        raise HeadcodeError(f"continuous batching needs dynamic cache layers, not {bad[0]}: serve without "
                            "a sliding-window or static cache")
    return layers


def _set_state(state: LayerState, tensors: dict[str, torch.Tensor]) -> None:
    state.replace(**tensors)  # the kernel's numpy views are made again from the new tensors


def _shift_state(state: LayerState, d: int) -> None:
    """Move every row's positions by ``d`` (padding added on the left: ``d > 0``; dropped: ``d < 0``)."""
    pend = torch.where(state.pend >= 0, state.pend + d, state.pend)
    _set_state(state, {"pend": pend, "ring": torch.roll(state.ring, d, dims=2),
                       "rok": torch.roll(state.rok, d, dims=2)})
    state.length += d


def _state_of(layer: DynamicLayer) -> LayerState | None:
    if not isinstance(layer, HeadcodeLayer) or layer.state is None:
        return None
    if not isinstance(layer.state, LayerState):
        raise HeadcodeError("continuous batching joins CPU selector states only: serve the triton backend "
                            "with --max-batch 1")
    return layer.state


def pad_left(cache: Cache, n: int) -> None:
    """Every row gets ``n`` padding positions before its first: K/V zeros, state positions + ``n``.
    (The caller moves its rows' starts by ``n``.)"""
    if n <= 0:
        return
    for layer in _kv_layers(cache):
        for name in ("keys", "values"):
            t = getattr(layer, name)
            setattr(layer, name, torch.cat([t.new_zeros(*t.shape[:2], n, t.shape[3]), t], dim=2))
        if isinstance(layer, HeadcodeLayer):
            layer.length += n
        state = _state_of(layer)
        if state is not None:
            _shift_state(state, n)
    if isinstance(cache, HeadcodeCache) and cache.ids is not None:
        cache.ids = torch.cat([cache.ids.new_zeros(cache.ids.shape[0], n), cache.ids], dim=1)


def trim_left(cache: Cache, n: int) -> None:
    """Drop the first ``n`` positions of every row (padding in all of them)."""
    if n <= 0:
        return
    for layer in _kv_layers(cache):
        layer.keys, layer.values = layer.keys[:, :, n:].contiguous(), layer.values[:, :, n:].contiguous()
        if isinstance(layer, HeadcodeLayer):
            layer.length -= n
        state = _state_of(layer)
        if state is not None:
            _shift_state(state, -n)
    if isinstance(cache, HeadcodeCache) and cache.ids is not None:
        cache.ids = cache.ids[:, n:].contiguous()


def keep_rows(cache: Cache, rows: list[int]) -> None:
    """Keep only ``rows`` (in that order) of every layer and state."""
    idx = torch.tensor(rows, dtype=torch.long)
    for layer in _kv_layers(cache):
        i = idx.to(layer.keys.device)
        layer.keys, layer.values = layer.keys[i], layer.values[i]
        state = _state_of(layer)
        if state is not None:
            state.map_apply(lambda t: t[idx])
    if isinstance(cache, HeadcodeCache):
        cache.ids = cache.ids[idx] if cache.ids is not None else None


def _same_map_size(a: LayerState, b: LayerState) -> None:
    """Give both states' per-token maps the same entry room and hash capacity (zeros, rehashed)."""
    for s, o in ((a, b), (b, a)):
        E = o.hval.shape[2]
        if s.hval.shape[2] < E:
            grow = E - s.hval.shape[2]
            _set_state(s, {"hval": torch.cat([s.hval, s.hval.new_zeros(*s.hval.shape[:2], grow, s.hval.shape[3])], 2),
                           "hcnt": torch.cat([s.hcnt, s.hcnt.new_zeros(*s.hcnt.shape[:2], grow)], 2)})
        cap = o.hkey.shape[2]
        if s.hkey.shape[2] < cap:
            nk, ne = rehash(s.hkey.numpy(), s.hent.numpy(), cap)
            _set_state(s, {"hkey": torch.from_numpy(nk), "hent": torch.from_numpy(ne)})


def join(batch: Cache, new: Cache) -> None:
    """Append the rows of ``new`` to ``batch`` (both of the same length and plan); ``new`` is used up."""
    a_layers, b_layers = _kv_layers(batch), _kv_layers(new)
    if len(a_layers) != len(b_layers) or type(batch) is not type(new):
        raise HeadcodeError("a request's cache does not match the running batch's: same model and plan needed")
    for a, b in zip(a_layers, b_layers):
        if a.keys.shape[2] != b.keys.shape[2]:
            raise HeadcodeError(f"rows of {a.keys.shape[2]} and {b.keys.shape[2]} positions cannot join: pad first")
        a.keys, a.values = torch.cat([a.keys, b.keys]), torch.cat([a.values, b.values])
        sa, sb = _state_of(a), _state_of(b)
        if sa is not None and sb is not None:
            if sa.length != sb.length:
                raise HeadcodeError("selector states at different positions cannot join")
            _same_map_size(sa, sb)
            tb = sb.tensors()
            _set_state(sa, {k: torch.cat([t, tb[k]]) for k, t in sa.tensors().items()})
        elif (sa is None) != (sb is None):
            raise HeadcodeError("one side of a join has selector states and the other none")
    if isinstance(batch, HeadcodeCache) and isinstance(new, HeadcodeCache):
        if batch.ids is not None and new.ids is not None:
            batch.ids = torch.cat([batch.ids, new.ids])


def set_starts(cache: Cache, starts: list[int]) -> None:
    """Tell a headcode cache each row's first real position (a plain cache needs only the mask)."""
    if isinstance(cache, HeadcodeCache):
        cache.start = torch.tensor(starts, dtype=torch.long)
