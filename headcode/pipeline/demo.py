"""The whole flow on one model: explain heads -> compile the programs -> evaluate the model with
them in place. The model is loaded once; each step is its library function (``explain_model``,
``compile_programs``, ``evaluate_plan``) and shows one progress bar. Explain is resumable, so a
second run continues an interrupted one."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from headcode.pipeline.compile import CompileResult, CompileSettings, compile_programs
from headcode.pipeline.evaluate import EvaluateResult, EvaluateSettings, evaluate_plan
from headcode.pipeline.explain import ExplainResult, ExplainSettings, explain_model
from headcode.runtime.evaluation.settings import OPTIMAL, EvalSettings, RankSettings
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
    rank: RankSettings = RankSettings(rounds=2, measure_texts=4, measure_factor=1.2)
    # calibration (issue 19): heads chosen with the programs as explained, then their surrogates fitted jointly
    # for the model, beside the programs as explained and optimal ablation at the same heads; the plan
    # written to DIR/calibrated.safetensors is what runs. Fewer steps than `calibrate`'s default: time.
    calibrate: bool = True
    calibrate_steps: int = 150
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
        found += (Path(self.evaluate.plot),) if self.evaluate.plot else ()
        saved = self.evaluate.report.get("saved_plan")  # the calibrated plan: what to serve
        return found + ((Path(saved),) if saved else ())


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
    extra: dict = {}
    measured = EvalSettings(fraction=s.fraction, qa_tasks=s.qa, qa_limit=s.qa_limit, own_choice=(), rank=s.rank)
    if s.calibrate:
        from headcode.runtime.calibration.fit import CalibrationSettings

        cal = CalibrationSettings(steps=s.calibrate_steps, progress=s.progress)
        # one share beside the base model: each share is a joint fit and an optimal-ablation fit
        measured = replace(measured, curve=(0.0, s.fraction), baselines=("mean_ablation", OPTIMAL), calibrate=cal)
        extra = dict(save_plan=out / "calibrated.safetensors", max_tokens=128)
    evaluated = evaluate_plan(EvaluateSettings(surrogates=compiled.out, out=out / "eval.json", model=s.model,
                                               text=s.corpus, max_texts=s.max_texts, progress=s.progress,
                                               evaluation=measured, **extra),
                              loaded=lm)
    t4 = time.perf_counter()
    return DemoResult(explained, compiled, evaluated,
                      {"load": t1 - t0, "explain": t2 - t1, "compile": t3 - t2, "evaluate": t4 - t3})
