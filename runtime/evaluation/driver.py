"""The evaluation behind ``headcode evaluate``: choose heads on the select split, report each test
set's perplexity for the model with surrogates and with baselines, zero-shot QA with 95%
intervals, and a plot of perplexity against the share of heads replaced.

Baselines are measured twice: at the heads chosen for the surrogates (``mean_ablation``, …) and
at the heads each baseline's own criterion chooses (``mean_ablation_own``, …): the same
loss-based choice on the select split (``runtime.selection``), with the baseline in place of the
program. Held-out means held-out: head means for mean-ablation come from the fit split (the
select split when there is no fit text), every choice of heads from the select split, and every
reported number from a test set (``runtime.heldout``) or the QA tasks.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from headcode.errors import HeadcodeError
from headcode.files import save_figure
from headcode.runtime.evaluation.heldout import TestSet
from headcode.runtime.evaluation.measures import head_output_means, token_loss
from headcode.runtime.evaluation.qa import model_scorer, qa_with_intervals
from headcode.runtime.evaluation.selection import Ranking, rank_heads
from headcode.runtime.evaluation.settings import KNOWN, OPTIMAL, OWN, EvalSettings
from headcode.runtime.evaluation.state import EvalState, heads_key, ranking_from_json, ranking_to_json
from headcode.runtime.model.heads import HeadRef
from headcode.runtime.surrogate.apply import apply_plan
from headcode.runtime.surrogate.replacements import HeadFn, baseline_heads


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
    return _with(loaded, fns, lambda: token_loss(loaded.model, texts, loaded.tokenizer, s.rank.batch_size,
                                                 s.progress, desc).perplexity)


CALIBRATED = "calibrated"      # the surrogates fitted jointly for the model at the chosen heads
EXPLAINED = "explained"        # the programs as explained: the explanation's weights, no constant


class Ablations:
    """What the fitted variants and ablation baselines put in a head's place: ``means [L, H, D]``
    (mean-ablation, from the fit split); for a set of heads, constants fitted jointly on the fit
    split and stopped on the select split (optimal ablation) and, given the ``plan`` the heads were
    chosen from, its surrogates calibrated jointly at those heads (``calibrated``, from each head's
    weights and constant in the plan) or its programs as explained (``explained``). Every fit is
    kept in the evaluation state for resuming."""

    def __init__(self, loaded: Any, fit: Sequence[np.ndarray], select: Sequence[np.ndarray], state: EvalState,
                 progress: bool, plan: Any = None, calibration: Any = None, backend: str = "numba"):
        self.loaded, self.fit, self.select, self.state, self.progress = loaded, fit, select, state, progress
        self.plan, self.calibration, self.backend = plan, calibration, backend
        self.means: Any = None
        self.fits: dict[str, dict[str, Any]] = {}   # name@heads: each fit's select KL and steps

    def _settings(self) -> Any:
        from dataclasses import replace

        from headcode.runtime.calibration.fit import CalibrationSettings

        return replace(self.calibration or CalibrationSettings(), progress=self.progress)

    def constants_at(self, heads: Sequence[HeadRef]) -> dict[HeadRef, HeadFn]:
        import torch

        from headcode.runtime.calibration.fit import fit_constants
        from headcode.runtime.surrogate.replacements import MeanHead

        if not heads:
            return {}
        key = f"optimal-from-mean|{heads_key(heads)}"  # (earlier runs' constants started at zero)
        done = self.state.get(key)
        if done is None:
            c = fit_constants(self.loaded, list(heads), self.fit, self.select, self._settings(), start=self.means)
            done = self.state.put(key, {str(h): v.tolist() for h, v in c.items()})
        return {h: MeanHead(torch.tensor(done[str(h)], dtype=torch.float32)) for h in heads}

    def calibrated_at(self, heads: Sequence[HeadRef]) -> dict[HeadRef, HeadFn]:
        from headcode.runtime.calibration.fit import calibrate
        from headcode.runtime.evaluation.select_plan import subset_plan
        from headcode.runtime.surrogate.apply import build_surrogates

        if not heads:
            return {}
        sub = subset_plan(self.plan, heads)
        key = f"calibrated|{heads_key(heads)}"
        done = self.state.get(key)
        if done is None:
            cal = calibrate(self.loaded, sub, self.fit, self.select, self._settings())
            done = self.state.put(key, {"heads": {k: [list(h.surrogate.weights), list(h.surrogate.constant),
                                                      h.surrogate.fitted] for k, h in cal.plan.heads.items()},
                                        "kl_select_start": cal.report["kl_select_start"],
                                        "kl_select_best": cal.report["kl_select_best"], "steps": cal.report["steps"]})
        self.fits[f"calibrated@{len(heads)}"] = {k: v for k, v in done.items() if k != "heads"}
        fitted = {k: sub.heads[k].calibrated(w, c, how) for k, (w, c, how) in done["heads"].items()}
        return build_surrogates(fitted, self.loaded, self.backend)

    def explained_at(self, heads: Sequence[HeadRef]) -> dict[HeadRef, HeadFn]:
        from headcode.runtime.calibration.compare import explained
        from headcode.runtime.evaluation.select_plan import subset_plan
        from headcode.runtime.surrogate.apply import build_surrogates

        return build_surrogates(explained(subset_plan(self.plan, heads)), self.loaded, self.backend) if heads else {}


def _kind(name: str) -> str:
    return name[: -len(OWN)] if name.endswith(OWN) else name


def choose_heads(loaded: Any, heads: Mapping[HeadRef, HeadFn], select: Sequence[np.ndarray],
                 means: Any, s: EvalSettings, state: EvalState | None = None) -> dict[str, Ranking]:
    """Rankings on the select split, for the headline budget: ``surrogate`` over the plan's heads,
    and ``<baseline>_own`` for each baseline in ``s.own_choice`` over every head of the model."""
    total = loaded.n_layers * loaded.n_heads
    k_main = _n_heads(s.fraction, total)
    every = [HeadRef(layer, h) for layer in range(loaded.n_layers) for h in range(loaded.n_heads)]

    state = state or EvalState(None, "")

    def rank(name: str, fns: Mapping[HeadRef, HeadFn]) -> Ranking:
        done = state.get(f"ranking|{name}|{heads_key(fns)}")
        if done is not None:
            return ranking_from_json(done)
        r = rank_heads(loaded, fns, select, n_measure=s.rank.n_measure(k_main), progress=s.progress,
                       budget=k_main, executor=s.executor, **s.rank.kwargs())
        state.put(f"ranking|{name}|{heads_key(fns)}", ranking_to_json(r))
        return r

    out = {"surrogate": rank("surrogate", heads)}
    for b in s.own_choice:
        # optimal ablation's own heads: those chosen with each head's warm start, its mean output,
        # as the programs are chosen with theirs (the mean residual); then fitted jointly there
        kind = "mean_ablation" if b == OPTIMAL else b
        out[b + OWN] = out.get(kind + OWN) or rank(kind + OWN, dict(baseline_heads(kind, every, means.means)))
    return out


def variants_at(k: int, rankings: Mapping[str, Ranking], heads: Mapping[HeadRef, HeadFn], means: Any,
                s: EvalSettings, baselines: Sequence[str] | None = None) -> dict[str, dict[HeadRef, HeadFn]]:
    """Heads replaced by each variant at a budget of ``k`` heads: the surrogates at their heads, each
    baseline at those same heads, and each baseline ranked by its own criterion at its own ``k``."""
    chosen = rankings["surrogate"].take(min(k, len(heads)))
    out = {"surrogate": {h: heads[h] for h in chosen}}
    if s.calibrate is not None:  # on perplexity and on QA alike (``baselines``: only the baselines')
        out[CALIBRATED] = means.calibrated_at(chosen)
        if s.warm_choice:  # else the surrogates as chosen are the programs as explained
            out[EXPLAINED] = means.explained_at(chosen)
    for b in (s.baselines if baselines is None else baselines):
        out[b] = means.constants_at(chosen) if b == OPTIMAL else dict(baseline_heads(b, chosen, means.means))
    for b in (s.own_choice if baselines is None else [b for b in baselines if b in s.own_choice]):
        own = rankings[b + OWN].take(len(chosen))
        out[b + OWN] = means.constants_at(own) if b == OPTIMAL else dict(baseline_heads(b, own, means.means))
    return out


def _ppl_key(t: TestSet, name: str, fns: Mapping[HeadRef, HeadFn]) -> str:
    return f"ppl|{t.name}|{t.n_tokens}|{_kind(name)}|{heads_key(fns)}"


def _fetch_perplexities(loaded: Any, tests: Sequence[TestSet], rows: Sequence[tuple[float, dict]],
                        s: EvalSettings, state: EvalState) -> None:
    """Every perplexity ``perplexity_curves`` needs and ``state`` lacks, through ``s.executor`` (all
    at once, each kept in ``state`` as it finishes): the curves then read them from ``state``."""
    keys: dict[str, tuple[Mapping[HeadRef, HeadFn], Sequence[np.ndarray]]] = {}
    for t in tests:
        for name, fns in [("base", {})] + [(n, f) for _, v in rows for n, f in v.items() if f]:
            key = _ppl_key(t, name, fns)
            if state.get(key) is None:
                keys.setdefault(key, (fns, t.texts))
    order = list(keys)
    for i, loss in s.executor.token_losses(loaded, [keys[k] for k in order], s.rank.batch_size):
        state.put(order[i], loss.perplexity)


def perplexity_curves(loaded: Any, tests: Sequence[TestSet], rows: Sequence[tuple[float, dict]],
                      s: EvalSettings, state: EvalState | None = None) -> dict[str, dict]:
    """Per test set: its size, the base perplexity and one row per fraction (every variant's
    perplexity; with no head replaced, every variant is the base model). With ``s.executor``,
    every perplexity is measured through it first (``_fetch_perplexities``)."""
    total = loaded.n_layers * loaded.n_heads
    state = state or EvalState(None, "")
    for t in tests:
        if t.n_predicted == 0:
            raise HeadcodeError(f"test set {t.name} ({t.source}) has no text with two or more tokens")
    if s.executor is not None:
        _fetch_perplexities(loaded, tests, rows, s, state)
    out = {}
    for t in tests:
        def ppl(name: str, fns: Mapping[HeadRef, HeadFn], desc: str, t: TestSet = t) -> float:
            key = _ppl_key(t, name, fns)
            done = state.get(key)
            return float(done) if done is not None else state.put(key, _ppl(loaded, fns, t.texts, s, desc))

        base = ppl("base", {}, f"ppl {t.name} base")
        curve = []
        for f, variants in rows:
            k = len(variants["surrogate"])
            row: dict[str, Any] = {"fraction": f, "k": k, "actual_fraction": k / total}
            for name, fns in variants.items():
                row[name] = base if not fns else ppl(name, fns, f"ppl {t.name} {name} {f:g}")
            curve.append(row)
        out[t.name] = {"source": t.source, "texts": len(t.texts), "tokens": t.n_tokens,
                       "predicted_tokens": t.n_predicted, "base": base, "curve": curve}
    return out


def _qa(loaded: Any, rankings: Mapping[str, Ranking], heads: Mapping[HeadRef, HeadFn], means: Any,
        s: EvalSettings, state: EvalState | None = None) -> dict[str, Any]:
    total = loaded.n_layers * loaded.n_heads
    state = state or EvalState(None, "")
    fractions = [s.fraction] + [f for f in s.qa_at if f != s.fraction]
    variants = {f"{f:g}": variants_at(_n_heads(f, total), rankings, heads, means, s, s.qa_baselines)
                for f in fractions}
    model_score = model_scorer(loaded, lambda fns, work: _with(loaded, fns, work), 2 * s.rank.batch_size, s.progress)

    def key(task: str, name: str, fns: Mapping[HeadRef, HeadFn], qs: Sequence) -> str:
        return f"qa|{task}|{len(qs)}|{_kind(name)}|{heads_key(fns)}"

    def score(task: str, name: str, fns: Mapping[HeadRef, HeadFn], qs: Sequence) -> list[np.ndarray]:
        done = state.get(key(task, name, fns, qs))
        if done is None:
            done = state.put(key(task, name, fns, qs), [np.asarray(x).tolist() for x in model_score(task, name, fns, qs)])
        return [np.asarray(x, dtype=np.float64) for x in done]

    def fetch(task: str, qs: Sequence) -> None:
        """Every score of ``task`` that ``state`` lacks, through ``s.executor`` (all at once)."""
        jobs: dict[str, Mapping[HeadRef, HeadFn]] = {}
        for name, fns in [("base", {})] + [(n, f) for named in variants.values() for n, f in named.items()]:
            if state.get(key(task, name, fns, qs)) is None:
                jobs.setdefault(key(task, name, fns, qs), fns)
        order = list(jobs)
        for i, scores in s.executor.choice_scores(loaded, [jobs[k] for k in order], qs, 2 * s.rank.batch_size):
            state.put(order[i], [np.asarray(x).tolist() for x in scores])

    return qa_with_intervals(loaded.tokenizer, s.qa_tasks, s.qa_limit, variants, score, s.progress,
                             fetch if s.executor is not None else None)


def plot_curve(curve: Sequence[dict], base: float, path: str, title: str) -> str:
    """Perplexity against the fraction of heads replaced, one line per variant (PNG); a baseline at
    its own heads is dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [100 * c["actual_fraction"] for c in curve]
    for name in ("surrogate", CALIBRATED, EXPLAINED) + KNOWN + tuple(b + OWN for b in KNOWN):
        ys = [c.get(name) for c in curve]
        if all(y is not None for y in ys):
            ax.plot(xs, ys, marker="o", linestyle="--" if name.endswith(OWN) else "-",
                    label=name.replace(OWN, " (own heads)").replace("_", " "))
    ax.axhline(base, color="grey", linestyle=":", label="base model")
    ax.set_xlabel("heads replaced (%)")
    ax.set_ylabel("perplexity (test text)")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)
    return path


