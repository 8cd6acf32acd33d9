"""headcode: attention heads as short Python programs, compiled to kernels.

The public API, by step (names are imported lazily, so ``import headcode`` stays cheap: no torch)::

    load      load_model, load_tokenizer, LoadedModel, load_corpus, Corpus, Tokens, HeadRef, parse_heads
    capture   capture, HeadPatterns, capture_corpus, CaptureSettings
    explain   explain_model, ExplainSettings, ExplainResult, explain_heads, Program
    compile   compile_programs, CompileSettings, CompileResult, compile_source, CompiledHead,
              SurrogatePlan, save_plan, load_plan
    run       from_pretrained, load_surrogate_model, plan_for_model, build_surrogates, apply_plan,
              surrogates_applied, SurrogateHandle
    measure   evaluate_plan, EvaluateSettings, EvaluateResult, run_benchmarks, BenchSettings,
              BenchResult, run_demo, DemoSettings, DemoResult
    serve     start_server, ServeSettings, Server
    errors    HeadcodeError (every user-facing error: one line saying what to do)
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = {
    "load_model": "headcode.runtime.loading",
    "load_tokenizer": "headcode.runtime.loading",
    "LoadedModel": "headcode.runtime.loading",
    "load_corpus": "headcode.runtime.corpus",
    "Corpus": "headcode.runtime.corpus",
    "Tokens": "headcode.runtime.tokens",
    "HeadRef": "headcode.runtime.heads",
    "parse_heads": "headcode.runtime.heads",
    "capture": "headcode.runtime.capture",
    "HeadPatterns": "headcode.runtime.patterns",
    "capture_corpus": "headcode.pipeline.capture",
    "CaptureSettings": "headcode.pipeline.capture",
    "explain_model": "headcode.pipeline.explain",
    "ExplainSettings": "headcode.pipeline.explain",
    "ExplainResult": "headcode.pipeline.explain",
    "explain_heads": "headcode.synth.explain",
    "Program": "headcode.compiler.program",
    "compile_programs": "headcode.pipeline.compile",
    "CompileSettings": "headcode.pipeline.compile",
    "CompileResult": "headcode.pipeline.compile",
    "compile_source": "headcode.compiler.compile",
    "CompiledHead": "headcode.compiler.head",
    "SurrogatePlan": "headcode.compiler.head",
    "save_plan": "headcode.compiler.export",
    "load_plan": "headcode.compiler.export",
    "from_pretrained": "headcode.api",
    "load_surrogate_model": "headcode.api",
    "plan_for_model": "headcode.runtime.surrogate",
    "build_surrogates": "headcode.runtime.surrogate",
    "apply_plan": "headcode.runtime.surrogate",
    "surrogates_applied": "headcode.runtime.surrogate",
    "SurrogateHandle": "headcode.runtime.surrogate",
    "evaluate_plan": "headcode.pipeline.evaluate",
    "EvaluateSettings": "headcode.pipeline.evaluate",
    "EvaluateResult": "headcode.pipeline.evaluate",
    "run_benchmarks": "headcode.pipeline.bench",
    "BenchSettings": "headcode.pipeline.bench",
    "BenchResult": "headcode.pipeline.bench",
    "run_demo": "headcode.pipeline.demo",
    "DemoSettings": "headcode.pipeline.demo",
    "DemoResult": "headcode.pipeline.demo",
    "start_server": "headcode.pipeline.serve",
    "ServeSettings": "headcode.pipeline.serve",
    "Server": "headcode.pipeline.serve",
    "HeadcodeError": "headcode.errors",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'headcode' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
