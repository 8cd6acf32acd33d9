"""Fit every replaced head at once for what the model needs: KL(base ‖ replaced) on the fit split.

``calibrate(loaded, plan, fit, select, settings)`` puts a ``TrainableHead`` in place of each head
of ``plan`` (weights start at the explanation's, constants at the plan's — a warm constant — or
zero), freezes the base model, and
runs Adam on the mean per-token KL between the base model's next-token distribution (computed
once per text, without the plan) and the replaced model's, one fit text a step, in a fixed order
from ``seed``. Every ``eval_every`` steps the KL on the select texts decides: the best parameters
are kept, and the fit stops after ``patience`` evaluations without a gain (it cannot over-fit
the fit split). The test split is never an argument. A state file makes it resumable.

``fit_constants`` fits a constant per head with no program, starting at mean-ablation: the
optimal-ablation baseline.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from headcode.compiler.head import SurrogatePlan
from headcode.errors import HeadcodeError
from headcode.files import replacing
from headcode.runtime.calibration.trainable import TrainableHead
from headcode.runtime.model.heads import HeadRef
from headcode.runtime.surrogate.apply import apply_plan


@dataclass(frozen=True)
class CalibrationSettings:
    steps: int = 300                # Adam steps
    texts_per_step: int = 1         # fit texts whose KL one step averages
    lr: float = 0.02                # the term weights' logits (log-weights: unit scale)
    # the constants are head outputs (a fitted one has RMS ~0.1): Adam moves every coordinate by
    # about the rate each step, so at the logits' rate 68 constants overshoot within 25 steps
    lr_constant: float = 0.003
    eval_every: int = 25            # steps between select-split evaluations
    patience: int = 4               # evaluations without a gain before stopping
    seed: int = 0
    progress: bool = True


@dataclass(frozen=True, eq=False)
class Calibration:
    plan: SurrogatePlan             # every head with its surrogate
    constants: dict[HeadRef, torch.Tensor]                 # each head's fitted constant output [D]
    report: dict[str, Any] = field(default_factory=dict)   # KL per evaluation, steps, best


def _log_probs(model: torch.nn.Module, ids: np.ndarray) -> torch.Tensor:
    """``[T - 1, V]`` float32 next-token log-probabilities for the positions that have a target."""
    out = model(input_ids=torch.as_tensor(ids, dtype=torch.long)[None], use_cache=False).logits[0, :-1]
    return torch.log_softmax(out.float(), -1)


def _kl(base: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """Mean over positions of KL(base ‖ replaced), both ``[T, V]`` log-probabilities."""
    return (base.exp() * (base - logp)).sum(-1).mean()


def _targets(model: torch.nn.Module, texts: Sequence[np.ndarray]) -> list[torch.Tensor]:
    with torch.no_grad():
        return [_log_probs(model, t).to(torch.float16) for t in texts]  # kept: 2 bytes a probability


def _mean_kl(model: torch.nn.Module, texts: Sequence[np.ndarray], base: Sequence[torch.Tensor]) -> float:
    with torch.no_grad():
        return float(np.mean([float(_kl(b.float(), _log_probs(model, t))) for t, b in zip(texts, base)]))


def _heads(plan: SurrogatePlan, head_dim: int) -> dict[HeadRef, TrainableHead]:
    out = {}
    for key, h in plan.heads.items():
        if not h.compiled:
            raise HeadcodeError(f"head {key} of the plan is not compiled ({'; '.join(h.reasons)[:100]}): "
                                "calibrate a plan of compiled heads (headcode select keeps only those)")
        c = torch.tensor(h.constant, dtype=torch.float64) if h.constant else None
        out[HeadRef.parse(key)] = TrainableHead(h, head_dim, c)
    return out


def _save_state(path: Path, state: dict[str, Any]) -> None:
    with replacing(path) as tmp:
        torch.save(state, tmp)


def _load_state(path: Path | None, settings: CalibrationSettings, keys: list[str]) -> dict[str, Any] | None:
    if path is None or not path.exists():
        return None
    try:
        state = torch.load(path, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable state file is one clear error
        raise HeadcodeError(f"cannot read the calibration state {path} ({type(e).__name__}): "
                            "delete it to start again") from e
    if state.get("settings") != asdict(settings) | {"progress": None} or state.get("heads") != keys:
        raise HeadcodeError(f"{path} holds a calibration with other settings or heads: delete it or use another --out")
    return state


def _prepare(loaded: Any, fit: Sequence[np.ndarray], select: Sequence[np.ndarray], s: CalibrationSettings,
             teacher: Callable[[np.ndarray], torch.Tensor] | None) -> tuple[list, list]:
    if not fit or not select:
        raise HeadcodeError("calibration needs fit and select texts: give a corpus with both splits")
    loaded.model.requires_grad_(False)
    torch.manual_seed(s.seed)
    if teacher is None:
        return _targets(loaded.model, fit), _targets(loaded.model, select)
    return [teacher(t).to(torch.float16) for t in fit], [teacher(t).to(torch.float16) for t in select]


def calibrate(loaded: Any, plan: SurrogatePlan, fit: Sequence[np.ndarray], select: Sequence[np.ndarray],
              settings: CalibrationSettings = CalibrationSettings(), state_path: Path | None = None,
              teacher: Callable[[np.ndarray], torch.Tensor] | None = None) -> Calibration:
    """The plan's heads with surrogates fitted jointly (``plan`` checked against ``loaded``).
    ``teacher(ids) -> [T - 1, V]`` log-probabilities to match (default: the base model itself)."""
    base_fit, base_sel = _prepare(loaded, fit, select, settings, teacher)
    heads = _heads(plan, loaded.head_dim)
    report = _fit(loaded.model, heads, fit, select, base_fit, base_sel, settings, state_path)
    constants = {h: t.constant.detach().clone() for h, t in heads.items()}
    fitted = _calibrated_plan(plan, heads, settings, report["kl_select_best"], report["steps"])
    return Calibration(fitted, constants, report)


def fit_constants(loaded: Any, heads: Sequence[HeadRef], fit: Sequence[np.ndarray], select: Sequence[np.ndarray],
                  settings: CalibrationSettings = CalibrationSettings(),
                  start: Any = None) -> dict[HeadRef, torch.Tensor]:
    """Optimal ablation at ``heads``: a constant output per head, fitted jointly like ``calibrate``.
    ``start [L, H, D]``: where each constant starts — the heads' mean outputs (mean-ablation), so the
    select split's early stopping can only improve on mean-ablation; None: zero."""
    base_fit, base_sel = _prepare(loaded, fit, select, settings, None)
    trainables = {h: TrainableHead(None, loaded.head_dim, None if start is None else start[h.layer, h.head])
                  for h in heads}
    _fit(loaded.model, trainables, fit, select, base_fit, base_sel, settings, None)
    return {h: t.constant.detach().clone() for h, t in trainables.items()}


