"""Fit a plan's surrogates for the model: weights and a constant output per head, jointly.

  headcode calibrate --surrogates out/select/plan.safetensors --out out/select/calibrated.safetensors
  headcode calibrate --surrogates out/explain/surrogates.safetensors --fraction 0.25 --out cal25.safetensors

Each head keeps its explanation (the program's terms and weights, fitted to its own pattern); its
surrogate — the same terms with new weights, plus a constant output added after A·V — is fitted
for the model: all replaced heads at once, by gradient on KL(base ‖ replaced) over the corpus's
fit split, the base model frozen, stopped early on the select split. The fit never reads the
test split (--compare reads it afterwards, for perplexities only). Resumable: an interrupted run continues from OUT.state.pt. A JSON report (KL per
evaluation) goes next to --out.
"""

from __future__ import annotations

import argparse
import json
from functools import partial

from headcode.commands._options import add_model, add_rank, default, rank_from

HELP = "fit the surrogates' weights and constant outputs for the model (KL to the base model)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from headcode.runtime.calibration.fit import CalibrationSettings

    d = CalibrationSettings()
    from headcode.pipeline.calibrate import CalibrateSettings

    f = partial(default, CalibrateSettings)
    add_model(p)
    p.add_argument("--surrogates", required=True, help="the plan to calibrate (from compile or select)")
    p.add_argument("--out", required=True, help="the calibrated plan to write (.safetensors)")
    p.add_argument("--fraction", type=float, default=None,
                   help="first choose this share of all heads among the plan's (default: calibrate every head)")
    p.add_argument("--warm-choice", action="store_true",
                   help="with --fraction: choose heads each with its warm constant (the mean residual on the fit "
                        "split), not with the programs as explained (measured worse)")
    p.add_argument("--no-warm-start", action="store_true",
                   help="start every constant at zero (default: at the head's warm constant)")
    add_rank(p, "heads (with --fraction)", f("rank"))
    p.add_argument("--corpus", default=f("corpus"), help="stories | lambada | FILE.txt | hf:<dataset>")
    p.add_argument("--unit", default=f("unit"), choices=["sentence", "paragraph"])
    p.add_argument("--max-texts", type=int, default=f("max_texts"), help=f"fit and select texts, each (default {f('max_texts')})")
    p.add_argument("--max-tokens", type=int, default=f("max_tokens"), help=f"truncate each text (default {f('max_tokens')})")
    p.add_argument("--steps", type=int, default=d.steps, help=f"Adam steps, one fit text each (default {d.steps})")
    p.add_argument("--texts-per-step", type=int, default=d.texts_per_step,
                   help=f"fit texts one step averages the KL over (default {d.texts_per_step})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"learning rate of the term weights (default {d.lr})")
    p.add_argument("--lr-constant", type=float, default=d.lr_constant,
                   help=f"learning rate of the constants (default {d.lr_constant})")
    p.add_argument("--eval-every", type=int, default=d.eval_every,
                   help=f"steps between select-split evaluations (default {d.eval_every})")
    p.add_argument("--patience", type=int, default=d.patience,
                   help=f"evaluations without a gain before stopping (default {d.patience})")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--compare", action="store_true",
                   help="then measure perplexity on the test split at the same heads: the programs as explained, "
                        "calibrated, optimal ablation (a constant fitted the same way) and mean-ablation")
    p.add_argument("--cluster", default=None, metavar="ray[:ADDRESS]",
                   help="with --fraction: the candidate heads' measured losses as Ray tasks, ray (a local instance) "
                        "or ray:ADDRESS (the same heads as a local run); the joint fit is one sequential "
                        "optimisation and runs here")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from headcode.pipeline.calibrate import CalibrateSettings, calibrate_plan
    from headcode.runtime.calibration.fit import CalibrationSettings

    fit = CalibrationSettings(steps=args.steps, texts_per_step=args.texts_per_step, lr=args.lr,
                              lr_constant=args.lr_constant, eval_every=args.eval_every, patience=args.patience,
                              seed=args.seed)
    res = calibrate_plan(CalibrateSettings(surrogates=args.surrogates, out=args.out, model=args.model,
                                           corpus=args.corpus, unit=args.unit, fraction=args.fraction,
                                           warm_choice=args.warm_choice, warm_start=not args.no_warm_start,
                                           rank=rank_from(args),
                                           max_texts=args.max_texts, max_tokens=args.max_tokens, fit=fit,
                                           compare=args.compare, progress=not args.no_progress,
                                           cluster=args.cluster))
    r = res.report
    if args.json:
        print(json.dumps(r))
    else:
        print(f"{r['model']}: {len(r['heads'])} heads calibrated; select-split KL(base || replaced) "
              f"{r['kl_select_start']:.4f} -> {r['kl_select_best']:.4f} in {r['steps']} steps\nplan: {args.out}")
        c = r.get("compare")
        if c:
            print(f"perplexity on {c['test']} ({c['predicted_tokens']} predicted tokens), base {c['base']:.3f}:")
            for name in ("explained", "calibrated", "optimal_ablation", "mean_ablation"):
                print(f"  {name:<17} {c[name]['perplexity']:8.3f}  {c[name]['excess_percent']:+7.1f}%")
    return 0
