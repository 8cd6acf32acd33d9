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

from headcode.lazy import lazy_attributes

__version__ = "0.1.0"

_MODULES = {  # module -> the public names it defines
    "headcode.runtime.model.loading": ("load_model", "load_tokenizer", "LoadedModel"),
    "headcode.runtime.text.corpus": ("load_corpus", "Corpus"),
    "headcode.compiler.tokens": ("Tokens",),
    "headcode.runtime.model.heads": ("HeadRef", "parse_heads"),
    "headcode.runtime.model.capture": ("capture",),
    "headcode.runtime.model.patterns": ("HeadPatterns",),
    "headcode.pipeline.capture": ("capture_corpus", "CaptureSettings"),
    "headcode.pipeline.explain": ("explain_model", "ExplainSettings", "ExplainResult"),
    "headcode.synth.explain": ("explain_heads",),
    "headcode.compiler.program": ("Program",),
    "headcode.pipeline.compile": ("compile_programs", "CompileSettings", "CompileResult"),
    "headcode.compiler.sandbox": ("compile_source",),
    "headcode.compiler.head": ("CompiledHead", "SurrogatePlan"),
    "headcode.compiler.export": ("save_plan", "load_plan"),
    "headcode.api": ("from_pretrained", "load_surrogate_model"),
    "headcode.runtime.surrogate.apply": ("plan_for_model", "build_surrogates", "apply_plan", "surrogates_applied",
                                   "SurrogateHandle"),
    "headcode.pipeline.evaluate": ("evaluate_plan", "EvaluateSettings", "EvaluateResult"),
    "headcode.pipeline.bench": ("run_benchmarks", "BenchSettings", "BenchResult"),
    "headcode.pipeline.demo": ("run_demo", "DemoSettings", "DemoResult"),
    "headcode.pipeline.serve": ("start_server", "ServeSettings", "Server"),
    "headcode.errors": ("HeadcodeError",),
}
_API = {name: module for module, names in _MODULES.items() for name in names}

__all__ = sorted(_API)
__getattr__, __dir__ = lazy_attributes(__name__, _API)
