"""Where the independent forward passes of choosing heads and evaluating run.

Three kinds of work need no result of each other: the *measure* stage of choosing heads (the
select loss with each candidate head set in place: one forward pass per set over the same few
texts), the perplexity of each variant on each test set, and the QA scores of each variant.
``Executor`` is what runs a list of them; ``Local`` runs them here, one after the other, and is
what every function uses when given none. ``headcode.cluster.evaluate`` sends them to Ray tasks
(this package never imports Ray). An executor returns exactly what ``Local`` returns: the same
forward passes with the same batching, summed in the same order (``Loss.of``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from headcode.runtime.model.heads import HeadRef
from headcode.runtime.surrogate.replacements import HeadFn

# the select loss with each head set in place (in order: a set's heads in the order given)
SetLosses = Callable[[Sequence[Sequence[HeadRef]], bool], list[float]]
Fns = Mapping[HeadRef, HeadFn]


class Executor(Protocol):
    def set_losses(self, loaded: Any, heads: Fns, texts: Sequence[np.ndarray], batch_size: int) -> SetLosses:
        """``losses(sets, progress)``: the mean token loss on ``texts`` with ``{h: heads[h] for h in
        set}`` in place, per set (``BasePrefix.mean_loss``)."""
        ...

    def token_losses(self, loaded: Any, jobs: Sequence[tuple[Fns, Sequence[np.ndarray]]],
                     batch_size: int) -> Iterator[tuple[int, Any]]:
        """``(i, Loss)`` for each job ``(fns, texts)`` (``token_loss`` with ``fns`` in place), as they finish."""
        ...

    def choice_scores(self, loaded: Any, jobs: Sequence[Fns], questions: Sequence[Any],
                      batch_size: int) -> Iterator[tuple[int, list[np.ndarray]]]:
        """``(i, scores)`` for each job ``fns`` (``choice_logprobs`` with ``fns`` in place), as they finish."""
        ...


def with_heads(loaded: Any, fns: Fns, work: Callable[[], Any]) -> Any:
    """``work()`` with ``fns`` in place (nothing applied for an empty set)."""
    if not fns:
        return work()
    from headcode.runtime.surrogate.apply import apply_plan

    with apply_plan(loaded.model, fns):
        return work()


class Local:
    """This process, one job after the other."""

    def set_losses(self, loaded: Any, heads: Fns, texts: Sequence[np.ndarray], batch_size: int) -> SetLosses:
        from headcode.runtime.evaluation.prefix import BasePrefix

        prefix = BasePrefix(loaded, list(texts), batch_size)  # the base model's stream, kept for every set

        def losses(sets: Sequence[Sequence[HeadRef]], progress: bool = False) -> list[float]:
            return [prefix.mean_loss({h: heads[h] for h in s})
                    for s in tqdm(sets, desc="measure", unit="set", disable=not progress, leave=False)]

        return losses

    def token_losses(self, loaded: Any, jobs: Sequence[tuple[Fns, Sequence[np.ndarray]]],
                     batch_size: int) -> Iterator[tuple[int, Any]]:
        from headcode.runtime.evaluation.measures import token_loss

        for i, (fns, texts) in enumerate(jobs):
            yield i, with_heads(loaded, fns, lambda t=texts: token_loss(loaded.model, t, loaded.tokenizer, batch_size))

    def choice_scores(self, loaded: Any, jobs: Sequence[Fns], questions: Sequence[Any],
                      batch_size: int) -> Iterator[tuple[int, list[np.ndarray]]]:
        from headcode.runtime.evaluation.measures import choice_logprobs

        for i, fns in enumerate(jobs):
            yield i, with_heads(loaded, fns, lambda: choice_logprobs(loaded.model, questions, loaded.tokenizer,
                                                                     batch_size))


LOCAL = Local()
