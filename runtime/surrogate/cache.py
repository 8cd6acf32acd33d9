"""``HeadcodeCache``: a transformers ``Cache`` for a model with surrogate heads (docs/architecture.md, semantics 8).

Per layer with replaced heads (``HeadcodeLayer``) it keeps:
- keys only of the KV groups that still have a neural head, values of those groups (and of
  groups read by heads that must be recomputed, below): a KV group whose query heads are all
  replaced keeps nothing;
- the selector states of every compiled replaced head (``kernels.program_head.stream``: running
  sums, last-seen vectors, ring buffers, per-token maps), built once in prefill and advanced in
  O(terms * D) per decoding step, whatever the context length.
Layers without replaced heads are plain ``DynamicLayer``s. Heads that are not compiled programs
(``ProgramHeadFn``, captured patterns, baselines) cannot keep a constant state: they are
recomputed over the whole history each step, from their group's cached values and the token ids
this cache then keeps.

``generate`` uses it by itself once a plan is applied (the handle passes ``handle.new_cache()`` as
``generate``'s documented cache argument when the caller gave none); pass ``cache=handle.new_cache()``
to call the model by hand, or a ``DynamicCache`` to use the recompute path instead. Beam search (``reorder_cache``),
``batch_select_indices`` and ``batch_repeat_interleave`` reorder the states with the K/V; ``crop``
(assisted decoding) cannot undo a running sum and raises.

Selector states run where the heads' backend runs: Numba on the CPU (``numba``), Triton on the
GPU (``triton``: two launches per layer and step, no host sync; ``stream_triton``). With the
``numba`` backend on a GPU model the new values of a step go to the host and back.

The cache knows a layer's surrogate only through its ``LayerLayout`` (a frozen dataclass: which K/V
rows to keep, the layer's program); the layer (``apply.LayerSurrogate``) imports this module, never
the reverse.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

from headcode.errors import HeadcodeError
from headcode.kernels.program_head import backends
from headcode.kernels.program_head.stream import LayerProgram, LayerState


@dataclass(frozen=True, eq=False)
class LayerLayout:
    """What a layer's cache needs from its surrogate (``LayerSurrogate.layout``): the KV group of
    each row of the key tensor the attention computes (``k_rows``; sliced projections compute fewer),
    the groups whose K (``key_groups``) and V (``value_groups``) history is kept, the compiled heads'
    ``program`` (``None``: none keeps a state) and the ``backend`` (``kernels.program_head.backends``)
    whose functional ``zero_state``/``step`` carry their states."""

    k_rows: tuple[int, ...]
    key_groups: tuple[int, ...]
    value_groups: tuple[int, ...]
    program: LayerProgram | None
    backend: str = backends.DEFAULT


def first_real(mask: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` 0/1 attention mask -> ``[B]`` first real position (0 for an all-padding row)."""
    m = mask.to(torch.bool)
    return torch.where(m.any(1), m.to(torch.int8).argmax(1), torch.zeros_like(m[:, 0], dtype=torch.long)).long()


