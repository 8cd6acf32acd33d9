"""The evaluation behind ``headcode evaluate``: choose heads on the select split, report the
test split's perplexity for the model with surrogates and with baselines at the same heads,
zero-shot QA, and a plot of perplexity against the fraction of heads replaced.

Held-out means held-out: head means for mean-ablation come from the fit split (the select
split when there is no fit text), the choice of heads from the select split, and every
reported number from the test split (perplexity) or the QA tasks.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from headcode.errors import HeadcodeError
from headcode.files import save_figure
from headcode.runtime.evaluation.measures import (
    choice_logprobs,
    head_output_means,
    load_questions,
    qa_accuracy,
    token_loss,
)
from headcode.runtime.evaluation.selection import Ranking, rank_heads
from headcode.runtime.model.heads import HeadRef
from headcode.runtime.surrogate.apply import apply_plan
from headcode.runtime.surrogate.replacements import HeadFn, baseline_heads

BASELINES = ("mean_ablation", "first_token", "uniform")
CURVE = (0.0, 0.1, 0.25, 0.5)


@dataclass(frozen=True)
class EvalSettings:
    fraction: float = 0.25                  # of all heads, the headline budget
    curve: tuple[float, ...] = CURVE        # fractions for the plot
    baselines: tuple[str, ...] = BASELINES
    qa_tasks: tuple[str, ...] = ()
    qa_limit: int | None = 100              # documents per task
    batch_size: int = 8
    measure_factor: float = 1.5             # heads measured alone: this x the headline budget
    measure_texts: int = 8                  # select texts used for the measured stage
    measure_tokens: int = 128               # ... truncated to this many tokens
    rounds: int = 4                         # choose the headline heads in rounds (interactions)
    progress: bool = True


def _n_heads(fraction: float, total: int) -> int:
    if not 0.0 <= fraction <= 1.0:
        raise HeadcodeError(f"fraction {fraction} is not in [0, 1]: give the share of all heads to replace")
    return int(round(fraction * total))


def _with(loaded: Any, fns: Mapping[HeadRef, HeadFn], work):
    """Run ``work()`` with ``fns`` in place (nothing applied for an empty set)."""
    if not fns:
        return work()
    with apply_plan(loaded.model, fns):
        return work()


def _ppl(loaded: Any, fns: Mapping[HeadRef, HeadFn], texts: Sequence[np.ndarray], s: EvalSettings, desc: str) -> float:
    return _with(loaded, fns, lambda: token_loss(loaded.model, texts, loaded.tokenizer, s.batch_size,
                                                 s.progress, desc).perplexity)


def plot_curve(curve: Sequence[dict], base: float, path: str, title: str) -> str:
    """Perplexity against the fraction of heads replaced, one line per variant (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [100 * c["actual_fraction"] for c in curve]
    for name in ("surrogate",) + BASELINES:
        ys = [c.get(name) for c in curve]
        if all(y is not None for y in ys):
            ax.plot(xs, ys, marker="o", label=name.replace("_", " "))
    ax.axhline(base, color="grey", linestyle=":", label="base model")
    ax.set_xlabel("heads replaced (%)")
    ax.set_ylabel("perplexity (test split)")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)
    return path


def _qa(loaded: Any, variants: Mapping[str, Mapping[HeadRef, HeadFn]], s: EvalSettings) -> dict:
    out: dict[str, dict] = {}
    for task in s.qa_tasks:
        qs = load_questions(loaded.tokenizer, task, s.qa_limit)
        res: dict[str, Any] = {"n": len(qs)}
        for name, fns in variants.items():
            scores = _with(loaded, fns, lambda qs=qs, desc=f"{task} {name}": choice_logprobs(
                loaded.model, qs, loaded.tokenizer, 2 * s.batch_size, s.progress, desc))
            acc = qa_accuracy(qs, scores)
            res[name] = {"acc": acc["acc"], "acc_per_char": acc["acc_per_char"]}
        out[task] = res
    return out


