"""Running a model with some attention heads replaced by programs (docs/architecture.md, semantics 1-3).

The plan is checked against the model once, where it meets it; then two explicit steps, and an
undo (gpt-fast ``convert_for_runtime`` style)::

    plan = plan_for_model("surrogates.safetensors", loaded)  # loaded and checked: tokenizer, model, heads
    heads = build_surrogates(plan, loaded)                   # {HeadRef: HeadFn}: the one head map
    handle = apply_plan(loaded.model, heads)                 # the model now runs the programs
    ...
    handle.remove()                                          # the model is exactly as before

or ``with surrogates_applied(loaded, plan): ...``. The handle is ``model.headcode_handle`` while
the plan is applied.

Per layer, ``LayerSurrogate`` is attached as ``module._headcode_surrogate``; headcode's attention
function hands it the layer: the kept heads go through SDPA (``attention.neural_attention``), the
replaced heads compute ``A_program @ V_head``; the model's own output projection follows.

Two ways to run the replaced heads, chosen by the cache the call was given:
- a ``HeadcodeCache`` (``runtime.surrogate.cache``; what ``generate`` uses once a plan is applied):
  the compiled heads of the layer run in one kernel call that advances their selector states by
  this call's tokens (O(terms * D) per decoding step); the cache keeps K/V only for KV groups with
  a neural head. Heads that are not compiled programs are recomputed from their group's values.
- no cache, or a ``DynamicCache`` given by hand: the ids come from the token history
  (``TokenHistory``) and each replaced head reads its group's values over the whole history (a
  whole sequence with numba-compiled heads still runs them in one call per layer).

Work a replaced head no longer needs is skipped: its neural attention always; for Llama-style
separate projections (``q_proj``/``k_proj``) also its rows of the query projection, and the key
rows of a KV group all of whose heads are replaced (sliced copies, swapped back on ``remove``).
``v_proj`` keeps every row: a replaced head's output is ``A_program @ V_head``, so each new
token's values are still needed to update the selector states (the headcode cache does not
store them). GPT-2's fused ``c_attn`` still computes the replaced heads' queries and keys.
"""

from __future__ import annotations

import functools
import os
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import cached_property
from typing import Any

import torch
from torch import nn

from headcode.compiler.head import SurrogatePlan
from headcode.errors import HeadcodeError
from headcode.kernels.program_head import backends
from headcode.kernels.program_head.stream import LayerProgram
from headcode.runtime.model.attention import NAME, grouped_attention, neural_attention, use_headcode_attention
from headcode.runtime.model.capture import attention_modules
from headcode.runtime.model.heads import HeadRef
from headcode.runtime.surrogate.cache import HeadcodeCache, HeadcodeLayer, LayerLayout
from headcode.runtime.surrogate.history import TokenHistory
from headcode.runtime.surrogate.replacements import CompiledHeadFn, HeadFn, ProgramHeadFn

# model types whose attention reads q_proj/k_proj as ``view(*shape, -1, head_dim)`` with no
# norm over the whole projection: their projections can be sliced to the heads still computed
SLICEABLE = frozenset({"llama", "mistral", "qwen2", "qwen3"})


