"""Benchmarks without pytest: the cases of ``headcode.benchmarks`` (one head, memory, compile time,
a layer / prefill / generation, decoding through the headcode cache, synthesis throughput), each
figure a median over repeated runs after warm-up, written as one JSON report with the machine."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from headcode.errors import HeadcodeError
from headcode.runtime.model.loading import DEFAULT_MODEL

GROUPS = ("head", "memory", "compile", "model", "decode", "synthesis", "serve")
DEFAULT_GROUPS = GROUPS[:-1]  # "serve" starts two servers: only when asked for (--only serve)
FORMAT_VERSION = 1


@dataclass(frozen=True)
class BenchSettings:
    out: Path                                # the JSON report
    model: str = DEFAULT_MODEL
    surrogates: Path | None = None           # a plan whose heads the model cases use
    quick: bool = False                      # few, short cases and few repeats (a smoke run)
    only: tuple[str, ...] = DEFAULT_GROUPS   # suites to run ("model": layer, prefill and generation)
    threads: int | None = None               # torch intra-op threads (None: torch's own)
    # the decode suite's grid (None: benchmarks.cases.Settings' own): contexts, batches, shares, prefills
    decode_contexts: tuple[int, ...] | None = None
    decode_batches: tuple[int, ...] | None = None
    decode_fractions: tuple[float, ...] | None = None
    prefill_lengths: tuple[int, ...] | None = None
    decode_steps: int | None = None


@dataclass(frozen=True)
class BenchResult:
    out: Path
    report: dict[str, Any] = field(default_factory=dict)   # what out holds: cases, skipped, machine


def parse_groups(only: str | None) -> tuple[str, ...]:
    """``"head,model"`` -> the suites; a one-line error for an unknown one."""
    if only is None:
        return DEFAULT_GROUPS
    chosen = tuple(dict.fromkeys(g.strip() for g in only.split(",") if g.strip()))
    bad = set(chosen) - set(GROUPS)
    if bad or not chosen:
        raise HeadcodeError(f"--only {only!r}: choose among {', '.join(GROUPS)}")
    return chosen


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_benchmarks(s: BenchSettings, log: Callable[[str], None] = _log) -> BenchResult:
    """Run the chosen suites and write the report; ``log`` gets a line as each suite goes."""
    import torch

    bad = set(s.only) - set(GROUPS)
    if bad or not s.only:
        raise HeadcodeError(f"benchmark suites {sorted(bad) or '(none)'}: choose among {', '.join(GROUPS)}")
    threads = torch.get_num_threads()
    if s.threads is not None:
        torch.set_num_threads(max(1, s.threads))
    try:
        return _run(s, set(s.only), log)
    finally:
        torch.set_num_threads(threads)


def _model_suites(s: BenchSettings, groups: set[str], settings: Any, log: Callable[[str], None]) -> tuple[str, list]:
    from headcode.benchmarks import cases as bm
    from headcode.compiler.tokens import vocabulary_pieces
    from headcode.runtime.model.loading import load_model

    log(f"loading {s.model}")
    lm = load_model(s.model)
    plan = None
    if s.surrogates:
        from headcode.runtime.surrogate.apply import plan_for_model

        plan = plan_for_model(s.surrogates, lm)
    cases: list[dict[str, Any]] = []
    if "compile" in groups:
        log("compile time per program")
        cases += bm.compile_cases(vocabulary_pieces(lm.tokenizer), lm.fingerprint, settings)
    if "model" in groups:
        from headcode.benchmarks.model_cases import model_cases

        log("layer, prefill and generation: base vs heads replaced")
        cases += model_cases(lm, settings, plan, log)
    if "decode" in groups:
        from headcode.benchmarks.decode_cases import decode_cases

        log("decoding and prefill through the headcode cache: base vs whole KV groups replaced")
        cases += decode_cases(lm, settings, plan, log)
    if "serve" in groups:
        from headcode.benchmarks.serve_cases import serve_cases

        log("serving: concurrent clients against headcode serve, base vs 50% whole KV groups")
        cases += serve_cases(s.model, lm, plan, s.quick, log)
    if "synthesis" in groups:
        from headcode.benchmarks.model_cases import synthesis_case

        log("synthesis throughput (offline backend)")
        cases.append(synthesis_case(lm, settings))
    return lm.name, cases


def _run(s: BenchSettings, groups: set[str], log: Callable[[str], None]) -> BenchResult:
    from headcode.benchmarks import cases as bm
    from headcode.files import write_json

    settings = bm.Settings.quick() if s.quick else bm.Settings.full()
    grid = ("decode_contexts", "decode_batches", "decode_fractions", "prefill_lengths", "decode_steps")
    settings = replace(settings, **{k: getattr(s, k) for k in grid if getattr(s, k) is not None})
    t_start = time.perf_counter()
    cases: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    if "head" in groups:
        log("one head: compiled program vs neural head")
        c, sk = bm.head_cases(settings, log)
        cases += c
        skipped += sk
    if "memory" in groups:
        log(f"memory: one head at T={bm.MEMORY_T}")
        cases.append(bm.memory_case())
    model_name = s.model
    if groups & {"compile", "model", "decode", "synthesis", "serve"}:
        model_name, more = _model_suites(s, groups, settings, log)
        cases += more
    report = {
        "format": "headcode-bench", "version": FORMAT_VERSION, "model": model_name,
        "surrogates": str(s.surrogates) if s.surrogates else None, "quick": bool(s.quick), "groups": sorted(groups),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": round(time.perf_counter() - t_start, 1),
        "machine": bm.machine_info(), "settings": asdict(settings) | {"neural_baseline": bm.NEURAL_BASELINE},
        "cases": cases, "skipped": skipped,
    }
    write_json(s.out, report)
    return BenchResult(Path(s.out), report)
