"""``explain --cluster``: one Ray task per head.

The driver prepares the backend once (the offline search's dictionary and grams over every
text) and puts ``(backend, patterns)`` in Ray's object store once; each worker process reads it
from there once (and keeps it for the next head it gets), searches its head, and sends back the
head's candidate points. The driver writes each head's state as it arrives, so finished heads
are kept whatever happens to the cluster; a task whose worker or node dies is run again by Ray
(``MAX_RETRIES``). The rest of explain (Occam's choice, the readability budget, the library,
scoring on every split) runs on the driver exactly as in a local run, with the heads in the same
order, so the programs and numbers are the local run's.

Sandboxes (the openai backend runs each proposed program in one) start on the worker that runs
the head. LLM requests from every worker go through one ``RateLimiter`` actor: each request
reserves the next free slot of the cluster-wide rate and sleeps until it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

from headcode.cluster import ClusterSpec, connect, require_ray
from headcode.runtime.model.heads import HeadRef
from headcode.runtime.model.patterns import HeadPatterns
from headcode.synth.backend import Backend
from headcode.synth.explain import HeadSearch, SearchRunner, search_head

MAX_RETRIES = 4          # runs of a head's task after its worker or node died
_LOADED: dict[str, tuple[Any, Any]] = {}   # per worker process: the (backend, patterns) it read, by object id


class RateLimiter:
    """Cluster-wide request rate: ``reserve()`` gives the seconds a caller waits for its slot.
    A slot is a time, not a lease, so a worker that dies holding one blocks nobody."""

    def __init__(self, per_minute: float):
        self.interval = 60.0 / per_minute
        self.next = 0.0

    def reserve(self) -> float:
        now = time.time()
        slot = max(now, self.next)
        self.next = slot + self.interval
        return slot - now


def _search_task(shared: list, head: str, limiter: Any) -> HeadSearch:
    """On a worker: one head's search with the shared ``(backend, patterns)``."""
    import ray

    ref = shared[0]  # inside a list, so Ray hands over the reference, not a copy per task
    if ref.hex() not in _LOADED:
        _LOADED.clear()
        _LOADED[ref.hex()] = ray.get(ref)
    backend, patterns = _LOADED[ref.hex()]
    if limiter is not None:
        backend.limiter = lambda: time.sleep(ray.get(limiter.reserve.remote()))
    return search_head(backend, patterns, HeadRef.parse(head))


def head_runner(spec: ClusterSpec, llm_per_minute: float | None = None) -> SearchRunner:
    """A ``synth.explain`` search runner that sends one task per head to ``spec``'s cluster (joined
    when the first head is sent; Ray must be installed now)."""
    require_ray()

    def run(backend: Backend, patterns: HeadPatterns, todo: Sequence[HeadRef]) -> Iterator[HeadSearch]:
        if not todo:
            return
        ray = connect(spec)
        task = ray.remote(max_retries=MAX_RETRIES, retry_exceptions=False)(_search_task)
        limiter = None
        if llm_per_minute and hasattr(backend, "limiter"):
            limiter = ray.remote(RateLimiter).options(num_cpus=0).remote(llm_per_minute)
        shared = [ray.put((backend, patterns))]   # once, whatever the number of heads
        pending = [task.remote(shared, str(h), limiter) for h in todo]
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                yield ray.get(done[0])
        finally:
            for ref in pending:  # interrupted: the heads not finished are not kept
                ray.cancel(ref)

    return run
