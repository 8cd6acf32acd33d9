"""Serving the default model (SmolLM2-135M) with heads replaced as whole KV groups, decoding through
the ``HeadcodeCache`` (``headcode.benchmarks.decode_cases``): greedy decoding steps after a context of C
tokens at batch B, and prefill at T, base vs 25% and 50% of heads replaced.

Groups: ``decode C=<C> B=<B>``, ``prefill T=<T>``; names ``base`` and ``replaced <p>%``.
``extra_info``: ``tokens_per_s``, ``speedup_vs_base``, ``limit`` (``1 / (1 - share * a)``, ``a`` =
attention's measured share of the base step), ``cache_bytes_per_token`` (counted from the cache's
tensors). Targets (issue 12): decode at C=4096, B=8: >= 1.5x base and within 90% of its limit;
prefill at T=4096 with 50% replaced within 90% of its limit.
Run: ``pytest benchmarks/test_decode.py --benchmark-only`` (minutes: contexts up to 4096);
``HEADCODE_BENCH_QUICK=1`` runs the small settings (a check that the cases work, not a figure).
"""

from __future__ import annotations

import os

import pytest
from transformers import DynamicCache

from headcode.benchmarks import decode_cases as bd
from headcode.benchmarks import model_cases as bmm
from headcode.benchmarks.cases import Settings
from headcode.runtime.surrogate.cache import cache_nbytes

S = Settings.quick() if os.environ.get("HEADCODE_BENCH_QUICK") else Settings.full()
FRACTIONS = [0.0, *S.decode_fractions]
_BASE: dict[tuple, dict] = {}


@pytest.fixture(scope="module")
def plan(lm):
    return bmm.programs_plan(lm)


def _label(f: float) -> str:
    return "base" if f == 0.0 else f"replaced {f:.0%}"


def _run(benchmark, lm, plan, key: tuple, fraction: float, measure) -> dict:
    """``measure(new_cache) -> (fn to time, per, after)``: times it base or with the heads replaced."""
    from headcode.runtime.surrogate.apply import surrogates_applied

    def base_cache():
        return DynamicCache(config=lm.model.config)

    if key not in _BASE:  # the base side, timed once per case in this run (with attention's share)
        fn, per, after = measure(base_cache)
        a = bd.attention_share(lm, fn)
        _BASE[key] = dict(ms=bd.median_ms(fn, S.decode_repeat, 1) / per, a=a, **after())
    base = _BASE[key]
    if fraction == 0.0:
        fn, per, after = measure(base_cache)
        benchmark.pedantic(fn, rounds=S.decode_repeat, warmup_rounds=1)
        extra, share = after(), 0.0
    else:
        heads = bd.group_heads(lm, fraction, bmm.plan_pool(plan))
        share = len(heads) / (lm.n_layers * lm.n_heads)
        with surrogates_applied(lm, plan, heads=heads) as handle:
            fn, per, after = measure(handle.new_cache)
            benchmark.pedantic(fn, rounds=S.decode_repeat, warmup_rounds=1)
            extra = after()
    ms = benchmark.stats.stats.median * 1e3 / per
    benchmark.extra_info.update(median_ms=ms, base_ms=base["ms"], speedup_vs_base=base["ms"] / ms,
                                attention_share=base["a"], limit=bd.limit(share, base["a"]), replaced_share=share,
                                **extra)
    return benchmark.extra_info


@pytest.mark.parametrize("fraction", FRACTIONS)
@pytest.mark.parametrize("B", S.decode_batches)
@pytest.mark.parametrize("C", S.decode_contexts)
def test_decode(benchmark, lm, plan, C, B, fraction):
    benchmark.group = f"decode C={C} B={B}"
    benchmark.name = _label(fraction)
    ids = bd.batch_ids(lm, B, C)

    def measure(new_cache):
        cache = new_cache()
        fn = bd.decode_fn(lm, cache, bd.prefill(lm, ids, cache), S.decode_steps)
        return fn, S.decode_steps, lambda: dict(cache_bytes_per_token=cache_nbytes(cache) / (B * cache.get_seq_length()))

    info = _run(benchmark, lm, plan, ("decode", C, B), fraction, measure)
    info["tokens_per_s"] = 1e3 * B / info["median_ms"]


@pytest.mark.parametrize("fraction", FRACTIONS)
@pytest.mark.parametrize("T", S.prefill_lengths)
def test_prefill(benchmark, lm, plan, T, fraction):
    benchmark.group = f"prefill T={T}"
    benchmark.name = _label(fraction)
    ids = bd.batch_ids(lm, 1, T)

    def measure(new_cache):
        return (lambda: bd.prefill(lm, ids, new_cache())), 1, dict

    _run(benchmark, lm, plan, ("prefill", T), fraction, measure)
