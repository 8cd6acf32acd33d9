"""Whole-model benchmark cases (shared by ``benchmarks/`` and ``headcode bench``): one layer's
attention, prefill and generation of a model, base vs a share of heads replaced by compiled
programs, and synthesis throughput of the offline backend.

Heads are picked deterministically: evenly spaced over the pool (all heads in layer-major
order, or the compiled heads of a ``--surrogates`` plan), ``round(fraction * heads)`` of them.
Without a plan, head ``i`` of the model (layer-major) runs ``MODEL_PROGRAMS[i % n]`` compiled
for the model's tokenizer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from headcode.benchmarks.cases import MODEL_PROGRAMS, Settings, case, median_ms
from headcode.errors import HeadcodeError
from headcode.runtime.model.heads import HeadRef

_SENTENCES = (
    "Once upon a time, there was a little cat named Tom.", "Tom liked to play in the park with his red ball.",
    "One day, Lily found a big box under the old tree!", "\"Look at me,\" said Tom, and he jumped very high.",
    "The sun was warm, but the wind was cold.", "Mom baked 12 cookies, and the children ate them all.",
    "Why is the sky blue? Lily asked her dad.", "They walked to the river and saw three small ducks.",
    "The dog barked at the bird, so the bird flew away.", "At night, Ben read a book about a brave knight.",
    "She was sad because her kite was stuck in the tree.", "Then a kind man helped her get it down.",
    "The next day, it rained, and they stayed at home.", "Sam and Mia built a tower with blue blocks.",
    "It fell down, but they laughed and built it again.", "In the end, everyone was happy and went to sleep.",
)


def bench_texts(n: int, seed: int = 0) -> tuple[list[str], str]:
    """``n`` short stories and where they came from: the bundled corpus when it is installed,
    else texts made here from a fixed pool of sentences (deterministic)."""
    from headcode.runtime.text.corpus import documents

    try:
        docs = documents("stories")
    except HeadcodeError:  # the corpus is not installed: the fixed texts below
        docs = []
    if len(docs) >= n:
        return docs[:n], "stories"
    rng = np.random.default_rng(seed)
    texts = [" ".join(_SENTENCES[j] for j in rng.choice(len(_SENTENCES), size=8, replace=False)) for _ in range(n)]
    return texts, "built-in sentences"


def text_ids(tokenizer: Any, T: int) -> torch.Tensor:
    """``[1, T]`` ids of the benchmark texts, joined and repeated to ``T`` tokens."""
    ids: list[int] = []
    for doc in bench_texts(64)[0]:
        ids += tokenizer(doc, add_special_tokens=not ids)["input_ids"]
        if len(ids) >= T:
            break
    while len(ids) < T:
        ids += ids
    return torch.tensor(ids[:T], dtype=torch.long)[None]


def pick_heads(pool: Sequence[HeadRef], n: int) -> list[HeadRef]:
    """``n`` heads evenly spaced over ``pool`` (in its order), at most ``len(pool)``."""
    n = min(n, len(pool))
    return [pool[(i * len(pool)) // n] for i in range(n)] if n else []


def n_replaced(fraction: float, total: int) -> int:
    return max(1, round(fraction * total))


def programs_plan(loaded: Any) -> Any:
    """A ``SurrogatePlan`` with a program for every head (``MODEL_PROGRAMS`` compiled once each)."""
    from headcode.compiler import SurrogatePlan, compile_source
    from headcode.compiler.tokens import vocabulary_pieces

    pieces = vocabulary_pieces(loaded.tokenizer)
    compiled = [compile_source(c.source, pieces, loaded.fingerprint, name=c.name, model_id=loaded.name, strict=True)
                for c in MODEL_PROGRAMS]
    heads = {str(HeadRef(l, h)): compiled[(l * loaded.n_heads + h) % len(compiled)]
             for l in range(loaded.n_layers) for h in range(loaded.n_heads)}
    return SurrogatePlan(model_id=loaded.name, fingerprint=loaded.fingerprint, heads=heads)


def plan_pool(plan: Any) -> list[HeadRef]:
    """The compiled heads of a plan, sorted (uncompiled ones would run the slow reference path)."""
    return sorted(HeadRef.parse(k) for k in plan.compiled_heads())


def prefill_fn(loaded: Any, ids: torch.Tensor) -> Callable[[], Any]:
    def run() -> Any:
        with torch.no_grad():
            return loaded.model(input_ids=ids, use_cache=False).logits
    return run


def generate_fn(loaded: Any, ids: torch.Tensor, new_tokens: int) -> Callable[[], Any]:
    tok = loaded.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def run() -> Any:
        with torch.no_grad():
            out = loaded.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                        max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=pad)
        if out.shape[1] != ids.shape[1] + new_tokens:
            raise HeadcodeError(f"generation made {out.shape[1] - ids.shape[1]} tokens, not {new_tokens}")
        return out
    return run


def layer_fn(loaded: Any, layer: int, ids: torch.Tensor) -> Callable[[], Any]:
    """Layer ``layer``'s attention block (projections, attention, output projection) on the inputs
    it gets in a forward pass of ``ids`` (run once here, which also records the token history)."""
    from headcode.runtime.model.capture import attention_modules

    mod = attention_modules(loaded.model)[layer]
    seen: dict[str, Any] = {}

    def grab(module: Any, args: tuple, kwargs: dict) -> None:
        seen["args"], seen["kwargs"] = args, kwargs

    hook = mod.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        prefill_fn(loaded, ids)()
    finally:
        hook.remove()

    def run() -> Any:
        with torch.no_grad():
            return mod(*seen["args"], **seen["kwargs"])
    return run


def _with_heads(loaded: Any, plan: Any, heads: Sequence[HeadRef], make: Callable[[], Callable[[], Any]],
                repeat: int, warmup: int) -> float:
    from headcode.runtime.surrogate.apply import surrogates_applied

    with surrogates_applied(loaded, plan, heads=list(heads)):
        return median_ms(make(), repeat, warmup)


def model_cases(loaded: Any, settings: Settings, plan: Any = None,
                log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Layer attention and prefill at each length, and generation: base vs each share replaced."""
    source = "file" if plan is not None else "programs"
    plan = plan if plan is not None else programs_plan(loaded)
    pool = plan_pool(plan)
    if not pool:
        raise HeadcodeError("the surrogate plan has no compiled heads to benchmark")
    total = loaded.n_layers * loaded.n_heads
    r, w = max(1, min(settings.repeat, 5)), 1
    cases: list[dict[str, Any]] = []

    def record(group: str, T: int, label: str, heads: list[HeadRef], ms: float, base: float, **extra: Any) -> None:
        cases.append(case(f"{group}[{label}] T={T}", group, T, loaded.head_dim, ms, base, replaced=len(heads),
                          fraction=len(heads) / (loaded.n_heads if group == "layer" else total),
                          heads=[str(h) for h in heads], plan=source, **extra))

    by_layer: dict[int, list[HeadRef]] = {}
    for h in pool:
        by_layer.setdefault(h.layer, []).append(h)
    layer = loaded.n_layers // 2 if source == "programs" else max(by_layer, key=lambda l: (len(by_layer[l]), -l))
    T0 = settings.model_lengths[0]
    ids0 = text_ids(loaded.tokenizer, T0)
    base = median_ms(layer_fn(loaded, layer, ids0), r, w)
    for f in settings.fractions:
        heads = pick_heads(by_layer[layer], n_replaced(f, loaded.n_heads))
        ms = _with_heads(loaded, plan, heads, lambda hs=heads: layer_fn(loaded, layer, ids0), r, w)
        record("layer", T0, f"{f:.0%} of L{layer}", heads, ms, base, target_fraction=f, layer=layer)
    log(f"  layer L{layer} T={T0}: base {base:.2f} ms, " + ", ".join(f"{c['replaced']} heads {c['surrogate_ms']:.2f} ms"
                                                              for c in cases))
    for T in settings.model_lengths:
        ids = text_ids(loaded.tokenizer, T)
        base = median_ms(prefill_fn(loaded, ids), r, w)
        for f in settings.fractions:
            heads = pick_heads(pool, n_replaced(f, total))
            ms = _with_heads(loaded, plan, heads, lambda i=ids: prefill_fn(loaded, i), r, w)
            record("model", T, f"{f:.0%}", heads, ms, base, target_fraction=f, phase="prefill")
        log(f"  model prefill T={T}: base {base:.1f} ms, " + ", ".join(
            f"{c['fraction']:.0%} {c['surrogate_ms']:.1f} ms" for c in cases if c["group"] == "model" and c["seq_len"] == T))
    P, N = settings.gen_prompt, settings.gen_new_tokens
    ids = text_ids(loaded.tokenizer, P)
    base = median_ms(generate_fn(loaded, ids, N), max(1, r - 2), w) / N
    for f in settings.fractions:
        heads = pick_heads(pool, n_replaced(f, total))
        ms = _with_heads(loaded, plan, heads, lambda: generate_fn(loaded, ids, N), max(1, r - 2), w) / N
        record("generate", P, f"{f:.0%}", heads, ms, base, target_fraction=f, new_tokens=N,
               surrogate_tokens_per_s=1e3 / ms, neural_tokens_per_s=1e3 / base)
    log(f"  generate {N} tokens after {P}: base {1e3 / base:.1f} tok/s, " + ", ".join(
        f"{c['fraction']:.0%} {c['surrogate_tokens_per_s']:.1f} tok/s" for c in cases if c["group"] == "generate"))
    return cases