def run_evaluation(loaded: Any, heads: Mapping[HeadRef, HeadFn], texts: Mapping[str, Sequence[np.ndarray]],
                   settings: EvalSettings = EvalSettings(), programs: Mapping[HeadRef, str] | None = None,
                   plot: str | None = None, info: Mapping[str, Any] | None = None) -> dict:
    """The evaluation report (a JSON-ready dict). ``heads``: every head the plan can replace;
    ``texts``: token ids per split (``fit``, ``select``, ``test``)."""
    s = settings
    t0 = time.time()
    test, select = list(texts.get("test", ())), list(texts.get("select", ()))
    if not test:
        raise HeadcodeError("the corpus has no test-split text to measure perplexity on: use a larger corpus")
    total = loaded.n_layers * loaded.n_heads
    k_main = _n_heads(s.fraction, total)
    fractions = sorted(set(s.curve) | {s.fraction})
    ks = {f: min(_n_heads(f, total), len(heads)) for f in fractions}
    ranking: Ranking = rank_heads(loaded, heads, select, n_measure=int(np.ceil(s.measure_factor * k_main)),
                                  measure_texts=s.measure_texts, measure_tokens=s.measure_tokens,
                                  batch_size=s.batch_size, progress=s.progress, budget=k_main, rounds=s.rounds)
    t_rank = time.time()
    means = None
    if "mean_ablation" in s.baselines:
        mean_texts = list(texts.get("fit", ())) or select
        means = head_output_means(loaded, mean_texts, s.batch_size, s.progress)
    base = _ppl(loaded, {}, test, s, "ppl base")
    curve = []
    for f in fractions:
        chosen = ranking.take(ks[f])
        row: dict[str, Any] = {"fraction": f, "k": len(chosen), "actual_fraction": len(chosen) / total}
        row["surrogate"] = _ppl(loaded, {h: heads[h] for h in chosen}, test, s, f"ppl surrogate {f:g}")
        for b in s.baselines:
            row[b] = _ppl(loaded, dict(baseline_heads(b, chosen, means)), test, s, f"ppl {b} {f:g}")
        curve.append(row)
    main = next(c for c in curve if c["fraction"] == s.fraction)
    chosen = ranking.take(ks[s.fraction])
    t_ppl = time.time()
    variants = {"base": {}, "surrogate": {h: heads[h] for h in chosen}}
    if "mean_ablation" in s.baselines:
        variants["mean_ablation"] = dict(baseline_heads("mean_ablation", chosen, means))
    qa = _qa(loaded, variants, s)
    ppl = {"base": base, "surrogate": main["surrogate"], **{b: main[b] for b in s.baselines}}
    report = {
        **dict(info or {}),
        "model": loaded.name,
        "tokenizer_fingerprint": loaded.fingerprint,
        "texts": {k: len(v) for k, v in texts.items()},
        "tokens": {k: int(sum(len(t) for t in v)) for k, v in texts.items()},
        "total_heads": total,
        "available_heads": len(heads),
        "fraction": s.fraction,
        "heads_requested": k_main,
        "heads_replaced": [
            {"head": str(h), "program": (programs or {}).get(h),
             "select_loss_increase": ranking.measured.get(h), "select_loss_estimate": ranking.estimate.get(h)}
            for h in chosen],
        "perplexity": ppl,
        "perplexity_increase": {k: v / base - 1.0 for k, v in ppl.items()},
        "curve": curve,
        "qa": qa,
        "selection": {"split": "select", "method": ranking.method, "base_loss": ranking.base_loss,
                      "measured_heads": len(ranking.measured)},
        "seconds": {"selection": t_rank - t0, "perplexity": t_ppl - t_rank, "qa": time.time() - t_ppl},
    }
    if plot:
        report["plot"] = plot_curve(curve, base, plot, f"{loaded.name}: perplexity vs heads replaced")
    return report
