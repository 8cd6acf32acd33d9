"""What calibration buys, at the same heads: perplexity on held-out text for the programs as
explained, the calibrated surrogates, optimal ablation (a constant per head fitted the same way,
no program) and mean-ablation (the head's mean output).

A program explains something only where it beats the best constant at the same heads: the
optimal-ablation row is that constant. Every fit reads the fit and select splits only; the
perplexities come from the texts given as ``test``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from headcode.compiler.head import SurrogatePlan
from headcode.runtime.calibration.fit import CalibrationSettings, fit_constants
from headcode.runtime.evaluation.measures import head_output_means, token_loss
from headcode.runtime.model.heads import HeadRef
from headcode.runtime.surrogate.apply import apply_plan, build_surrogates
from headcode.runtime.surrogate.replacements import MeanHead


def explained(plan: SurrogatePlan) -> SurrogatePlan:
    """``plan`` with every surrogate dropped: the programs as explained, no constant."""
    return SurrogatePlan(plan.model_id, plan.fingerprint, {k: replace(h, surrogate=None) for k, h in plan.heads.items()})


def _ppl(loaded: Any, fns: dict, test: Sequence[np.ndarray], batch_size: int) -> float:
    if not fns:
        return token_loss(loaded.model, test, loaded.tokenizer, batch_size).perplexity
    with apply_plan(loaded.model, fns):
        return token_loss(loaded.model, test, loaded.tokenizer, batch_size).perplexity


def compare(loaded: Any, calibrated: SurrogatePlan, fit: Sequence[np.ndarray], select: Sequence[np.ndarray],
            test: Sequence[np.ndarray], settings: CalibrationSettings | None = None,
            batch_size: int = 8) -> dict[str, Any]:
    """Perplexity on ``test`` for the base model and the four variants at ``calibrated``'s heads,
    each with its excess over the base in percent."""
    settings = settings or CalibrationSettings()
    heads = [HeadRef.parse(k) for k in calibrated.heads]
    means = head_output_means(loaded, list(fit), batch_size, settings.progress)
    # optimal ablation starts at mean-ablation: early stopping on the select split can only improve on it
    constants = fit_constants(loaded, heads, fit, select, settings, start=means)
    variants = {
        "explained": build_surrogates(explained(calibrated), loaded),
        "calibrated": build_surrogates(calibrated, loaded),
        "optimal_ablation": {h: MeanHead(constants[h]) for h in heads},
        "mean_ablation": {h: MeanHead(means[h.layer, h.head]) for h in heads},
    }
    base = _ppl(loaded, {}, test, batch_size)
    rows = {name: _ppl(loaded, fns, test, batch_size) for name, fns in variants.items()}
    out: dict[str, Any] = {"heads": len(heads), "test_texts": len(test),
                           "predicted_tokens": int(sum(max(len(t) - 1, 0) for t in test)), "base": base}
    for name, p in rows.items():
        out[name] = {"perplexity": p, "excess_percent": 100 * (p / base - 1)}
    opt, cal = math.log(rows["optimal_ablation"] / base), math.log(rows["calibrated"] / base)
    out["calibrated_share_of_optimal_ablation_excess_removed"] = 1 - cal / opt if opt > 0 else None
    return out
