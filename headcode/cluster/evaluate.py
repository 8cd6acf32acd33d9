"""``evaluate``/``select``/``calibrate --cluster``: the independent forward passes as Ray tasks.

``RayExecutor`` is a ``runtime.evaluation.parallel.Executor``: choosing heads sends each candidate
head set's select loss as one task, ``evaluate`` each variant's perplexity on each test set in
shards of ``SHARD_BATCHES`` batches, and each variant's QA scores the same way. The model goes in
Ray's object store once per run (the texts and each variant's heads once each); a worker process
reads each object once and keeps it for the next task (``_KEPT``), with the base model's residual
stream over the select texts (``BasePrefix``) built once per worker, as the local run builds it once.

Identical to the local run: a task runs the local run's forward passes on the local run's batches
(``PaddedBatches`` of the same texts, a shard being a list of batch numbers) and returns per-batch
sums; the driver adds them in the local order (``Loss.of``), so perplexities, measured losses and
QA scores equal the local run's to the last digit as long as a forward pass gives the same floats
in a worker as in the driver. Ray starts a one-CPU task with one BLAS/OpenMP thread; each task
sets torch's thread count to the driver's (``threads``), since a reduction split over a different
number of threads may round differently.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from headcode.cluster import ClusterSpec, connect, parse_cluster, require_ray
from headcode.runtime.evaluation.parallel import Fns, SetLosses

MAX_RETRIES = 4         # runs of a task after its worker or node died
SHARD_BATCHES = 4       # batches of texts (or QA items) per task: several tasks per variant on a long test set
_KEPT: dict[str, Any] = {}   # per worker process: what it read from the object store (and built from it), by id


def _kept(ref: Any, build: Any = None, key: str | None = None) -> Any:
    """``ray.get(ref)`` (then ``build`` of it) once per worker process; a new model drops the rest."""
    import ray

    key = key or ref.hex()
    if key not in _KEPT:
        _KEPT[key] = build() if build is not None else ray.get(ref)
    return _KEPT[key]


def _model(ref: Any, threads: int) -> Any:
    import torch

    if ref.hex() not in _KEPT:
        from headcode.runtime.model.attention import register

        _KEPT.clear()  # another run's model, heads and texts
        register()     # the model runs headcode's attention, registered per process
    torch.set_num_threads(threads)
    return _kept(ref)


def _set_loss(shared: list, batch_size: int, threads: int, heads: list[str]) -> float:
    """On a worker: the select loss with ``heads`` in place (``BasePrefix.mean_loss``)."""
    from headcode.runtime.evaluation.prefix import BasePrefix
    from headcode.runtime.model.heads import HeadRef

    model_ref, fns_ref, texts_ref = shared   # in a list: Ray hands over the references, not copies
    loaded = _model(model_ref, threads)
    fns = _kept(fns_ref)
    prefix = _kept(texts_ref, lambda: BasePrefix(loaded, _kept(texts_ref), batch_size),
                   f"prefix|{texts_ref.hex()}|{batch_size}")
    return prefix.mean_loss({h: fns[h] for h in map(HeadRef.parse, heads)})


def _batch_logprobs(shared: list, batch_size: int, threads: int, batches: list[int]) -> list[tuple[float, int]]:
    """On a worker: ``batch_logprobs`` of those batches of the texts, with the heads in place."""
    from headcode.runtime.evaluation.measures import batch_logprobs
    from headcode.runtime.evaluation.parallel import with_heads

    model_ref, fns_ref, texts_ref = shared
    lm = _model(model_ref, threads)
    texts = _kept(texts_ref)
    return with_heads(lm, _kept(fns_ref), lambda: batch_logprobs(lm.model, texts, lm.tokenizer, batch_size, batches))


def _item_logprobs(shared: list, batch_size: int, threads: int, batches: list[int]) -> dict:
    """On a worker: ``item_logprobs`` of those batches of the QA items, with the heads in place."""
    from headcode.runtime.evaluation.measures import item_logprobs
    from headcode.runtime.evaluation.parallel import with_heads

    model_ref, fns_ref, qs_ref = shared
    lm = _model(model_ref, threads)
    qs = _kept(qs_ref)
    return with_heads(lm, _kept(fns_ref), lambda: item_logprobs(lm.model, qs, lm.tokenizer, batch_size, batches))


def _shards(n_batches: int) -> list[list[int]]:
    return [list(range(i, min(i + SHARD_BATCHES, n_batches))) for i in range(0, n_batches, SHARD_BATCHES)]


class RayExecutor:
    """Sends the work to ``spec``'s cluster (joined on first use)."""

    def __init__(self, spec: ClusterSpec):
        self.spec = spec
        self._model: tuple[Any, Any] | None = None    # (the loaded model, its object ref): put once

    def _ray(self) -> Any:
        return connect(self.spec)

    def _model_ref(self, loaded: Any) -> Any:
        if self._model is None or self._model[0] is not loaded:
            self._model = (loaded, self._ray().put(loaded))
        return self._model[1]

    def _remote(self, fn: Any) -> Any:
        return self._ray().remote(max_retries=MAX_RETRIES, retry_exceptions=False)(fn)

    def _threads(self) -> int:
        import torch

        return torch.get_num_threads()

    def set_losses(self, loaded: Any, heads: Fns, texts: Sequence[np.ndarray], batch_size: int) -> SetLosses:
        ray = self._ray()
        shared = [self._model_ref(loaded), ray.put(dict(heads)), ray.put([np.asarray(t) for t in texts])]
        task, threads = self._remote(_set_loss), self._threads()

        def losses(sets: Sequence[Sequence[Any]], progress: bool = False) -> list[float]:
            refs = [task.remote(shared, batch_size, threads, [str(h) for h in s]) for s in sets]
            return [float(x) for x in self._gather(refs)]

        return losses

    def token_losses(self, loaded: Any, jobs: Sequence[tuple[Fns, Sequence[np.ndarray]]],
                     batch_size: int) -> Iterator[tuple[int, Any]]:
        from headcode.runtime.evaluation.measures import Loss, loss_texts
        from headcode.runtime.model.batching import PaddedBatches

        ray, task, threads = self._ray(), self._remote(_batch_logprobs), self._threads()
        refs = []
        for fns, texts in jobs:
            texts = loss_texts(texts)
            shared = [self._model_ref(loaded), ray.put(dict(fns)), ray.put(texts)]
            refs.append([task.remote(shared, batch_size, threads, b)
                         for b in _shards(len(PaddedBatches(texts, batch_size)))])
        for i, parts in self._jobs(refs):
            yield i, Loss.of([p for part in parts for p in part])

    def choice_scores(self, loaded: Any, jobs: Sequence[Fns], questions: Sequence[Any],
                      batch_size: int) -> Iterator[tuple[int, list[np.ndarray]]]:
        from headcode.runtime.evaluation.measures import choice_scores, item_batches

        ray, task, threads = self._ray(), self._remote(_item_logprobs), self._threads()
        qs = ray.put(list(questions))
        shards = _shards(item_batches(questions, batch_size))
        refs = [[task.remote([self._model_ref(loaded), ray.put(dict(fns)), qs], batch_size, threads, b)
                 for b in shards] for fns in jobs]
        for i, parts in self._jobs(refs):
            yield i, choice_scores(questions, {k: v for part in parts for k, v in part.items()})

    def _gather(self, refs: list) -> list:
        ray = self._ray()
        try:
            return ray.get(refs)
        except BaseException:
            for r in refs:  # interrupted (or one failed): the others stop too
                ray.cancel(r)
            raise

    def _jobs(self, refs: list[list]) -> Iterator[tuple[int, list]]:
        """``(job, its shards' results in shard order)`` as each job's last shard finishes."""
        ray = self._ray()
        owner = {r.hex(): i for i, rs in enumerate(refs) for r in rs}
        left = [len(rs) for rs in refs]
        pending = [r for rs in refs for r in rs]
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                i = owner[done[0].hex()]
                left[i] -= 1
                if left[i] == 0:
                    yield i, ray.get(refs[i])
        finally:
            for r in pending:
                ray.cancel(r)


def executor(text: str | None) -> RayExecutor | None:
    """Where ``evaluate``/``select``/``calibrate`` run their independent forward passes: None (this
    process) for no ``--cluster``, else a ``RayExecutor`` on that cluster (joined when first used;
    a bad ``--cluster`` or no Ray is said now, before anything loads)."""
    spec = parse_cluster(text)
    if spec is None:
        return None
    require_ray()
    return RayExecutor(spec)
