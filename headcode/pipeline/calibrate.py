"""``headcode calibrate``: a plan's surrogates fitted jointly for the model (issue 19).

The explanation (each head's terms and weights, fitted to its own pattern) is kept as it is; each
head gets a surrogate — the same terms with weights, and a constant output, fitted for the model
on KL(base ‖ replaced) over the fit split, stopped on the select split
(``runtime.calibration.fit``). The test split is never read. ``fraction``: first choose that share
of the model's heads among the plan's (``runtime.evaluation.select_plan``: with the programs as
explained, or with each head's warm constant when ``warm_choice``), then calibrate them jointly,
each constant starting at the head's warm constant (its mean residual on the fit split).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from headcode.runtime.calibration.fit import CalibrationSettings
from headcode.runtime.evaluation.settings import RankSettings
from headcode.runtime.model.loading import DEFAULT_MODEL


@dataclass(frozen=True)
class CalibrateSettings:
    surrogates: str                  # the plan to calibrate (from compile or select)
    out: str                         # the calibrated plan to write
    model: str = DEFAULT_MODEL
    corpus: str = "stories"
    unit: str = "paragraph"
    fraction: float | None = None    # choose this share of all heads first; None: every head of the plan
    warm_choice: bool = False        # ... with each head's warm constant, not the program as explained (measured worse)
    warm_start: bool = True          # the fit starts from each head's warm constant (mean residual on the fit split)
    rank: RankSettings = RankSettings()  # ... by measured loss on the select split
    max_texts: int = 64              # fit and select texts (each)
    max_tokens: int = 128
    fit: CalibrationSettings = field(default_factory=CalibrationSettings)
    compare: bool = False            # then: perplexity on the test split, explained vs calibrated vs ablations
    progress: bool = True
    cluster: str | None = None       # ray | ray:ADDRESS: with fraction, the heads' measured losses as Ray tasks (the fit stays here)


@dataclass(frozen=True, eq=False)
class CalibrateResult:
    plan: Any                        # SurrogatePlan, calibrated
    report: dict[str, Any]


def calibrate_loaded(lm: Any, plan: Any, s: CalibrateSettings, state_path: Path | None = None) -> CalibrateResult:
    """Calibrate ``plan`` (checked against ``lm``) on the fit and select splits of ``s.corpus``."""
    from dataclasses import replace

    from headcode.cluster.evaluate import executor
    from headcode.runtime.calibration.fit import calibrate
    from headcode.runtime.evaluation.heldout import eval_texts
    from headcode.runtime.text import corpus as C

    texts = eval_texts(C.load_corpus(s.corpus, s.unit), lm.tokenizer, s.max_texts, s.max_tokens)
    if s.fraction is not None:
        from headcode.runtime.evaluation.select_plan import SelectSettings, select_plan

        plan = select_plan(lm, plan, texts.select, SelectSettings(
            fraction=s.fraction, warm=s.warm_choice, rank=s.rank, progress=s.progress,
            executor=executor(s.cluster)), texts.fit).plan
    if s.warm_start and len(plan.compiled_heads()) == len(plan.heads):  # (an uncompiled head: calibrate says so)
        # heads with a surrogate already (calibrated, or warm from the choice) keep it
        from headcode.runtime.calibration.warm import warm_plan

        plan = warm_plan(lm, plan, texts.fit, s.rank.batch_size, progress=s.progress)
    fit = replace(s.fit, progress=s.progress)
    cal = calibrate(lm, plan, texts.fit, texts.select, fit, state_path)
    report = {"model": lm.name, "surrogates": s.surrogates, "corpus": s.corpus, "unit": s.unit,
              "heads": list(plan.heads), "fit_texts": len(texts.fit),
              "heads_chosen_with": None if s.fraction is None else (
                  "warm constants (mean residual on the fit split)" if s.warm_choice else "the programs as explained"), "select_texts": len(texts.select),
              **cal.report, "settings": asdict(s)}
    if s.compare:  # the test split is read here, after every fit is done, for perplexities only
        from headcode.runtime.calibration.compare import compare

        report["compare"] = {"test": texts.tests[0].source,
                             **compare(lm, cal.plan, texts.fit, texts.select, texts.tests[0].texts, fit)}
    return CalibrateResult(cal.plan, report)


def markdown(plan: Any, report: dict[str, Any]) -> str:
    """Each head's explanation (what a reader reads) beside its surrogate (what runs)."""
    lines = [f"# headcode calibrate: {report['model']}", "",
             f"{len(plan.heads)} heads, fitted jointly on KL(base || replaced) over the fit split of "
             f"{report['corpus']}; select-split KL {report['kl_select_start']:.4f} -> {report['kl_select_best']:.4f} "
             f"in {report['steps']} steps.", "",
             "| head | explanation (fitted to the head's pattern) | surrogate (fitted for the model: what runs) |",
             "|---|---|---|"]
    from headcode.printable import printable

    def cell(text: str) -> str:
        return "`" + printable(text).replace("|", "\\|") + "`"

    for key, h in plan.heads.items():
        lines.append(f"| {key} | {cell(h.describe().split(': ', 1)[-1])} | {cell(h.describe_surrogate())} |")
    return "\n".join(lines) + "\n"


def calibrate_plan(s: CalibrateSettings) -> CalibrateResult:
    """Load the model and the plan, calibrate, write ``s.out`` (and ``.json`` beside it); resumable
    from ``s.out + '.state.pt'``, which is removed once the plan is written."""
    from headcode.compiler.export import save_plan
    from headcode.errors import HeadcodeError
    from headcode.files import write_json, write_text
    from headcode.runtime.model.loading import load_model
    from headcode.runtime.surrogate.apply import plan_for_model

    out = Path(s.out)
    if out.resolve() == Path(s.surrogates).resolve():
        raise HeadcodeError("--out is the plan being calibrated: write the calibrated plan to another file")
    if s.fraction is not None and not 0.0 < s.fraction <= 1.0:
        raise HeadcodeError(f"--fraction {s.fraction} is not in (0, 1]: give the share of all heads")
    if not Path(s.surrogates).is_file():  # before the model loads (seconds)
        raise HeadcodeError(f"no surrogate plan at {s.surrogates}: run `headcode compile DIR` (or select) first")
    if s.cluster is not None:  # a bad --cluster (or no Ray) is said before the model loads
        from headcode.cluster.evaluate import executor

        if s.fraction is None:
            raise HeadcodeError("--cluster runs the choice of heads on Ray (the fit is sequential): give --fraction too")
        executor(s.cluster)
    lm = load_model(s.model)
    plan = plan_for_model(s.surrogates, lm)
    state = out.with_name(out.name + ".state.pt")
    res = calibrate_loaded(lm, plan, s, state)
    save_plan(res.plan, out)
    write_json(out.with_suffix(".json"), res.report)
    write_text(out.with_suffix(".md"), markdown(res.plan, res.report))
    state.unlink(missing_ok=True)
    return res
