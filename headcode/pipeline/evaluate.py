"""Evaluate a surrogate plan: choose the heads to replace on the select split, then perplexity on
test text only — the corpus's test split and each ``test_text`` (a file: all of it test; a corpus
name: its test split) — for the base model, the surrogates and baselines at the same heads and at
the heads each baseline's own criterion chooses; zero-shot QA with 95% intervals; a plot of
perplexity against the share of heads replaced (``runtime.evaluation.driver``). An interrupted run
resumes from ``OUT.state.json``."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from headcode.errors import HeadcodeError
from headcode.runtime.evaluation.settings import BASELINES, KNOWN, OPTIMAL, EvalSettings
from headcode.runtime.model.loading import DEFAULT_MODEL


@dataclass(frozen=True)
class EvaluateSettings:
    surrogates: Path                 # surrogates.safetensors from compile
    out: Path                        # the JSON report
    model: str = DEFAULT_MODEL
    text: str = "stories"            # corpus: stories | lambada | FILE.txt | hf:<dataset>
    unit: str = "paragraph"
    max_texts: int | None = None     # per split
    max_tokens: int = 256
    backend: str = "numba"           # numba | triton | torch
    plot: Path | None = None         # default: next to out, .png
    save_plan: Path | None = None    # also write a plan with only the heads replaced at `fraction`
    progress: bool = True
    test_text: tuple[str, ...] = ()  # more test text: files (all of it test) or corpus names (their test split)
    test_tokens: int | None = None   # take test texts until this many tokens are predicted (e.g. 20000)
    # calibrate (issue 19): heads are chosen with the programs as explained (or with warm constants,
    # each head's mean residual on the fit split: evaluation.warm_choice), then at each share of heads
    # the chosen surrogates are calibrated jointly from their warm constants (`calibrated`), beside
    # optimal ablation at the same heads and at its own
    # what is measured (the share of heads, the curve, baselines, QA, how heads are chosen, and
    # calibration: CalibrationSettings in evaluation.calibrate, or None)
    evaluation: EvalSettings = EvalSettings()
    cluster: str | None = None       # ray | ray:ADDRESS: the independent forward passes as Ray tasks (headcode.cluster)


@dataclass(frozen=True)
class EvaluateResult:
    out: Path
    report: dict[str, Any] = field(default_factory=dict)   # what out holds

    @property
    def plot(self) -> str | None:
        return self.report.get("plot")


def _problems(s: EvaluateSettings) -> list[str]:
    e = s.evaluation
    out = [] if 0.0 <= e.fraction <= 1.0 else [f"--fraction {e.fraction} is not in [0, 1]: give the share of all heads"]
    out += [f"--curve/--qa-at: {f:g} is not in [0, 1]" for f in (*e.curve, *e.qa_at) if not 0.0 <= f <= 1.0]
    for flag, names, ok in (("--baselines", e.baselines, KNOWN), ("--own-choice", e.own_choice, BASELINES + (OPTIMAL,)),
                            ("--qa-baselines", e.qa_baselines, KNOWN)):
        out += [f"{flag}: unknown baseline {b!r} (use {', '.join(ok)} or none)" for b in names if b not in ok]
    if s.test_tokens is not None and s.test_tokens < 2:
        out.append(f"--test-tokens {s.test_tokens}: give at least 2 (e.g. 20000)")
    return out


def state_key(s: EvaluateSettings, fingerprint: str) -> str:
    """What decides every finished piece of a run: the plan's bytes, the model, the texts and the
    settings of the choice of heads. A resumed run reuses pieces only under the same key."""
    import dataclasses
    import hashlib
    import json

    h = hashlib.sha256(Path(s.surrogates).read_bytes())
    keys = ("model", "text", "unit", "max_texts", "max_tokens", "test_text", "test_tokens", "backend")
    cal = None if s.evaluation.calibrate is None else dataclasses.asdict(s.evaluation.calibrate) | {"progress": None}
    h.update(json.dumps([fingerprint] + [getattr(s, k) for k in keys]
                        + [s.evaluation.fraction, dataclasses.asdict(s.evaluation.rank), cal,
                           s.evaluation.warm_choice]).encode())
    return h.hexdigest()


def evaluate_plan(s: EvaluateSettings, loaded: Any = None) -> EvaluateResult:
    """Write the evaluation report of ``s.surrogates`` on ``s.model`` to ``s.out`` (and the plot).
    ``loaded``: the model, when already loaded. Every bad setting is named in one error before
    anything loads. With ``progress``: one bar, counting forward passes."""
    from headcode.cluster.evaluate import executor
    from headcode.compiler.export import save_plan
    from headcode.files import write_json
    from headcode.progress import forward_passes
    from headcode.runtime.evaluation.driver import run_evaluation
    from headcode.runtime.evaluation.heldout import eval_texts, read_test_text
    from headcode.runtime.evaluation.select_plan import subset_plan
    from headcode.runtime.evaluation.state import EvalState
    from headcode.runtime.model.heads import HeadRef
    from headcode.runtime.model.loading import load_model
    from headcode.runtime.surrogate.apply import build_surrogates, plan_for_model
    from headcode.runtime.text.corpus import load_corpus

    reasons = _problems(s)
    tests = []
    for spec in s.test_text:
        try:
            tests.append(read_test_text(spec, s.unit))
        except HeadcodeError as e:
            reasons.append(str(e))
    if reasons:
        raise HeadcodeError("; ".join(reasons))
    ex = executor(s.cluster)  # a bad --cluster (or no Ray) is said before anything loads
    corpus = load_corpus(s.text, s.unit)
    lm = loaded if loaded is not None else load_model(s.model)
    plan = plan_for_model(s.surrogates, lm)
    programs = {HeadRef.parse(k): ch.source for k, ch in plan.heads.items()}
    et = eval_texts(corpus, lm.tokenizer, s.max_texts, s.max_tokens, tests, s.test_tokens)
    heads = None
    if s.evaluation.calibrate is not None:  # every fit starts from the heads' warm constants
        from headcode.runtime.calibration.warm import warm_plan

        fit = et.splits()["fit"] or et.splits()["select"]
        if not s.evaluation.warm_choice:
            heads = build_surrogates(plan, lm, backend=s.backend)
        plan = warm_plan(lm, plan, fit, s.evaluation.rank.batch_size, s.backend, s.progress)
    heads = heads if heads is not None else build_surrogates(plan, lm, backend=s.backend)
    state = EvalState(f"{s.out}.state.json", state_key(s, lm.fingerprint))
    settings = replace(s.evaluation, progress=False, executor=ex)
    info = {"surrogates": str(s.surrogates), "corpus": s.text, "unit": s.unit, "backend": s.backend,
            "test_text": list(s.test_text), "dropped_for_overlap": et.dropped_for_overlap,
            "uncompiled_heads": sorted(k for k, ch in plan.heads.items() if not ch.compiled)}
    with forward_passes(lm.model, "evaluate", enabled=s.progress and ex is None):  # its hook would travel with the model
        report = run_evaluation(lm, heads, et.splits(), settings, programs=programs,
                                plot=str(s.plot or Path(s.out).with_suffix(".png")), info=info, tests=et.tests,
                                state=state, plan=plan)
    if s.save_plan:
        chosen = subset_plan(plan, [h["head"] for h in report["heads_replaced"]])
        fitted = state.get("calibrated|" + ",".join(sorted(chosen.heads, key=HeadRef.parse)))
        if fitted is not None:  # the calibrated surrogates at the headline heads
            chosen = type(chosen)(chosen.model_id, chosen.fingerprint,
                                  {k: chosen.heads[k].calibrated(*fitted["heads"][k]) for k in chosen.heads})
        save_plan(chosen, s.save_plan)
        report["saved_plan"] = str(s.save_plan)
    write_json(s.out, report)
    state.remove()
    return EvaluateResult(Path(s.out), report)


def parse_fractions(text: str) -> tuple[float, ...]:
    """``"0,0.1,0.25"`` -> ``(0.0, 0.1, 0.25)``; a one-line error for anything else."""
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError as e:
        raise HeadcodeError(f"--curve {text!r}: give fractions separated by commas, e.g. 0,0.1,0.25,0.5") from e


def _pct(x: float) -> str:
    return f"{100 * x:+.1f}%" if abs(x) < 10 else f"x{1 + x:.1f}"


def perplexity_table(name: str, r: dict) -> list[str]:
    """One test set: perplexity (and its change over the base model) per variant and share of heads."""
    names = [k for k in r["curve"][0] if k not in ("fraction", "k", "actual_fraction")]
    width = max(17, *(len(n.replace("_own", " (own)")) for n in names))
    lines = [f"perplexity on {r['source']} ({r['texts']} texts, {r['predicted_tokens']:,} tokens predicted; "
             f"base {r['base']:.3f}):",
             "  heads replaced " + " ".join(f"{n.replace('_own', ' (own)'):>{width}}" for n in names)]
    for row in r["curve"]:
        cells = [f"{row[n]:.2f} {_pct(row[n] / r['base'] - 1):>7}" for n in names]
        lines.append(f"  {row['k']:>4} ({100 * row['actual_fraction']:4.1f}%) " + " ".join(f"{c:>{width}}" for c in cells))
    return lines


def qa_table(report: dict) -> list[str]:
    """Per task and share of heads: accuracy [95% CI] and the difference from base [95% CI], points."""
    if not report.get("qa_at"):
        return []
    lines = [f"QA accuracy, points [95% interval]; {report['qa_interval']}:"]
    for task, at in report["qa_at"].items():
        b = report["qa"][task]["base"]
        lines.append(f"  {task} (n={report['qa'][task]['n']}): base {100 * b['acc']:.1f} "
                     f"[{100 * b['acc_ci95'][0]:.1f}, {100 * b['acc_ci95'][1]:.1f}]")
        for label, variants in at.items():
            for name, v in variants.items():
                lo, hi = v["acc_diff_ci95"]
                lines.append(f"    {100 * float(label):4.0f}% {name:>20}: {100 * v['acc']:5.1f} "
                             f"[{100 * v['acc_ci95'][0]:.1f}, {100 * v['acc_ci95'][1]:.1f}]  "
                             f"vs base {100 * v['acc_diff']:+5.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]")
    return lines


def summary(report: dict) -> str:
    """Tables: perplexity per test set (every variant, every share of heads), then QA with intervals."""
    lines = [f"{report['model']}: heads chosen on the select split of {report.get('corpus', 'the corpus')}; "
             f"headline {len(report['heads_replaced'])}/{report['total_heads']} heads (fraction {report['fraction']:g})"]
    for name, r in report["test_sets"].items():
        lines += perplexity_table(name, r)
    lines += qa_table(report)
    for p in report.get("plots", []):
        lines.append(f"plot: {p}")
    return "\n".join(lines)