class HeadcodeLayer(DynamicLayer):
    """One layer's cache: K of ``key_groups``, V of ``value_groups``, and the selector states."""

    is_croppable = False

    def __init__(self, layout: LayerLayout):
        super().__init__()
        self.layout = layout
        self.key_groups, self.value_groups = layout.key_groups, layout.value_groups
        self.length = 0
        self.state: LayerState | Any = None  # the backend's state (stream.LayerState for numba)
        self.new_values: torch.Tensor | None = None
        self._idx: dict[tuple, torch.Tensor] = {}

    def _rows(self, which: str, n_rows: int, device: torch.device) -> torch.Tensor | None:
        """Rows of an incoming ``[B, n_rows, q, D]`` tensor to keep (``None``: all of them)."""
        key = (which, n_rows, str(device))
        if key not in self._idx:
            k_rows = self.layout.k_rows
            have = k_rows if which == "k" and n_rows == len(k_rows) else tuple(range(n_rows))
            want = self.key_groups if which == "k" else self.value_groups
            rows = [have.index(g) for g in want]
            # long even when empty: a layer whose heads are all replaced keeps no rows (torch.tensor([]) is float)
            self._idx[key] = None if rows == list(range(n_rows)) else torch.tensor(rows, dtype=torch.long,
                                                                                    device=device)
        return self._idx[key]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``key [B, k, q, D]`` (the rows computed), ``value [B, KV, q, D]`` -> the kept K and V
        history ``[B, len(key_groups), T, D]``, ``[B, len(value_groups), T, D]``."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.new_values = value_states
        ki = self._rows("k", key_states.shape[1], key_states.device)
        vi = self._rows("v", value_states.shape[1], value_states.device)
        k = key_states if ki is None else key_states.index_select(1, ki)
        v = value_states if vi is None else value_states.index_select(1, vi)
        self.keys = k if self.length == 0 else torch.cat([self.keys, k], dim=-2)
        self.values = v if self.length == 0 else torch.cat([self.values, v], dim=-2)
        self.length += key_states.shape[-2]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def step(self, ids: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        """The stateful heads' outputs for this call's new tokens: ``[B, H_s, n, D]``."""
        v = self.new_values
        if v is None or v.shape[2] != ids.shape[1]:
            raise HeadcodeError("the headcode cache got values without their token ids: call the model "
                                "itself with input_ids (not one layer, not inputs_embeds)")
        program = self.layout.program
        if program is None:
            raise HeadcodeError("this layer has no compiled heads to step: a headcode cache layer was "
                                "asked for states it does not keep")
        backend = backends.get(self.layout.backend)
        if self.state is None:
            self.state = backend.zero_state(program, v.shape[0], v.shape[-1], v.device)
        out, self.state = backend.step(program, self.state, ids, v, start)  # state in, state out
        self.new_values = None
        return out.to(v.device)

    def nbytes(self) -> int:
        kv = sum(t.numel() * t.element_size() for t in (self.keys, self.values) if t is not None)
        return kv + (self.state.nbytes() if self.state is not None else 0)

    def reset(self) -> None:
        super().reset()
        self.length, self.state, self.new_values = 0, None, None

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove:
            raise HeadcodeError("a headcode cache cannot be cropped (its running sums cannot forget a "
                                "token): use a DynamicCache for assisted decoding")

    def _batch(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        if self.is_initialized and self.keys is not None:
            self.keys, self.values = fn(self.keys), fn(self.values)
        if self.state is not None:
            self.state.map_apply(fn)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._batch(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._batch(lambda t: t[indices.to(t.device)])

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._batch(lambda t: t.repeat_interleave(repeats, dim=0))


class HeadcodeCache(DynamicCache):
    """The cache of a model with a surrogate plan applied (made by ``SurrogateHandle.new_cache``):
    ``layouts`` of the layers with replaced heads, the model's ``n_layers``, whether some head is
    recomputed from the token ids (``needs_ids``), and ``alive()``: is the plan still applied."""

    def __init__(self, layouts: Mapping[int, LayerLayout], n_layers: int, needs_ids: bool = False,
                 alive: Callable[[], bool] = lambda: True):
        layers: list[DynamicLayer] = [HeadcodeLayer(layouts[i]) if i in layouts else DynamicLayer()
                                      for i in range(n_layers)]
        Cache.__init__(self, layers=layers)
        self.alive = alive
        self.needs_ids = needs_ids
        self.start: torch.Tensor | None = None
        self.new_ids: torch.Tensor | None = None
        self.ids: torch.Tensor | None = None

    def observe_tokens(self, ids: torch.Tensor | None, mask: torch.Tensor | None) -> None:
        """Called before each forward (``TokenHistory``'s hook): this call's token ids and, in
        prefill, each row's first real position from the 2D attention mask."""
        if not self.alive():
            raise HeadcodeError("this headcode cache belongs to a surrogate plan that was removed: "
                                "start again from the prompt with a new cache")
        if ids is None:
            raise HeadcodeError("surrogate heads need token ids: call the model with input_ids, not inputs_embeds")
        ids = ids if ids.dim() == 2 else ids[None]
        past = self.get_seq_length()
        if past == 0:
            full = mask is not None and mask.dim() == 2 and mask.shape == ids.shape
            self.start = first_real(mask) if full else torch.zeros(ids.shape[0], dtype=torch.long)
            self.start = self.start.cpu().contiguous()
        elif self.start is None or self.start.shape[0] != ids.shape[0]:
            raise HeadcodeError("this headcode cache holds another batch: start again from the prompt "
                                "with a new cache")
        self.new_ids = ids.detach().to("cpu", torch.long).contiguous()
        if self.needs_ids:
            self.ids = self.new_ids if past == 0 else torch.cat([self.ids, self.new_ids], dim=1)

    def _rows(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        if self.start is not None:
            self.start = fn(self.start)
        if self.ids is not None:
            self.ids = fn(self.ids)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        self._rows(lambda t: t.index_select(0, beam_idx.cpu()))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        self._rows(lambda t: t[indices.cpu()])

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        self._rows(lambda t: t.repeat_interleave(repeats, dim=0))

    def reset(self) -> None:
        super().reset()
        self.start = self.new_ids = self.ids = None


def cache_nbytes(cache: Cache) -> int:
    """Bytes held by a cache's own tensors: K/V of every layer, selector states and token ids."""
    total = 0
    for layer in cache.layers:
        if isinstance(layer, HeadcodeLayer):
            total += layer.nbytes()
        else:
            total += sum(t.numel() * t.element_size() for t in (layer.keys, layer.values) if t is not None)
    for name in ("start", "ids"):
        t = getattr(cache, name, None)
        if isinstance(t, torch.Tensor):
            total += t.numel() * t.element_size()
    return total
