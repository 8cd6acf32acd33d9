"""``headcode select``'s work: choose the heads to replace on the select split and keep only them
in the plan, so that the file itself says which heads a served or benchmarked model replaces.

Heads are chosen by what replacing them does to the loss (``runtime.evaluation.selection``), or as whole
KV groups (``runtime.evaluation.selection_groups``) so that the KV cache shrinks; the report gives the
select-split loss with all chosen heads in place and the KV-cache bytes per token saved.
Only compiled heads are candidates: a served plan runs kernels over tables, never Python.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from headcode.compiler.head import SurrogatePlan
from headcode.errors import HeadcodeError
from headcode.runtime.evaluation.selection import loss_with, rank_heads
from headcode.runtime.evaluation.selection_groups import cache_saving, kv_groups, rank_groups
from headcode.runtime.evaluation.settings import RankSettings
from headcode.runtime.model.heads import HeadRef
from headcode.runtime.surrogate.apply import build_surrogates


@dataclass(frozen=True)
class SelectSettings:
    fraction: float = 0.25          # of all heads
    whole_groups: bool = False      # replace only whole KV groups (the KV cache shrinks)
    rank: RankSettings = RankSettings()   # how heads (groups) are chosen on the select split
    backend: str = "numba"
    warm: bool = False              # choose with each head's warm constant (its mean residual on fit texts)
    progress: bool = True
    executor: Any = None            # where the measured losses run (runtime.evaluation.parallel; None: here)


@dataclass(frozen=True, eq=False)
class Selection:
    plan: SurrogatePlan             # the chosen heads only
    heads: tuple[HeadRef, ...]      # best first
    report: dict[str, Any]


def subset_plan(plan: SurrogatePlan, heads: Sequence[HeadRef | str]) -> SurrogatePlan:
    """``plan`` with only ``heads`` (in that order); ``HeadcodeError`` for a head it lacks."""
    keys = [str(h) for h in heads]
    missing = [k for k in keys if k not in plan.heads]
    if missing:
        raise HeadcodeError(f"the plan has no program for {', '.join(missing)}: choose among its heads")
    return SurrogatePlan(model_id=plan.model_id, fingerprint=plan.fingerprint, heads={k: plan.heads[k] for k in keys})


def select_plan(loaded: Any, plan: SurrogatePlan, select_texts: Sequence[np.ndarray],
                s: SelectSettings = SelectSettings(), fit_texts: Sequence[np.ndarray] = ()) -> Selection:
    """Choose ``s.fraction`` of the model's heads among the plan's compiled ones (``plan`` checked
    against ``loaded`` already: ``surrogate.plan_for_model``). ``s.warm``: each head without a
    surrogate first gets its mean residual on ``fit_texts`` as a constant (``calibration.warm``);
    the plan returned keeps those constants (what the heads were chosen with)."""
    if not 0.0 < s.fraction <= 1.0:
        raise HeadcodeError(f"fraction {s.fraction} is not in (0, 1]: give the share of all heads to replace")
    compiled = plan.compiled_heads()
    if not compiled:
        raise HeadcodeError("the plan has no compiled heads to choose from: run `headcode compile` first")
    if s.warm:
        from headcode.runtime.calibration.warm import warm_plan

        if not len(fit_texts):
            raise HeadcodeError("choosing heads with warm constants needs fit texts: the corpus has no fit split")
        plan = warm_plan(loaded, plan, fit_texts, s.rank.batch_size, s.backend, s.progress)
        compiled = plan.compiled_heads()
    fns = build_surrogates(compiled, loaded, s.backend)
    total = loaded.n_layers * loaded.n_heads
    k = int(round(s.fraction * total))
    group = loaded.n_heads // loaded.n_kv_heads
    kw = dict(progress=s.progress, executor=s.executor, **s.rank.kwargs())
    if s.whole_groups:
        n_groups = max(1, int(round(k / group)))
        ranking = rank_groups(loaded, fns, select_texts, n_groups, s.rank.n_measure(n_groups), **kw)
        chosen = ranking.heads
        detail = {"groups": [{"group": str(g), "heads": [str(h) for h in g.heads],
                              "select_loss_increase": ranking.measured.get(g)} for g in ranking.groups]}
    else:
        k = max(1, min(k, len(fns)))
        ranking = rank_heads(loaded, fns, select_texts, n_measure=s.rank.n_measure(k), budget=k, **kw)
        chosen = ranking.take(k)
        detail = {"groups": [str(g) for g in kv_groups(chosen, loaded.n_heads, loaded.n_kv_heads)]}
    sub = [t[: s.rank.measure_tokens] for t in select_texts if len(t) > 1][: s.rank.measure_texts]
    together = loss_with(loaded, {h: fns[h] for h in chosen}, sub, s.rank.batch_size)
    saving = cache_saving(loaded, chosen)
    report = {
        "model": loaded.name, "total_heads": total, "candidates": len(fns),
        "uncompiled_skipped": len(plan.heads) - len(compiled), "fraction": s.fraction,
        "whole_groups": s.whole_groups, "group_size": group,
        "heads": [{"head": str(h), "select_loss_increase": ranking.measured.get(h) if not s.whole_groups else None,
                   "program": compiled[str(h)].source} for h in chosen],
        **detail,
        "select_loss": {"base": ranking.base_loss, "chosen": together, "increase": together - ranking.base_loss,
                        "texts": len(sub), "note": "on the select split, where the heads were chosen: not held out"},
        "kv_cache": saving.to_json(),
        "selection": {"split": "select", "method": ranking.method,
                      "heads_ran_as": "programs with warm constants (mean residual on the fit split)" if s.warm
                      else "programs as in the plan"},
    }
    return Selection(subset_plan(plan, chosen), tuple(chosen), report)