class LayerSurrogate:
    """One layer's attention with ``fns`` (query head -> HeadFn) in place of those heads."""

    def __init__(self, fns: Mapping[int, HeadFn], n_heads: int, n_kv_heads: int, history: TokenHistory,
                 vocab: int = 0):
        self.fns = dict(sorted(fns.items()))
        self.n_heads, self.group = n_heads, n_heads // n_kv_heads
        self.neural = [h for h in range(n_heads) if h not in self.fns]
        self.history = history
        self.q_rows: tuple[int, ...] = tuple(range(n_heads))       # head of each row of `query`
        self.k_rows: tuple[int, ...] = tuple(range(n_kv_heads))    # KV group of each row of `key`
        self._index: dict[tuple, tuple[torch.Tensor, ...]] = {}
        # with a HeadcodeCache: compiled heads keep selector states, the others are recomputed
        self.stateful = [h for h, fn in self.fns.items() if isinstance(fn, CompiledHeadFn)]
        self.recompute = [h for h in self.fns if h not in self.stateful]
        self.key_groups = tuple(sorted({h // self.group for h in self.neural}))
        # the neural heads are every head of the kept groups: SDPA reads the groups without a gather
        self.whole_groups = len(self.neural) == len(self.key_groups) * self.group
        self.value_groups = tuple(sorted({h // self.group for h in self.neural + self.recompute}))
        self.program = LayerProgram.build([self.fns[h].head.run_spec for h in self.stateful],
                                          [h // self.group for h in self.stateful], vocab) if self.stateful else None
        # calibrated heads: a constant output added after A @ V (one place, every path below)
        self.constants = {h: c for h, c in ((h, getattr(getattr(fn, "head", None), "constant", ()))
                                            for h, fn in self.fns.items()) if len(c)}
        self._const: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        # without a headcode cache, a whole sequence still runs the layer's compiled heads in one call
        # the registered backend whose functional step carries the layer's states: the heads' own
        # when they agree on one, else the default
        chosen = {self.fns[h].backend for h in self.stateful} & set(backends.names())
        self.backend = chosen.pop() if len(chosen) == 1 else backends.DEFAULT
        self.one_call = bool(self.stateful) and self.backend == "numba"

    @cached_property
    def layout(self) -> LayerLayout:
        """What this layer's ``HeadcodeLayer`` keeps (read once ``apply_plan`` has sliced the projections)."""
        return LayerLayout(self.k_rows, self.key_groups, self.value_groups, self.program, self.backend)

    def _indices(self, q_rows: tuple[int, ...], k_rows: tuple[int, ...], v_rows: tuple[int, ...] | None,
                 device: torch.device) -> tuple[Any, ...]:
        """Index tensors for the neural heads: their rows of ``query``/``key``/``value`` (given the
        head of each query row and the group of each key/value row), the heads, and whether the
        query needs no gather."""
        key = (q_rows, k_rows, v_rows, str(device))
        if key not in self._index:
            try:
                qi = [q_rows.index(h) for h in self.neural]
                ki = [k_rows.index(h // self.group) for h in self.neural]
                vi = [h // self.group if v_rows is None else v_rows.index(h // self.group) for h in self.neural]
            except ValueError as e:
                raise HeadcodeError("the attention got fewer query/key heads than the surrogate plan "
                                    "expects: remove the plan and apply it again") from e
            idx = tuple(torch.tensor(x, dtype=torch.long, device=device) for x in (qi, ki, vi, self.neural))
            self._index[key] = idx + (qi == list(range(len(q_rows))),)  # True: query needs no gather
        return self._index[key]

    def _stateful_index(self, device: torch.device) -> torch.Tensor:
        key = ("stateful", str(device))
        if key not in self._index:
            self._index[key] = (torch.tensor(self.stateful, dtype=torch.long, device=device),)
        return self._index[key][0]

    def _rows(self, n: int, rows: tuple[int, ...]) -> tuple[int, ...]:
        return rows if n == len(rows) else tuple(range(n))

    def __call__(self, module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 mask: torch.Tensor | None, scaling: float, dropout: float = 0.0) -> torch.Tensor:
        """``query [B, h, q, D]`` (h kept rows), ``key [B, k, kv, D]``, ``value [B, KV, kv, D]`` -> ``[B, H, q, D]``."""
        if getattr(module, "_headcode_capture", None) is not None:
            raise HeadcodeError("cannot capture attention on a layer with surrogate heads: "
                                "remove the surrogate plan before capturing")
        cache = self.history.cache
        if isinstance(cache, HeadcodeCache):
            layer = cache.layers[module.layer_idx]
            if not isinstance(layer, HeadcodeLayer) or layer.layout is not self.layout:
                raise HeadcodeError("this headcode cache was made for another surrogate plan: start again "
                                    "from the prompt with a new cache")
            return self._with_states(cache, layer, query, key, value, mask, scaling, dropout)
        B, _, n_q, _ = query.shape
        out = value.new_empty(B, self.n_heads, n_q, value.shape[-1])
        if self.neural:
            qi, ki, vi, heads, identity = self._indices(self._rows(query.shape[1], self.q_rows),
                                                        self._rows(key.shape[1], self.k_rows), None, query.device)
            q = query if identity else query.index_select(1, qi)
            out[:, heads] = neural_attention(q, key, value, mask, scaling, ki, vi, dropout).to(out.dtype)
        if self.fns:
            ids, start = self.history.current(value.shape[2])
            T = ids.shape[1]
            ids, start = ids.to(value.device), start.to(value.device)
            heads = self.fns
            if self.one_call and n_q == T and value.device.type == "cpu":  # a whole sequence: one kernel call
                be = backends.get(self.backend)
                res, _ = be.step(self.program, be.zero_state(self.program, B, value.shape[-1]), ids,
                                 value[:, :, :T], start)
                out[:, self.stateful] = res.to(out.dtype)
                heads = {h: self.fns[h] for h in self.recompute}
            for h, fn in heads.items():
                out[:, h] = fn(ids, value[:, h // self.group, :T], start, n_q).to(out.dtype)
            self._add_constants(out, start, T)
        return out

    def _add_constants(self, out: torch.Tensor, start: torch.Tensor, T: int) -> None:
        """``out [B, H, n_q, D]`` += each calibrated head's constant, on the query rows at or after
        ``start`` (rows of left padding stay zero). The rows are the last ``n_q`` of ``T``."""
        if not self.constants:
            return
        key = str(out.device)
        if key not in self._const:
            heads = torch.tensor(list(self.constants), dtype=torch.long, device=out.device)
            self._const[key] = (heads, torch.tensor(list(self.constants.values()), dtype=torch.float64,
                                                    device=out.device))
        heads, c = self._const[key]
        n_q = out.shape[2]
        pos = torch.arange(T - n_q, T, device=out.device)
        real = (pos[None, :] >= start.to(out.device)[:, None]).to(out.dtype)        # [B, n_q]
        out[:, heads] += real[:, None, :, None] * c.to(out.dtype)[None, :, None, :]

    def _with_states(self, cache: HeadcodeCache, layer: HeadcodeLayer, query: torch.Tensor, key: torch.Tensor,
                     value: torch.Tensor, mask: torch.Tensor | None, scaling: float, dropout: float) -> torch.Tensor:
        """With a ``HeadcodeCache``: ``key``/``value`` hold only the kept groups' history; compiled
        heads advance their selector states by this call's tokens (one kernel call for the layer)."""
        B, _, n_q, _ = query.shape
        out = value.new_empty(B, self.n_heads, n_q, value.shape[-1])
        if self.neural:
            qi, ki, vi, heads, identity = self._indices(self._rows(query.shape[1], self.q_rows), self.key_groups,
                                                        self.value_groups, query.device)
            q = query if identity else query.index_select(1, qi)
            if self.whole_groups and self.key_groups == self.value_groups:  # no copy of the K/V history
                res = grouped_attention(q, key, value, mask, scaling, dropout)
            else:
                res = neural_attention(q, key, value, mask, scaling, ki, vi, dropout)
            out.index_copy_(1, heads, res.to(out.dtype))
        if self.stateful:
            res = layer.step(cache.new_ids, cache.start)
            if len(self.stateful) == self.n_heads:
                out = res.to(out.dtype)
            else:
                out.index_copy_(1, self._stateful_index(out.device), res.to(out.dtype))
        if self.recompute:
            if cache.ids is None or cache.start is None:
                raise HeadcodeError("the headcode cache holds no token ids: call the model itself with input_ids")
            ids, start = cache.ids.to(value.device), cache.start.to(value.device)
            for h in self.recompute:
                fn = self.fns[h]
                out[:, h] = fn(ids, value[:, self.value_groups.index(h // self.group)], start, n_q).to(out.dtype)
        self._add_constants(out, cache.start.to(out.device), layer.get_seq_length())  # after update: with this call
        return out


def _sliced_linear(lin: nn.Linear, rows: list[int], head_dim: int) -> nn.Linear:
    idx = torch.cat([torch.arange(r * head_dim, (r + 1) * head_dim) for r in rows]).to(lin.weight.device)
    new = nn.Linear(lin.in_features, len(idx), bias=lin.bias is not None,
                    device=lin.weight.device, dtype=lin.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(lin.weight.index_select(0, idx))
        if lin.bias is not None:
            new.bias.copy_(lin.bias.index_select(0, idx))
    new.requires_grad_(lin.weight.requires_grad)
    return new


class SurrogateHandle:
    """What ``apply_plan`` changed, to undo it: ``remove()`` (idempotent), or use as a context manager."""

    def __init__(self, model: nn.Module, layers: dict[int, LayerSurrogate], history: TokenHistory):
        self.model, self.layers, self.history = model, layers, history
        self.attention_modules = attention_modules(model)
        self.heads = tuple(HeadRef(l, h) for l in sorted(layers) for h in layers[l].fns)
        self._restore: list[tuple[nn.Module, str, nn.Module]] = []
        self._hook: torch.utils.hooks.RemovableHandle | None = None
        self._prev_impl: str | None = None
        self.active = True

    def remove(self) -> None:
        if not self.active:
            return
        for mod in attention_modules(self.model):
            if hasattr(mod, "_headcode_surrogate"):
                delattr(mod, "_headcode_surrogate")
        for mod, name, orig in reversed(self._restore):
            setattr(mod, name, orig)
        self._restore.clear()
        if self._hook is not None:
            self._hook.remove()
        self.model.__dict__.pop("generate", None)
        if self._prev_impl is not None and self._prev_impl != NAME:
            self.model.set_attn_implementation(self._prev_impl)
        self.history.reset()
        self.model.__dict__.pop("headcode_handle", None)
        self.active = False

    def new_cache(self) -> HeadcodeCache:
        """A ``HeadcodeCache`` for this plan (``generate`` makes one by itself)."""
        handle = weakref.ref(self)

        def alive() -> bool:
            h = handle()
            return h is not None and h.active

        return HeadcodeCache({l: ls.layout for l, ls in self.layers.items()}, len(self.attention_modules),
                             any(ls.recompute for ls in self.layers.values()), alive)

    def _install_cache(self) -> None:
        """``generate`` decodes through a ``HeadcodeCache``: the model's own ``generate`` (an instance
        attribute over the class's public method, the way transformers installs ``custom_generate``)
        is given ``handle.new_cache()`` as its documented cache argument when the caller passes no
        cache, keeps the cache on and asks for no ``cache_implementation``; anything else goes through
        as given."""
        generate = self.model.generate  # the class's bound method
        from transformers.generation import utils as generation_utils

        # transformers 5.24 renamed past_key_values to cache (ALL_CACHE_NAMES lists both since then)
        keyword = "cache" if hasattr(generation_utils, "ALL_CACHE_NAMES") else "past_key_values"
        handle = weakref.ref(self)

        @functools.wraps(generate)
        def generate_with_states(*args: Any, **kwargs: Any) -> Any:
            h = handle()
            if h is not None and h.active and _wants_default_cache(_generation_config_of(generate), kwargs):
                kwargs[keyword] = h.new_cache()
            return generate(*args, **kwargs)

        self.model.__dict__["generate"] = generate_with_states

    def __enter__(self) -> SurrogateHandle:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()


def _generation_config_of(generate: Callable[..., Any]) -> Any:
    """The ``generation_config`` of the model whose bound ``generate`` this is."""
    return getattr(getattr(generate, "__self__", None), "generation_config", None)


def _wants_default_cache(model_config: Any, kwargs: dict[str, Any]) -> bool:
    """Would ``generate`` called with ``kwargs`` make its default ``DynamicCache``? (no cache given,
    the cache on, no ``cache_implementation``)"""
    if any(kwargs.get(k) is not None for k in ("cache", "past_key_values")):
        return False
    config = kwargs.get("generation_config") or model_config
    use_cache = kwargs.get("use_cache", getattr(config, "use_cache", True))
    implementation = kwargs.get("cache_implementation", getattr(config, "cache_implementation", None))
    # transformers refuses a cache together with any cache_implementation, "dynamic" included
    return use_cache is not False and implementation is None


def _model_of(model: Any) -> nn.Module:
    return model.model if hasattr(model, "tokenizer") and hasattr(model, "fingerprint") else model


def apply_plan(model: Any, heads: Mapping[HeadRef, HeadFn],
               slice_projections: bool = True, stateful: bool = True) -> SurrogateHandle:
    """Put ``heads`` (``{HeadRef: HeadFn}``, e.g. from ``build_surrogates``) in place; returns the
    handle that undoes it (also ``model.headcode_handle`` until then). ``model``: a transformers
    causal LM or a ``LoadedModel``.
    ``stateful``: ``generate`` decodes through a ``HeadcodeCache`` (selector states, a smaller
    cache); ``False`` keeps transformers' ``DynamicCache`` and recomputes replaced heads each step."""
    model = _model_of(model)
    if model.__dict__.get("headcode_handle") is not None:
        raise HeadcodeError("a surrogate plan is already applied to this model: call remove() on "
                            "its handle (model.headcode_handle) before applying another")
    cfg = model.config
    n_heads = cfg.num_attention_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
    mods = attention_modules(model)
    history = TokenHistory()
    outside = [str(h) for h in heads if not (0 <= h.layer < len(mods) and 0 <= h.head < n_heads)]
    if outside:
        raise HeadcodeError(f"heads {', '.join(sorted(outside)[:5])} are outside this model ({len(mods)} layers "
                            f"x {n_heads} heads): wrong plan for this model")
    by_layer: dict[int, dict[int, HeadFn]] = {}
    for h, fn in heads.items():
        by_layer.setdefault(h.layer, {})[h.head] = fn
    layers = {l: LayerSurrogate(fns, n_heads, n_kv, history, getattr(cfg, "vocab_size", 0) or 0)
              for l, fns in sorted(by_layer.items())}
    handle = SurrogateHandle(model, layers, history)
    handle._prev_impl = use_headcode_attention(model)
    handle._hook = history.attach(model)
    if stateful:
        handle._install_cache()
    can_slice = slice_projections and getattr(cfg, "model_type", "") in SLICEABLE
    for layer, ls in layers.items():
        mod = mods[layer]
        mod._headcode_surrogate = ls
        if can_slice and isinstance(getattr(mod, "q_proj", None), nn.Linear) \
                and isinstance(getattr(mod, "k_proj", None), nn.Linear):
            head_dim = mod.q_proj.out_features // n_heads
            q_rows = tuple(ls.neural) or (0,)
            k_rows = tuple(sorted({h // ls.group for h in ls.neural})) or (0,)
            if len(q_rows) < n_heads:
                handle._restore.append((mod, "q_proj", mod.q_proj))
                mod.q_proj = _sliced_linear(mod.q_proj, list(q_rows), head_dim)
                ls.q_rows = q_rows
            if len(k_rows) < n_kv:
                handle._restore.append((mod, "k_proj", mod.k_proj))
                mod.k_proj = _sliced_linear(mod.k_proj, list(k_rows), head_dim)
                ls.k_rows = k_rows
    model.__dict__["headcode_handle"] = handle
    return handle


def _head_fn(obj: Any, tokenizer: Any, backend: str) -> HeadFn:
    from headcode.compiler.head import CompiledHead
    from headcode.compiler.program import Program

    if isinstance(obj, CompiledHead) and not obj.compiled:  # a plan is data: its source never runs
        raise HeadcodeError(f"head {obj.name} of the plan is not compiled ({'; '.join(obj.reasons)[:200]}): "
                            "only compiled heads run; fix the program and run `headcode compile` again")
    if isinstance(obj, Program):
        if tokenizer is None:
            raise HeadcodeError("programs that are not compiled need the model's tokenizer: pass a LoadedModel")
        from headcode.compiler.program import Untraceable

        try:  # the traced IR, not the free-form callable: causal by construction
            obj = obj.traced()
        except Untraceable as e:
            raise HeadcodeError(f"program {obj.name} cannot run in a model: {e}") from e
        return ProgramHeadFn(obj, tokenizer)
    if isinstance(obj, CompiledHead):
        return CompiledHeadFn(obj, backend)
    if not callable(obj):
        raise HeadcodeError(f"cannot use a {type(obj).__name__} as a surrogate head: give a CompiledHead, "
                            "a Program or a callable (ids, v, start, n_q) -> out")
    return obj


def check_plan(plan: SurrogatePlan, loaded: Any) -> None:
    """``HeadcodeError`` (every reason, one line) when ``plan`` was made for another tokenizer or
    model, or names heads this model does not have."""
    bad = []
    if plan.fingerprint and plan.fingerprint != loaded.fingerprint:
        bad.append(f"it was compiled for another tokenizer (fingerprint {plan.fingerprint}), but model "
                   f"{loaded.name!r} has {loaded.fingerprint}: compile the programs again for this model")
    if plan.model_id and plan.model_id != loaded.name:
        bad.append(f"it was made for model {plan.model_id!r}, not {loaded.name!r}: use the plan made for "
                   "this model, or explain and compile it again")
    heads = [HeadRef.match(k) for k in plan.heads]
    names = [k for k, h in zip(plan.heads, heads) if h is None]
    outside = [str(h) for h in heads if h is not None and not (h.layer < loaded.n_layers and h.head < loaded.n_heads)]
    if names:
        bad.append(f"heads {', '.join(names[:5])} are not named L<layer>.H<head>")
    if outside:
        bad.append(f"heads {', '.join(outside[:5])} are outside this model ({loaded.n_layers} layers x "
                   f"{loaded.n_heads} heads)")
    sizes = [k for k, h in plan.heads.items() if h.constant and len(h.constant) != loaded.head_dim]
    if sizes:
        bad.append(f"heads {', '.join(sizes[:5])} carry a constant output that is not {loaded.head_dim} values "
                   "(this model's head size): calibrate the plan for this model")
    if bad:
        raise HeadcodeError("the surrogate plan does not fit this model: " + "; ".join(bad))


def plan_for_model(source: str | os.PathLike[str] | SurrogatePlan, loaded: Any) -> SurrogatePlan:
    """The plan in ``source`` (a ``surrogates.safetensors`` path or a ``SurrogatePlan``), checked
    against ``loaded`` (``check_plan``): the one check a plan gets before it runs in a model."""
    from headcode.compiler.export import load_plan

    plan = source if isinstance(source, SurrogatePlan) else load_plan(source)
    check_plan(plan, loaded)
    return plan


def build_surrogates(plan: Any, loaded: Any = None, backend: str = "numba",
                     heads: Any = None) -> dict[HeadRef, HeadFn]:
    """``{HeadRef: HeadFn}`` from a ``SurrogatePlan`` (its ``heads``; check it first with
    ``plan_for_model``) or a mapping ``{HeadRef | "L3.H7": CompiledHead | Program | HeadFn}``;
    ``heads`` keeps only those. ``loaded`` gives the tokenizer that uncompiled programs need."""
    items = plan.heads.items() if isinstance(plan, SurrogatePlan) else plan.items()
    keep = None if heads is None else {HeadRef.parse(h) for h in heads}
    tokenizer = getattr(loaded, "tokenizer", None)
    return {ref: _head_fn(obj, tokenizer, backend) for ref, obj in ((HeadRef.parse(k), o) for k, o in items)
            if keep is None or ref in keep}


@contextmanager
def surrogates_applied(loaded: Any, plan: Any, backend: str = "numba", heads: Any = None,
                       slice_projections: bool = True) -> Iterator[SurrogateHandle]:
    """``with surrogates_applied(loaded, plan): ...``: the plan (checked, or a head mapping) in place
    inside, undone after."""
    handle = apply_plan(loaded, build_surrogates(plan, loaded, backend, heads), slice_projections)
    try:
        yield handle
    finally:
        handle.remove()