def _fit(model: torch.nn.Module, heads: dict[HeadRef, TrainableHead], fit: Sequence[np.ndarray],
         select: Sequence[np.ndarray], base_fit: list, base_sel: list, s: CalibrationSettings,
         state_path: Path | None) -> dict[str, Any]:
    """Adam on the fit KL, the best parameters on the select KL kept (left in ``heads``)."""
    from tqdm import tqdm

    keys = [str(h) for h in heads]
    params = [p for h in heads.values() for p in h.parameters() if p.numel()]
    logits = [h.logits for h in heads.values() if h.logits.numel()]
    groups = [{"params": [h.constant for h in heads.values()], "lr": s.lr_constant}]
    opt = torch.optim.Adam(groups + ([{"params": logits, "lr": s.lr}] if logits else []))
    # a few texts a step is a noisy gradient: the rate decays (cosine) to a tenth by the last step
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.1 + 0.45 * (1 + math.cos(math.pi * min(k, s.steps)
                                                                                      / max(s.steps, 1))))
    order = random.Random(s.seed).choices(range(len(fit)), k=s.steps * s.texts_per_step)
    state = _load_state(state_path, s, keys)
    history: list[dict[str, float]] = []
    best = (math.inf, [p.detach().clone() for p in params])
    step, waited = 0, 0
    if state is not None:
        for p, v in zip(params, state["params"]):
            p.data.copy_(v)
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        best = (state["best_kl"], state["best"])
        step, waited, history = state["step"], state["waited"], state["history"]
    bar = tqdm(total=s.steps, initial=step, desc="calibrate", unit="step", disable=not s.progress)
    with apply_plan(model, heads, slice_projections=False, stateful=False):
        if step == 0:
            history.append({"step": 0, "kl_select": _mean_kl(model, select, base_sel)})
            best = (history[0]["kl_select"], [p.detach().clone() for p in params])
        while step < s.steps and waited < s.patience:
            loss = _step(model, opt, [order[step * s.texts_per_step + j] for j in range(s.texts_per_step)],
                         fit, base_fit)
            sched.step()
            step += 1
            bar.update(1)
            bar.set_postfix(kl_fit=f"{loss:.4f}", kl_select=f"{best[0]:.4f}")
            if step % s.eval_every == 0 or step == s.steps:
                kl = _mean_kl(model, select, base_sel)
                history.append({"step": step, "kl_fit": loss, "kl_select": kl})
                best, waited = ((kl, [p.detach().clone() for p in params]), 0) if kl < best[0] - 1e-6 \
                    else (best, waited + 1)
                if state_path is not None:
                    _save_state(state_path, {"settings": asdict(s) | {"progress": None}, "heads": keys, "step": step,
                                             "waited": waited, "history": history, "best_kl": best[0], "best": best[1],
                                             "params": [p.detach().clone() for p in params], "opt": opt.state_dict(),
                                             "sched": sched.state_dict()})
    bar.close()
    for p, v in zip(params, best[1]):
        p.data.copy_(v)
    return {"kl_select_start": history[0]["kl_select"], "kl_select_best": best[0], "steps": step,
            "history": history, "settings": asdict(s)}


def _step(model: torch.nn.Module, opt: torch.optim.Optimizer, texts: Sequence[int], fit: Sequence[np.ndarray],
          base_fit: list) -> float:
    """One Adam step on the mean KL of ``texts`` (gradients accumulated text by text)."""
    opt.zero_grad()
    total = 0.0
    with torch.enable_grad():
        for i in texts:
            loss = _kl(base_fit[i].float(), _log_probs(model, fit[i])) / len(texts)
            loss.backward()
            total += loss.item()
    opt.step()
    return total


def _calibrated_plan(plan: SurrogatePlan, heads: dict[HeadRef, TrainableHead], s: CalibrationSettings,
                     kl: float, steps: int) -> SurrogatePlan:
    how = (f"weights and constant fitted jointly for {len(heads)} heads on KL(base || replaced) over the fit split, {steps} Adam steps, lr {s.lr} (constants {s.lr_constant}), "
           f"seed {s.seed}; select-split KL {kl:.4f}")
    out = {}
    for key, h in plan.heads.items():
        t = heads[HeadRef.parse(key)]
        out[key] = h.calibrated(t.weights.detach().tolist(), t.constant.detach().tolist(), how)
    return SurrogatePlan(plan.model_id, plan.fingerprint, out)