def _heads_json(rankings: Mapping[str, Ranking], k: int, programs: Mapping[HeadRef, str] | None) -> dict:
    r = rankings["surrogate"]
    chosen = r.take(k)
    out: dict[str, Any] = {"heads_replaced": [
        {"head": str(h), "program": (programs or {}).get(h),
         "select_loss_increase": r.measured.get(h), "select_loss_estimate": r.estimate.get(h)} for h in chosen]}
    out["own_choice"] = {
        name[: -len(OWN)]: {"heads": [str(h) for h in o.take(len(chosen))],
                            "select_loss_increase": [o.measured.get(h) for h in o.take(len(chosen))],
                            "shared_with_surrogate": len(set(o.take(len(chosen))) & set(chosen)),
                            "select_base_loss": o.base_loss, "method": o.method}
        for name, o in rankings.items() if name.endswith(OWN)}
    return out


def _plots(sets: Mapping[str, dict], plot: str, model: str) -> list[str]:
    out = []
    for i, (name, r) in enumerate(sets.items()):
        p = plot if i == 0 else str(Path(plot).with_name(f"{Path(plot).stem}-{i}{Path(plot).suffix or '.png'}"))
        out.append(plot_curve(r["curve"], r["base"], p, f"{model}: {name}"))
    return out


