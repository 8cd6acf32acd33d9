"""Zero-shot multiple-choice QA of several variants of a model, with 95% intervals.

Per task the base model is scored once; each variant (a set of replaced heads, at one or more
shares of heads) is scored on the same questions. Per variant: accuracy (summed log-probability
of each choice) and per-character accuracy, each with a Wilson interval, and the paired
difference from the base model with a paired-bootstrap interval (``runtime.intervals``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from headcode.runtime.evaluation.intervals import METHOD, paired_difference, wilson
from headcode.runtime.evaluation.measures import Question, choice_logprobs, load_questions, qa_correct


def score_entry(correct: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray] | None) -> dict[str, Any]:
    """JSON entry of one variant: each accuracy with its interval, and (against ``base``) the paired
    difference with its interval. Accuracies are fractions (0.62 = 62%)."""
    out: dict[str, Any] = {}
    for key, c in correct.items():
        iv = wilson(c)
        out[key], out[f"{key}_ci95"] = iv.value, iv.to_json()
        if base is not None:
            d = paired_difference(c, base[key])
            out[f"{key}_diff"], out[f"{key}_diff_ci95"] = d.value, d.to_json()
    return out


Scorer = Callable[[str, str, Mapping[Any, Any], Sequence[Question]], list[np.ndarray]]


def qa_with_intervals(tokenizer: Any, tasks: Sequence[str], limit: int | None,
                      variants: Mapping[str, Mapping[str, Mapping[Any, Any]]], score: Scorer,
                      progress: bool = False,
                      fetch: Callable[[str, Sequence[Question]], None] | None = None) -> dict[str, Any]:
    """``variants[label][name]``: the heads replaced (``{HeadRef: HeadFn}``) for variant ``name`` at
    ``label`` (a share of heads, e.g. ``"0.25"``); ``score(task, name, fns, questions)`` gives per
    question the log-probability of each choice with ``fns`` in place (``name`` ``base``: none). Returns
    ``{"interval": method, "tasks": {task: {"n", "base", "at": {label: {name: entry}}}}}``.
    ``fetch(task, questions)``: called once per task before any ``score`` (to score every variant at once)."""
    out: dict[str, Any] = {"interval": METHOD, "tasks": {}}
    n_runs = len(tasks) * (1 + sum(len(v) for v in variants.values()))
    bar = tqdm(total=n_runs, desc="qa", unit="run", disable=not progress, leave=False)
    for task in tasks:
        qs = load_questions(tokenizer, task, limit)
        if fetch is not None:
            fetch(task, qs)
        base = qa_correct(qs, score(task, "base", {}, qs))
        bar.update()
        res: dict[str, Any] = {"n": len(qs), "base": score_entry(base, None), "at": {}}
        for label, named in variants.items():
            res["at"][label] = {}
            for name, fns in named.items():
                c = qa_correct(qs, score(task, name, fns, qs))
                res["at"][label][name] = score_entry(c, base)
                bar.update()
        out["tasks"][task] = res
    bar.close()
    return out


def model_scorer(loaded: Any, with_heads: Callable, batch_size: int, progress: bool) -> Scorer:
    """A ``Scorer`` over ``loaded``: ``with_heads(fns, work)`` runs ``work()`` with ``fns`` in place."""
    def score(task: str, name: str, fns: Mapping[Any, Any], qs: Sequence[Question]) -> list[np.ndarray]:
        return with_heads(fns, lambda: choice_logprobs(loaded.model, qs, loaded.tokenizer, batch_size,
                                                       progress, f"{task} {name} ({len(fns)} heads)"))
    return score
