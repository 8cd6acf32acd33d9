"""Serving benchmark cases (shared by ``benchmarks/test_decode.py`` and ``headcode bench --only decode``):
decoding tokens/s after a context of C tokens at batch b, prefill at T, and the KV cache's bytes per
token, base model vs a share of heads replaced as whole KV groups (decoding through the
``HeadcodeCache``: selector states, no K/V for replaced groups).

Each ratio is printed beside its ceiling ``1 / (1 - s * a)``: ``s`` is the share of heads replaced
and ``a`` attention's measured share of the base model's step (the time inside the attention
modules -- projections, rotary, cache update, attention -- over the whole step, measured with
hooks on the same batch and context). Times are medians over repeated runs after a warm-up.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from headcode.benchmarks.cases import Settings, case, median_ms
from headcode.benchmarks.model_cases import programs_plan, text_ids
from headcode.runtime.model.heads import HeadRef


def group_heads(loaded: Any, fraction: float, pool: Sequence[HeadRef] | None = None) -> list[HeadRef]:
    """``round(fraction * groups)`` whole KV groups, evenly spaced in layer-major order (only groups
    whose heads are all in ``pool`` when given): every query head of each."""
    from headcode.runtime.evaluation.selection_groups import kv_groups

    every = [HeadRef(layer, h) for layer in range(loaded.n_layers) for h in range(loaded.n_heads)]
    groups = kv_groups(every if pool is None else pool, loaded.n_heads, loaded.n_kv_heads)
    n = min(len(groups), max(1, round(fraction * loaded.n_layers * loaded.n_kv_heads)))
    return [h for i in range(n) for h in groups[(i * len(groups)) // n].heads]


def batch_ids(loaded: Any, B: int, T: int) -> torch.Tensor:
    """``[B, T]``: the benchmark text, each row starting at another offset."""
    ids = text_ids(loaded.tokenizer, T + 8 * B)[0]
    return torch.stack([ids[8 * b: 8 * b + T] for b in range(B)])


def prefill(loaded: Any, ids: torch.Tensor, cache: Any) -> torch.Tensor:
    """Run the prompt into ``cache``; returns the next tokens ``[B, 1]``."""
    with torch.no_grad():
        out = loaded.model(input_ids=ids, attention_mask=torch.ones_like(ids), cache=cache, use_cache=True,
                           logits_to_keep=1)
    return out.logits[:, -1:].argmax(-1)


def decode_fn(loaded: Any, cache: Any, nxt: torch.Tensor, steps: int) -> Callable[[], Any]:
    """``steps`` greedy decoding steps continuing ``cache`` (each run continues the last)."""
    state = {"nxt": nxt}

    def run() -> Any:
        with torch.no_grad():
            for _ in range(steps):
                out = loaded.model(input_ids=state["nxt"], cache=cache, use_cache=True)
                state["nxt"] = out.logits[:, -1:].argmax(-1)
        return state["nxt"]
    return run


def attention_share(loaded: Any, run: Callable[[], Any]) -> float:
    """Share of ``run()``'s wall time spent inside the attention modules (forward hooks)."""
    from headcode.runtime.model.capture import attention_modules

    spent = [0.0]
    t0: dict[int, float] = {}

    def pre(mod: Any, *_: Any) -> None:
        t0[id(mod)] = time.perf_counter()

    def post(mod: Any, *_: Any) -> None:
        spent[0] += time.perf_counter() - t0.pop(id(mod))

    hooks = [h for m in attention_modules(loaded.model)
             for h in (m.register_forward_pre_hook(pre), m.register_forward_hook(post))]
    try:
        run()
        spent[0] = 0.0
        start = time.perf_counter()
        run()
        total = time.perf_counter() - start
    finally:
        for h in hooks:
            h.remove()
    return spent[0] / total if total > 0 else 0.0


def limit(share: float, a: float) -> float:
    """The ceiling of the speed-up from replacing ``share`` of the heads: ``1 / (1 - share * a)``."""
    return 1.0 / max(1e-9, 1.0 - share * a)


def decode_cases(loaded: Any, settings: Settings, plan: Any = None,
                 log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Decode tokens/s at each context and batch, prefill at each length, cache bytes per token:
    base vs each share of heads replaced as whole KV groups."""
    from transformers import DynamicCache

    from headcode.benchmarks.model_cases import plan_pool
    from headcode.runtime.surrogate.apply import surrogates_applied
    from headcode.runtime.surrogate.cache import cache_nbytes

    source = "file" if plan is not None else "programs"
    plan = plan if plan is not None else programs_plan(loaded)
    pool = plan_pool(plan)
    total = loaded.n_layers * loaded.n_heads
    r, w, N = settings.decode_repeat, 1, settings.decode_steps
    cases: list[dict[str, Any]] = []
    chosen = {f: group_heads(loaded, f, pool) for f in settings.decode_fractions}
    for C in settings.decode_contexts:
        for B in settings.decode_batches:
            ids = batch_ids(loaded, B, C)
            cache = DynamicCache(config=loaded.model.config)
            run = decode_fn(loaded, cache, prefill(loaded, ids, cache), N)
            a = attention_share(loaded, run)
            base = median_ms(run, r, w) / N
            base_bpt = cache_nbytes(cache) / (B * cache.get_seq_length())
            for f, heads in chosen.items():
                share = len(heads) / total
                with surrogates_applied(loaded, plan, heads=heads) as handle:
                    cache = handle.new_cache()
                    run = decode_fn(loaded, cache, prefill(loaded, ids, cache), N)
                    ms = median_ms(run, r, w) / N
                    bpt = cache_nbytes(cache) / (B * cache.get_seq_length())
                cases.append(case(f"decode[{share:.0%}] C={C} B={B}", "decode", C, loaded.head_dim, ms, base,
                                  batch=B, replaced=len(heads), fraction=share, target_fraction=f, plan=source,
                                  tokens_per_s=1e3 * B / ms, base_tokens_per_s=1e3 * B / base, attention_share=a,
                                  limit=limit(share, a), cache_bytes_per_token=bpt, base_cache_bytes_per_token=base_bpt,
                                  cache_ratio=bpt / base_bpt, steps=N))
                c = cases[-1]
                log(f"  decode C={C} B={B}: base {c['base_tokens_per_s']:.1f} tok/s, {share:.0%} replaced "
                    f"{c['tokens_per_s']:.1f} tok/s = {c['speedup']:.2f}x (limit {c['limit']:.2f}x, a={a:.2f}); "
                    f"cache {bpt:.0f} vs {base_bpt:.0f} B/token")
    for T in settings.prefill_lengths:
        ids = batch_ids(loaded, 1, T)

        def make(new_cache: Callable[[], Any], i: torch.Tensor = ids) -> Callable[[], Any]:
            return lambda: prefill(loaded, i, new_cache())

        base_run = make(lambda: DynamicCache(config=loaded.model.config))
        a = attention_share(loaded, base_run)
        base = median_ms(base_run, r, w)
        for f, heads in chosen.items():
            share = len(heads) / total
            with surrogates_applied(loaded, plan, heads=heads) as handle:
                ms = median_ms(make(handle.new_cache), r, w)
            cases.append(case(f"prefill[{share:.0%}] T={T}", "prefill", T, loaded.head_dim, ms, base, batch=1,
                              replaced=len(heads), fraction=share, target_fraction=f, plan=source,
                              attention_share=a, limit=limit(share, a)))
            log(f"  prefill T={T}: base {base:.1f} ms, {share:.0%} replaced {ms:.1f} ms = {base / ms:.2f}x "
                f"(limit {limit(share, a):.2f}x, a={a:.2f})")
    return cases
