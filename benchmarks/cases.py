"""Benchmark cases and measurement shared by ``benchmarks/`` (pytest-benchmark) and ``headcode bench``.

One place defines the cases: sequence lengths, head dims, the programs timed, the shares of
heads replaced and how they are picked, the workloads of generation, compilation, synthesis
and memory. Times are medians of repeated runs after warm-up (Numba JIT and torch.compile
excluded), in milliseconds. Ratios compare sides measured in the same process, one after the
other: ``speedup = neural_ms / surrogate_ms``.

The whole-model part (prefill, one layer's attention, generation, synthesis) is in
``headcode.benchmarks.model_cases``.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from headcode.benchmarks.catalogue import BY_NAME, VOCAB, Case, random_ids

# --- cases ------------------------------------------------------------------------------------
HEAD_LENGTHS = (128, 512, 1024, 2048, 4096)
HEAD_DIMS = (64, 128)
# the catalogue's programs timed as one head: cheap gathers, running sums, hashing
HEAD_PROGRAMS: tuple[str, ...] = ("previous_and_sink", "same_sentence", "same_token", "induction", "gate_sweep")
# the programs put in place of a model's heads (head i of the picked heads gets program i % n)
MODEL_PROGRAMS: tuple[Case, ...] = tuple(Case(f"model_{i}", body) for i, body in enumerate((
    "0.7 * previous(t, 1) + 0.3 * first(t)",
    "first(t)",
    "0.5 * in_same_sentence(t) + 0.5 * first(t)",
    "most_recent(t, punct) + 0.2 * first(t)",
    "0.6 * decay(t, 0.5) + 0.4 * first(t)",
    "same_token(t) + 0.2 * uniform(t)",
)))
FRACTIONS = (0.10, 0.25, 0.50)
MODEL_LENGTHS = (512, 1024)
GEN_PROMPT, GEN_NEW_TOKENS = 128, 32
MEMORY_T, MEMORY_D = 4096, 64
SYNTH_HEADS, SYNTH_TEXTS_PER_SPLIT, SYNTH_MAX_TOKENS = 9, 4, 96
BENCH_VOCAB = 50_000
NEURAL_BASELINE = "sdpa"  # what `neural_ms` of a head case is


@dataclass(frozen=True)
class Settings:
    """How much to run: ``full()`` (the README tables) or ``quick()`` (a smoke run, seconds)."""

    head_lengths: tuple[int, ...]
    head_dims: tuple[int, ...]
    head_programs: tuple[str, ...]           # catalogue names
    model_lengths: tuple[int, ...]
    fractions: tuple[float, ...]
    gen_prompt: int
    gen_new_tokens: int
    synth_heads: int
    synth_texts_per_split: int
    synth_max_tokens: int
    repeat: int
    warmup: int
    flex: bool
    reference_max_t: int                     # the dense torch reference only up to this length (O(T^2) float64)
    # decoding through the headcode cache (``decode_cases``): contexts x batches, prefill lengths
    decode_contexts: tuple[int, ...] = (512, 2048, 4096)
    decode_batches: tuple[int, ...] = (1, 8)
    decode_fractions: tuple[float, ...] = (0.25, 0.5)
    prefill_lengths: tuple[int, ...] = (1024, 4096)
    decode_steps: int = 16                   # decoding steps per timed run
    decode_repeat: int = 3

    @classmethod
    def full(cls) -> Settings:
        return cls(HEAD_LENGTHS, HEAD_DIMS, ("previous_and_sink", "same_sentence", "gate_sweep"), MODEL_LENGTHS,
                   FRACTIONS, GEN_PROMPT, GEN_NEW_TOKENS, SYNTH_HEADS, SYNTH_TEXTS_PER_SPLIT, SYNTH_MAX_TOKENS,
                   repeat=7, warmup=2, flex=True, reference_max_t=1024)

    @classmethod
    def quick(cls) -> Settings:
        return cls((128, 512), (64,), ("previous_and_sink", "same_sentence"), (64,), (0.25,), 16, 4, 2, 1, 32,
                   repeat=3, warmup=1, flex=False, reference_max_t=128, decode_contexts=(64,), decode_batches=(1, 2),
                   decode_fractions=(0.5,), prefill_lengths=(64,), decode_steps=4, decode_repeat=2)


# --- timing and the machine --------------------------------------------------------------------
def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def median_ms(fn: Callable[[], Any], repeat: int = 7, warmup: int = 2) -> float:
    """Median wall time of ``fn()`` in milliseconds over ``repeat`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    _sync()
    times = []
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def alternate_ms(fns: dict[str, Callable[[], Any]], repeat: int = 7, warmup: int = 1) -> dict[str, float]:
    """Median wall time in milliseconds of each of ``fns``, run in turn (first one, then the next,
    the order reversed every round) so that a machine's load moves them alike."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(max(1, repeat)):
        for n in names if r % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            fns[n]()
            _sync()
            times[n].append(time.perf_counter() - t0)
    return {n: statistics.median(t) * 1e3 for n, t in times.items()}


def _cpu_model() -> str:
    fallback = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    except OSError:  # not Linux
        return fallback
    return names[0] if names else fallback


def _version(mod: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(mod)
    except PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """The CPU, cores, library versions and GPU (if any) the figures were taken on."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu": _cpu_model(), "cores": os.cpu_count(), "usable_cores": usable,
        "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
        "python": platform.python_version(), "torch": torch.__version__, "numba": _version("numba"),
        "triton": _version("triton"), "transformers": _version("transformers"), "numpy": np.__version__,
        "gpu": gpu, "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def case(name: str, group: str, seq_len: int | None, d: int | None, surrogate_ms: float | None,
         neural_ms: float | None, **extra: Any) -> dict[str, Any]:
    """One JSON record; ``speedup = neural_ms / surrogate_ms`` when both sides exist."""
    speedup = neural_ms / surrogate_ms if surrogate_ms and neural_ms is not None else None
    return {"name": name, "group": group, "seq_len": seq_len, "d": d, "surrogate_ms": surrogate_ms,
            "neural_ms": neural_ms, "speedup": speedup, **extra}


# --- one head --------------------------------------------------------------------------------
def bench_pieces(n: int = BENCH_VOCAB) -> list[str]:
    """A vocabulary of ``n`` pieces (the catalogue's, numbered past its end): spaces, punctuation,
    newlines, capitals, digits, quotes and function words."""
    return [VOCAB[i % len(VOCAB)] + (str(i) if i >= len(VOCAB) else "") for i in range(n)]


def head_inputs(T: int, d: int, vocab: int = BENCH_VOCAB, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """``ids [1, T]`` (Zipf-like: tokens repeat), ``q, k, v [1, 1, T, d]`` float32."""
    ids = random_ids(np.random.default_rng(seed + T * 1000 + d), T, vocab)
    g = torch.Generator().manual_seed(seed + T * 1000 + d)
    q, k, v = (torch.randn(1, 1, T, d, generator=g) for _ in range(3))
    return torch.from_numpy(ids)[None], q, k, v


def compile_bench_heads(names: Sequence[str], pieces: Sequence[str], fingerprint: str = "bench-vocab") -> dict:
    """``{name: CompiledHead}`` of catalogue programs against ``pieces`` (strict: a failure raises)."""
    from headcode.compiler import compile_source

    return {n: compile_source(BY_NAME[n].source, pieces, fingerprint, name=n, strict=True) for n in names}


def eager_fn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Callable[[], torch.Tensor]:
    """softmax(QKᵀ/√d + causal mask) V, materialised (a transformers "eager" head)."""
    T, d = q.shape[-2], q.shape[-1]
    mask = torch.ones(T, T, dtype=torch.bool).tril()

    def run() -> torch.Tensor:
        s = (q @ k.transpose(-1, -2)) / math.sqrt(d)
        return torch.softmax(s.masked_fill(~mask, float("-inf")), -1) @ v
    return run


def sdpa_fn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Callable[[], torch.Tensor]:
    return lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)


_FLEX: dict[str, Any] = {}


def flex_fn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Callable[[], torch.Tensor]:
    """FlexAttention with a causal block mask, through ``torch.compile(dynamic=True)`` (eager flex
    is a dense reference, not a kernel). Raises what compiling raises; callers record it as a skip."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    if "fn" not in _FLEX:
        _FLEX["fn"] = torch.compile(flex_attention, dynamic=True)
    T = q.shape[-2]
    block = create_block_mask(lambda b, h, qi, ki: qi >= ki, 1, 1, T, T, device=q.device.type)
    fn = _FLEX["fn"]

    def run() -> torch.Tensor:
        return fn(q, k, v, block_mask=block)
    run()  # compile outside the timing
    return run


FLEX_ERRORS: tuple[type[BaseException], ...] = (RuntimeError, NotImplementedError, ImportError, OSError,
                                                 AssertionError)


def surrogate_fn(head: Any, ids: torch.Tensor, v: torch.Tensor, backend: str = "numba") -> Callable[[], torch.Tensor]:
    """One compiled head through ``run_head`` (``v [1, 1, T, d]``); the first call (JIT) is made here."""
    from headcode.compiler import run_head

    vv = v[:, 0].contiguous()
    def run() -> torch.Tensor:
        return run_head(head, ids, vv, backend=backend)
    run()
    return run


def copy_v_fn(v: torch.Tensor) -> Callable[[], np.ndarray]:
    """A single-threaded copy of V (numpy): the memory-bound floor of any head."""
    vn = v[:, 0].numpy()
    return lambda: np.copy(vn)


def head_cases(settings: Settings, log: Callable[[str], None] = print) -> tuple[list[dict], list[dict]]:
    """Per (T, d): SDPA, eager, copy of V, FlexAttention and each program (Numba, the torch
    reference for short T, Triton with a GPU). Returns ``(cases, skipped)``."""
    heads = compile_bench_heads(settings.head_programs, bench_pieces())
    cases, skipped = [], []
    r, w = settings.repeat, settings.warmup
    gpu = torch.cuda.is_available()
    if not gpu:
        skipped.append({"name": "head/triton", "reason": "no CUDA GPU (Triton needs one; run on a GPU machine)"})
    if not settings.flex:
        skipped.append({"name": "head/flex_attention", "reason": "not run in --quick (torch.compile takes minutes)"})
    for d in settings.head_dims:
        for T in settings.head_lengths:
            ids, q, k, v = head_inputs(T, d)
            neural = {"sdpa": median_ms(sdpa_fn(q, k, v), r, w), "eager": median_ms(eager_fn(q, k, v), r, w)}
            copy_ms = median_ms(copy_v_fn(v), r, w)
            flex_ms = None
            if settings.flex:
                try:
                    flex_ms = median_ms(flex_fn(q, k, v), r, w)
                except FLEX_ERRORS as e:
                    skipped.append({"name": f"head/flex_attention T={T} d={d}",
                                    "reason": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"})
            for name, head in heads.items():
                ms = median_ms(surrogate_fn(head, ids, v), r, w)
                extra: dict[str, Any] = {"program": name, "surrogate": "numba", "neural": NEURAL_BASELINE,
                                         "eager_ms": neural["eager"], "copy_v_ms": copy_ms, "flex_ms": flex_ms,
                                         "speedup_vs_eager": neural["eager"] / ms, "x_copy_v": ms / copy_ms}
                if T <= settings.reference_max_t:
                    extra["torch_reference_ms"] = median_ms(surrogate_fn(head, ids, v, "torch"), r, w)
                if gpu:
                    gq, gk, gv = (x.cuda() for x in (q, k, v))
                    extra["triton_ms"] = median_ms(surrogate_fn(head, ids.cuda(), gv, "triton"), r, w)
                    extra["sdpa_gpu_ms"] = median_ms(sdpa_fn(gq, gk, gv), r, w)
                cases.append(case(f"head[{name}] T={T} d={d}", "head", T, d, ms, neural[NEURAL_BASELINE], **extra))
            log(f"  head T={T} d={d}: sdpa {neural['sdpa']:.3f} ms, copy {copy_ms:.4f} ms, "
                + ", ".join(f"{c['program']} {c['surrogate_ms']:.3f} ms" for c in cases[-len(heads):]))
    return cases, skipped


# --- compile time and memory ---------------------------------------------------------------------
def compile_cases(pieces: Sequence[str], fingerprint: str, settings: Settings) -> list[dict]:
    """Time to compile each program against a vocabulary: cold (vocabulary tables built, the
    table cache cleared first: ``surrogate_ms``) and warm (tables cached: ``warm_ms``)."""
    from headcode.compiler import compile_source
    from headcode.compiler.tables import clear_cache

    out = []
    progs = [BY_NAME[n] for n in settings.head_programs] + list(MODEL_PROGRAMS)
    for name, src in ((c.name, c.source) for c in progs):
        cold = []
        for _ in range(max(1, settings.repeat)):
            clear_cache()
            t0 = time.perf_counter()
            compile_source(src, pieces, fingerprint, strict=True)
            cold.append((time.perf_counter() - t0) * 1e3)
        warm = median_ms(lambda s=src: compile_source(s, pieces, fingerprint, strict=True), settings.repeat, 1)
        out.append(case(f"compile[{name}]", "compile", None, None, statistics.median(cold), None, program=name,
                        vocab=len(pieces), warm_ms=warm))
    return out


def torch_peak_bytes(fn: Callable[[], Any]) -> int:
    """Peak bytes held by torch's CPU allocator while ``fn`` runs, from ``torch.profiler``'s memory
    records (allocations at an op's start, frees at its end: a running sum, its maximum)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    steps = []
    for e in prof.events():
        u = int(e.self_cpu_memory_usage or 0)
        if u:
            steps.append((e.time_range.start if u > 0 else e.time_range.end, u))
    cur = peak = 0
    for _, u in sorted(steps):
        cur += u
        peak = max(peak, cur)
    return peak


def numpy_peak_bytes(fn: Callable[[], Any]) -> int:
    """Peak bytes traced by ``tracemalloc`` (Python objects and numpy buffers) while ``fn`` runs."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        fn()
        return max(0, tracemalloc.get_traced_memory()[1] - base)
    finally:
        tracemalloc.stop()


def numba_scratch_bytes(spec: Any, T: int, d: int) -> int:
    """Analytic scratch of the fused Numba kernel per row (NRT allocations, which neither
    tracemalloc nor torch sees): term state ``n*(d+4)`` float64/int64, integer codes and previous
    occurrences ``T*(n+1)`` int64, three ``T`` bool flag rows, the token hash ``2*pow2(>=2T)`` int64
    when same_token/induction is used, the occurrence chain ``T*(d+1)`` float64 when same_token is."""
    from headcode.kernels.program_head import spec as S

    kinds = set(int(k) for k in spec.col("kind"))
    n = spec.n_terms
    size = 1 << max(0, math.ceil(math.log2(2 * T))) if kinds & {S.SAME_TOKEN, S.INDUCTION} else 0
    chain = T * (d + 1) if S.SAME_TOKEN in kinds else 0
    return 8 * (n * (d + 4) + T * (n + 1) + 2 * size + chain) + 3 * T


def memory_case(name: str = "previous_and_sink", T: int = MEMORY_T, d: int = MEMORY_D) -> dict[str, Any]:
    """Peak bytes of one surrogate head vs one neural head (SDPA; eager too) at ``T``."""
    head = compile_bench_heads([name], bench_pieces())[name]
    ids, q, k, v = head_inputs(T, d)
    sur = surrogate_fn(head, ids, v)  # JIT outside the measurement
    sur_bytes = torch_peak_bytes(sur) + numpy_peak_bytes(sur) + numba_scratch_bytes(head.spec, T, d)
    sdpa_bytes = torch_peak_bytes(sdpa_fn(q, k, v))
    eager_bytes = torch_peak_bytes(eager_fn(q, k, v))
    return case(f"memory[{name}] T={T} d={d}", "memory", T, d, None, None, program=name, surrogate_bytes=sur_bytes,
                neural_bytes=sdpa_bytes, eager_bytes=eager_bytes, memory_ratio=sdpa_bytes / max(1, sur_bytes),
                method="torch CPU allocator peak (torch.profiler memory records) + tracemalloc (numpy) "
                       "+ analytic Numba kernel scratch; inputs Q, K, V excluded")
