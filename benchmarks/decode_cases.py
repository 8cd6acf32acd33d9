"""Serving benchmark cases (shared by ``benchmarks/test_decode.py`` and ``headcode bench --only decode``):
decoding tokens/s after a context of C tokens at batch b, prefill at T, and the KV cache's bytes per
token, base model vs a share of heads replaced as whole KV groups (decoding through the
``HeadcodeCache``: selector states, no K/V for replaced groups).

``headcode bench --only decode`` runs each side in a process of its own (``in_own_process``), the
same cases in the same order: a K/V buffer growing by concatenation costs ~6x more the first time a
process reaches its size (glibc's mmap threshold), so timing the base first in the same process
flattered the smaller surrogate cache (issue 20). Each ratio is printed beside its ceiling from
what each side spends (``sides_limit``): the base's step over the surrogate side's step with its
replaced heads free -- the base's attention time for the kept heads plus the time the surrogate
side measured outside attention (``a``: the time inside the attention modules -- projections,
rotary, cache update, attention, selector states -- over the whole step, hooks on the same run).
``limit_base_only`` keeps the old ``1 / (1 - s * a_base)``. Times are medians over repeated runs
after a warm-up. (``benchmarks/test_decode.py`` still times both sides in one pytest process.)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Side:
    """One side of the comparison, run in a process of its own: the model ``spec``, and the plan
    file and heads put in place (``plan is None``: the base model)."""

    spec: str
    plan: str | None
    heads: tuple[str, ...]
    contexts: tuple[int, ...]
    batches: tuple[int, ...]
    prefill_lengths: tuple[int, ...]
    steps: int
    repeat: int
    threads: int


def run_side(side: Side) -> dict[str, Any]:
    """In a fresh process: every decode case (ms per step, attention's share of it, cache bytes per
    token) and prefill case (ms, attention's share) of ``side``, in the same order on both sides."""
    from contextlib import nullcontext

    from transformers import DynamicCache

    from headcode.compiler.export import load_plan
    from headcode.runtime.model.loading import load_model
    from headcode.runtime.surrogate.apply import surrogates_applied
    from headcode.runtime.surrogate.cache import cache_nbytes

    torch.set_num_threads(side.threads)
    lm = load_model(side.spec)
    out: dict[str, Any] = {"decode": {}, "prefill": {}}
    applied = surrogates_applied(lm, load_plan(side.plan), heads=side.heads) if side.plan else nullcontext()
    with applied as handle:
        def new_cache() -> Any:
            return handle.new_cache() if handle is not None else DynamicCache(config=lm.model.config)

        for C in side.contexts:
            for B in side.batches:
                cache = new_cache()
                run = decode_fn(lm, cache, prefill(lm, batch_ids(lm, B, C), cache), side.steps)
                ms = median_ms(run, side.repeat, 1) / side.steps
                out["decode"][f"{C},{B}"] = dict(ms=ms, a=attention_share(lm, run),
                                                 bpt=cache_nbytes(cache) / (B * cache.get_seq_length()))
        for T in side.prefill_lengths:
            ids = batch_ids(lm, 1, T)

            def fresh(i: torch.Tensor = ids) -> Any:
                return prefill(lm, i, new_cache())

            out["prefill"][str(T)] = dict(ms=median_ms(fresh, side.repeat, 1), a=attention_share(lm, fresh))
    return out


def in_own_process(side: Side) -> dict[str, Any]:
    """``run_side(side)`` in a fresh (spawned) Python process: nothing the other side allocated,
    compiled or warmed is there (glibc's mmap threshold, torch's caching, Numba's dispatch)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(run_side, side).result()


def sides_limit(share: float, base: dict[str, float], ours: dict[str, float]) -> float:
    """The ceiling from what each side spends: the base's time over the surrogate side's time if its
    replaced heads cost nothing -- the base's attention for the kept heads, ``(1 - share) * a_base *
    base_ms``, plus what the surrogate side measured outside attention, ``(1 - a_ours) * ours_ms``."""
    ideal = (1 - share) * base["a"] * base["ms"] + (1 - ours["a"]) * ours["ms"]
    return base["ms"] / max(1e-12, ideal)


def decode_cases(loaded: Any, settings: Settings, plan: Any = None,
                 log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Decode tokens/s at each context and batch, prefill at each length, cache bytes per token:
    base vs each share of heads replaced as whole KV groups, each side in its own process."""
    import tempfile
    from pathlib import Path

    from headcode.benchmarks.model_cases import plan_pool
    from headcode.compiler.export import save_plan

    source = "file" if plan is not None else "programs"
    plan = plan if plan is not None else programs_plan(loaded)
    total = loaded.n_layers * loaded.n_heads
    chosen = {f: group_heads(loaded, f, plan_pool(plan)) for f in settings.decode_fractions}
    cases: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = str(save_plan(plan, Path(tmp) / "plan.safetensors"))

        def side(p: str | None, heads: Sequence[HeadRef] = ()) -> dict[str, Any]:
            return in_own_process(Side(loaded.spec, p, tuple(str(h) for h in heads), tuple(settings.decode_contexts),
                                       tuple(settings.decode_batches), tuple(settings.prefill_lengths),
                                       settings.decode_steps, settings.decode_repeat, torch.get_num_threads()))

        log("  decode: the base model in its own process")
        base = side(None)
        for f, heads in chosen.items():
            share = len(heads) / total
            log(f"  decode: {share:.0%} of the heads replaced, in its own process")
            ours = side(path, heads)
            cases += _cases(base, ours, share, f, len(heads), source, loaded.head_dim, settings.decode_steps, log)
    return cases


def _cases(base: dict[str, Any], ours: dict[str, Any], share: float, f: float, n: int, source: str, d: int,
           steps: int, log: Callable[[str], None]) -> list[dict[str, Any]]:
    out = []
    for key, b in base["decode"].items():
        o, (C, B) = ours["decode"][key], (int(x) for x in key.split(","))
        c = case(f"decode[{share:.0%}] C={C} B={B}", "decode", C, d, o["ms"], b["ms"], batch=B, replaced=n,
                 fraction=share, target_fraction=f, plan=source, tokens_per_s=1e3 * B / o["ms"],
                 base_tokens_per_s=1e3 * B / b["ms"], attention_share=b["a"], surrogate_attention_share=o["a"],
                 limit=sides_limit(share, b, o), limit_base_only=limit(share, b["a"]),
                 cache_bytes_per_token=o["bpt"], base_cache_bytes_per_token=b["bpt"],
                 cache_ratio=o["bpt"] / b["bpt"], steps=steps, separate_processes=True)
        out.append(c)
        log(f"  decode C={C} B={B}: base {c['base_tokens_per_s']:.1f} tok/s, {share:.0%} replaced "
            f"{c['tokens_per_s']:.1f} tok/s = {c['speedup']:.2f}x (limit {c['limit']:.2f}x; a = {b['a']:.2f} base, "
            f"{o['a']:.2f} ours); cache {o['bpt']:.0f} vs {b['bpt']:.0f} B/token")
    for T, b in base["prefill"].items():
        o = ours["prefill"][T]
        c = case(f"prefill[{share:.0%}] T={T}", "prefill", int(T), d, o["ms"], b["ms"], batch=1, replaced=n,
                 fraction=share, target_fraction=f, plan=source, attention_share=b["a"],
                 surrogate_attention_share=o["a"], limit=sides_limit(share, b, o),
                 limit_base_only=limit(share, b["a"]), separate_processes=True)
        out.append(c)
        log(f"  prefill T={T}: base {b['ms']:.1f} ms, {share:.0%} replaced {o['ms']:.1f} ms = {c['speedup']:.2f}x "
            f"(limit {c['limit']:.2f}x)")
    return out
