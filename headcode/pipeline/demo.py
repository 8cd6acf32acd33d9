"""The whole flow on one model: explain heads -> compile the programs -> evaluate the model with
them in place. The model is loaded once; each step is its library function (``explain_model``,
``compile_programs``, ``evaluate_plan``) and shows one progress bar. Explain is resumable, so a
second run continues an interrupted one."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from headcode.pipeline.compile import CompileResult, CompileSettings, compile_programs
from headcode.pipeline.evaluate import EvaluateResult, EvaluateSettings, evaluate_plan
from headcode.pipeline.explain import ExplainResult, ExplainSettings, explain_model
from headcode.runtime.model.loading import DEFAULT_MODEL


@dataclass(frozen=True)
class DemoSettings:
    out: Path                        # DIR/explain/ (programs, report, plan), DIR/eval.json, DIR/eval.png
    model: str = DEFAULT_MODEL
    corpus: str = "stories"
    heads: str | None = None         # heads to explain (default all)
    max_texts: int = 40              # texts per split: about 12 minutes on two CPU cores
    fraction: float = 0.25           # share of all heads to replace
    qa: tuple[str, ...] = ()         # QA tasks (none: faster)
    qa_limit: int = 100
    # choosing the heads to replace is most of the evaluation's time: the demo measures fewer
    # candidates, on fewer select texts, in fewer rounds than `headcode evaluate` does by default
    rounds: int = 2
    measure_texts: int = 4
    measure_factor: float = 1.2
    progress: bool = True


@dataclass(frozen=True)
class DemoResult:
    explain: ExplainResult
    compile: CompileResult
    evaluate: EvaluateResult
    seconds: dict[str, float] = field(default_factory=dict)   # per step

    @property
    def outputs(self) -> tuple[Path, ...]:
        """What a reader opens first: the report, the programs, the plan, the evaluation and its plot."""
        found = (self.explain.report, self.explain.out / "programs", self.compile.out, self.evaluate.out)
        return found + ((Path(self.evaluate.plot),) if self.evaluate.plot else ())


def run_demo(s: DemoSettings) -> DemoResult:
    from headcode.runtime.model.loading import load_model

    out = Path(s.out)
    t0 = time.perf_counter()
    lm = load_model(s.model)
    t1 = time.perf_counter()
    explained = explain_model(ExplainSettings(out=out / "explain", model=s.model, corpus=s.corpus, heads=s.heads,
                                              max_texts=s.max_texts, progress=s.progress), loaded=lm)
    t2 = time.perf_counter()
    compiled = compile_programs(CompileSettings(dir=out / "explain", model=s.model, progress=s.progress),
                                tokenizer=lm.tokenizer)
    t3 = time.perf_counter()
    evaluated = evaluate_plan(EvaluateSettings(surrogates=compiled.out, out=out / "eval.json", model=s.model,
                                               fraction=s.fraction, text=s.corpus, max_texts=s.max_texts, qa=s.qa,
                                               qa_limit=s.qa_limit, rounds=s.rounds, measure_texts=s.measure_texts,
                                               measure_factor=s.measure_factor, own_choice=(), progress=s.progress),
                               loaded=lm)
    t4 = time.perf_counter()
    return DemoResult(explained, compiled, evaluated,
                      {"load": t1 - t0, "explain": t2 - t1, "compile": t3 - t2, "evaluate": t4 - t3})