def synthesis_case(loaded: Any, settings: Settings) -> dict[str, Any]:
    """Heads explained per minute by the offline backend (capture excluded) on the stories corpus."""
    from headcode.compiler.tokens import Tokens
    from headcode.runtime.model.capture import capture
    from headcode.runtime.text.corpus import load_corpus
    from headcode.synth.explain import explain_heads
    from headcode.synth.offline import OfflineBackend

    k = settings.synth_texts_per_split
    texts, origin = bench_texts(3 * k)
    splits = ("fit", "select", "test") * k
    if origin == "stories":
        corpus = load_corpus("stories", "paragraph").take(k)
        texts, splits = list(corpus.texts), corpus.splits
    tokens = tuple(Tokens.from_text(loaded.tokenizer, t, max_tokens=settings.synth_max_tokens) for t in texts)
    every = [HeadRef(l, h) for l in range(loaded.n_layers) for h in range(loaded.n_heads)]
    heads = pick_heads(every, settings.synth_heads)
    t0 = time.perf_counter()
    patterns = capture(loaded, tokens, heads, splits, unit="paragraph", progress=False)
    t1 = time.perf_counter()
    library = explain_heads(patterns, OfflineBackend(progress=False), heads, progress=False)
    t2 = time.perf_counter()
    per_head_ms = (t2 - t1) * 1e3 / len(heads)
    return case("synthesis[offline]", "synthesis", settings.synth_max_tokens, None, per_head_ms, None,
                heads=len(heads), texts=len(tokens), heads_per_min=60e3 / per_head_ms, capture_ms=(t1 - t0) * 1e3,
                explained=len(library), backend="offline", corpus=origin)