def run_evaluation(loaded: Any, heads: Mapping[HeadRef, HeadFn], texts: Mapping[str, Sequence[np.ndarray]],
                   settings: EvalSettings | None = None, programs: Mapping[HeadRef, str] | None = None,
                   plot: str | None = None, info: Mapping[str, Any] | None = None,
                   tests: Sequence[TestSet] | None = None, state: EvalState | None = None,
                   plan: Any = None) -> dict:
    """The evaluation report (a JSON-ready dict). ``heads``: every head the plan can replace;
    ``texts``: token ids per split (``fit``, ``select``, ``test``); ``tests``: the test sets (default:
    the ``test`` split alone), the first one being the headline; ``state``: finished pieces kept for
    resuming (``runtime.evaluate_state``); ``plan``: the ``SurrogatePlan`` behind ``heads``, needed
    with ``settings.calibrate`` (the chosen heads' surrogates are calibrated from it)."""
    s = settings or EvalSettings()
    if s.calibrate is not None and plan is None:
        raise HeadcodeError("calibrating in an evaluation needs the surrogate plan the heads come from")
    t0 = time.time()
    select = list(texts.get("select", ()))
    tests = list(tests) if tests is not None else [TestSet("test", "test split", tuple(texts.get("test", ())))]
    if not tests or not tests[0].texts:
        raise HeadcodeError("the corpus has no test-split text to measure perplexity on: use a larger corpus")
    total = loaded.n_layers * loaded.n_heads
    k_main = _n_heads(s.fraction, total)
    fit = list(texts.get("fit", ())) or select
    means = Ablations(loaded, fit, select, state or EvalState(None, ""), s.progress, plan, s.calibrate,
                      getattr(next(iter(heads.values()), None), "backend", "numba"))
    # optimal ablation's constants start at the heads' mean outputs (mean-ablation)
    if {"mean_ablation", OPTIMAL} & (set(s.baselines) | set(s.own_choice) | set(s.qa_baselines)):
        means.means = head_output_means(loaded, fit, s.rank.batch_size, s.progress)
    rankings = choose_heads(loaded, heads, select, means, s, state)
    t_rank = time.time()
    rows = [(f, variants_at(_n_heads(f, total), rankings, heads, means, s)) for f in sorted(set(s.curve) | {s.fraction})]
    sets = perplexity_curves(loaded, tests, rows, s, state)
    t_ppl = time.time()
    qa = _qa(loaded, rankings, heads, means, s, state) if s.qa_tasks else {"interval": None, "tasks": {}}
    first = sets[tests[0].name]
    main = next(c for c in first["curve"] if c["fraction"] == s.fraction)
    ppl = {"base": first["base"], **{k: v for k, v in main.items() if k not in ("fraction", "k", "actual_fraction")}}
    report = {
        **dict(info or {}),
        "model": loaded.name, "tokenizer_fingerprint": loaded.fingerprint,
        "texts": {k: len(v) for k, v in texts.items()},
        "tokens": {k: int(sum(len(t) for t in v)) for k, v in texts.items()},
        "total_heads": total, "available_heads": len(heads), "fraction": s.fraction, "heads_requested": k_main,
        **_heads_json(rankings, min(k_main, len(heads)), programs),
        "perplexity": ppl,
        "perplexity_increase": {k: v / first["base"] - 1.0 for k, v in ppl.items()},
        "curve": first["curve"],
        "test_sets": sets,
        "qa": {t: {"n": r["n"], "base": r["base"], **r["at"][f"{s.fraction:g}"]} for t, r in qa["tasks"].items()},
        "qa_at": {t: r["at"] for t, r in qa["tasks"].items()},
        "qa_interval": qa["interval"],
        "selection": {"split": "select", "method": rankings["surrogate"].method,
                      "base_loss": rankings["surrogate"].base_loss,
                      "measured_heads": len(rankings["surrogate"].measured)},
        "seconds": {"selection": t_rank - t0, "fits_and_perplexity": t_ppl - t_rank, "qa": time.time() - t_ppl},
        "calibration": ({"settings": {k: v for k, v in vars(s.calibrate).items()}, "fits": means.fits}
                        if s.calibrate is not None else None),
    }
    if plot:
        report["plots"] = _plots(sets, plot, loaded.name)
        report["plot"] = report["plots"][0]
    return report
