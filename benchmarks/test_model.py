"""One layer's attention and the whole model (SmolLM2-135M, the real default): base vs 10/25/50%
of heads replaced by compiled programs (``headcode.benchmarks.model_cases``: heads evenly spaced,
``MODEL_PROGRAMS`` compiled for the model's tokenizer). Prefill at T = 512 and 1024, one layer's
attention block at T = 512, greedy generation of 32 tokens after a 128-token prompt.

Groups: ``layer T=512``, ``model prefill T=<T>``, ``generate``; names ``base`` and ``replaced <p>%``.
``extra_info``: ``speedup_vs_base`` (base time / this time, base timed in this run), ``replaced``
(heads), and for generation ``tokens_per_s``. Target: 25% replaced no slower than base at T=1024.
Run: ``pytest benchmarks/test_model.py --benchmark-only``.
"""

from __future__ import annotations

import pytest

from headcode.benchmarks import cases as bm
from headcode.benchmarks import model_cases as bmm
from headcode.runtime.model.heads import HeadRef

ROUNDS = 3
FRACTIONS = [0.0, *bm.FRACTIONS]  # 0.0: the base model
_BASE: dict[tuple[str, int], float] = {}


@pytest.fixture(scope="module")
def plan(lm):
    return bmm.programs_plan(lm)


def _label(f: float) -> str:
    return "base" if f == 0.0 else f"replaced {f:.0%}"


def _measure(benchmark, lm, plan, key: tuple[str, int], heads: list[HeadRef], make, per: int = 1) -> float:
    """Benchmark ``make()`` with ``heads`` replaced (none: base); returns the median in ms / ``per``."""
    from headcode.runtime.surrogate.apply import surrogates_applied

    if heads:
        with surrogates_applied(lm, plan, heads=heads):
            benchmark.pedantic(make(), rounds=ROUNDS, warmup_rounds=1)
    else:
        benchmark.pedantic(make(), rounds=ROUNDS, warmup_rounds=1)
    ms = benchmark.stats.stats.median * 1e3 / per
    if not heads:
        _BASE[key] = ms
    elif key not in _BASE:  # the base case has not run (deselected or ordered after): time it now
        _BASE[key] = bm.median_ms(make(), ROUNDS, 1) / per
    benchmark.extra_info.update(median_ms=ms, base_ms=_BASE[key], speedup_vs_base=_BASE[key] / ms,
                                replaced=len(heads), heads=[str(h) for h in heads])
    return ms


@pytest.mark.parametrize("fraction", FRACTIONS)
def test_layer(benchmark, lm, plan, fraction):
    T, layer = bm.MODEL_LENGTHS[0], lm.n_layers // 2
    benchmark.group = f"layer T={T}"
    benchmark.name = _label(fraction)
    pool = [HeadRef(layer, h) for h in range(lm.n_heads)]
    heads = bmm.pick_heads(pool, bmm.n_replaced(fraction, lm.n_heads)) if fraction else []
    ids = bmm.text_ids(lm.tokenizer, T)
    _measure(benchmark, lm, plan, ("layer", T), heads, lambda: bmm.layer_fn(lm, layer, ids))


@pytest.mark.parametrize("fraction", FRACTIONS)
@pytest.mark.parametrize("T", bm.MODEL_LENGTHS)
def test_prefill(benchmark, lm, plan, T, fraction):
    benchmark.group = f"model prefill T={T}"
    benchmark.name = _label(fraction)
    pool = [HeadRef(l, h) for l in range(lm.n_layers) for h in range(lm.n_heads)]
    heads = bmm.pick_heads(pool, bmm.n_replaced(fraction, len(pool))) if fraction else []
    ids = bmm.text_ids(lm.tokenizer, T)
    out = _measure(benchmark, lm, plan, ("prefill", T), heads, lambda: bmm.prefill_fn(lm, ids))
    assert out > 0


@pytest.mark.parametrize("fraction", FRACTIONS)
def test_generate(benchmark, lm, plan, fraction):
    P, N = bm.GEN_PROMPT, bm.GEN_NEW_TOKENS
    benchmark.group = "generate"
    benchmark.name = _label(fraction)
    pool = [HeadRef(l, h) for l in range(lm.n_layers) for h in range(lm.n_heads)]
    heads = bmm.pick_heads(pool, bmm.n_replaced(fraction, len(pool))) if fraction else []
    ids = bmm.text_ids(lm.tokenizer, P)
    ms = _measure(benchmark, lm, plan, ("generate", P), heads, lambda: bmm.generate_fn(lm, ids, N), per=N)
    benchmark.extra_info.update(tokens_per_s=1e3 / ms, new_tokens=N, prompt=P)
