"""Continuous batching: one thread owns the model; every step runs one batched forward over all
running requests, prefills new ones and lets them join, and frees the rows of those that end.

    engine = BatchEngine(model, decode, eos_ids, new_cache, EngineSettings(max_batch=16))
    engine.start()
    engine.submit(Ticket(request, sink))   # Overloaded (429) past the queue, ShuttingDown (503) when draining
    ...
    engine.drain(timeout=30)               # finish what was accepted; past the timeout, end it with an error

A request is prefilled alone (batch 1, its own fresh cache), its first token chosen, then its
rows join the batch cache (``rows.join``; the shorter side left-padded). A step feeds each row's
last token at its own position (``T - start``) under a 2D mask that hides each row's padding. A
row leaves on end of text, a stop string, ``max_tokens``, cancellation (a client that went away:
checked before every step), its deadline, or an error; its K/V and selector states go with it.

Greedy output equals the request's run alone up to float rounding: the batched matmuls and the
masked attention over padding sum in another order (last bits of the logits; a tie within that
would pick another token). ``tests/runtime/test_serving_engine.py`` checks tokens and logits.

Why not transformers' own continuous batching (``generate_batch``/``ContinuousBatchingManager``,
5.x): it packs all requests into one flat sequence and reads K/V through its ``PagedAttentionCache``
from every KV head of every layer (``config.num_key_value_heads``); it switches the model to its own
paged/flash attention; a request's state is K/V blocks only. A model with surrogate heads needs
its own attention function to run, K/V only for the groups that keep a neural head, and per-request
selector states that join and leave with the row — none of which that cache or scheduler can hold
without replacing both (and the API is marked experimental and changes between the minors we
support). The batch here is transformers' own forward with a ``HeadcodeCache`` (or ``DynamicCache``).
"""

from __future__ import annotations

import inspect
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from transformers.cache_utils import Cache

from headcode.runtime.serving import rows as R
from headcode.runtime.serving.metrics import ServeMetrics
from headcode.runtime.serving.requests import Event, Overloaded, ShuttingDown, Ticket
from headcode.runtime.serving.sampling import choose, row_generator
from headcode.runtime.surrogate.cache import cache_nbytes


@dataclass(frozen=True)
class EngineSettings:
    max_batch: int = 16                      # requests decoded together
    max_queue: int = 64                      # requests running or waiting at once; one more gets 429
    request_timeout: float | None = 600.0    # seconds from submission to the last token


_OUTCOME = {"stop": "ok", "length": "ok", "cancelled": "cancelled", "error": "failed"}


@dataclass(eq=False)
class _Row:
    ticket: Ticket
    gen: torch.Generator | None
    start: int = 0                           # first real position in the batch cache
    pending: int = -1                        # the chosen token, fed at the next step
    tokens: list[int] = field(default_factory=list)
    last: float = 0.0                        # when its last token came
    done: bool = False


def _cache_keyword(model: torch.nn.Module) -> str:
    from transformers.generation import utils as generation_utils

    return "cache" if hasattr(generation_utils, "ALL_CACHE_NAMES") else "past_key_values"


class BatchEngine:
    """``decode(ids) -> text`` (for stop strings); ``new_cache()``: an empty cache for one prefill
    (``handle.new_cache`` with a plan, else a ``DynamicCache``)."""

    def __init__(self, model: torch.nn.Module, decode: Callable[[Sequence[int]], str], eos_ids: set[int],
                 new_cache: Callable[[], Cache], settings: EngineSettings | None = None,
                 metrics: ServeMetrics | None = None):
        self.model, self.decode, self.eos_ids, self.new_cache = model, decode, set(eos_ids), new_cache
        self.settings, self.metrics = settings or EngineSettings(), metrics or ServeMetrics()
        self._cv = threading.Condition()
        self._waiting: deque[Ticket] = deque()
        self._rows: list[_Row] = []
        self._cache: Cache | None = None
        self._length = 0                     # positions in the batch cache
        self._draining = False
        self._deadline: float | None = None  # when draining: end what is left at this time
        self._thread: threading.Thread | None = None
        self._kw = _cache_keyword(model)
        params = inspect.signature(model.forward).parameters
        self._keep = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        self.device = next(model.parameters()).device

    # --- outside the engine thread ---------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="headcode-engine", daemon=True)
            self._thread.start()

    def submit(self, ticket: Ticket) -> None:
        with self._cv:
            if self._draining:
                self.metrics.requests.labels("rejected").inc()
                raise ShuttingDown("the server is shutting down and takes no new requests: retry on another")
            busy = len(self._rows) + len(self._waiting)  # rows read from this thread: at worst one step old
            if busy >= self.settings.max_queue:
                self.metrics.requests.labels("rejected").inc()
                raise Overloaded(f"the server is at capacity ({len(self._rows)} running, {len(self._waiting)} "
                                 f"waiting, --max-queue {self.settings.max_queue}): retry later")
            if ticket.deadline is None and self.settings.request_timeout is not None:
                ticket.deadline = ticket.submitted + self.settings.request_timeout
            self._waiting.append(ticket)
            self.metrics.queue.set(len(self._waiting))
            self._cv.notify()

    @property
    def running(self) -> int:
        return len(self._rows)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def draining(self) -> bool:
        return self._draining

    def begin_drain(self, timeout: float) -> None:
        """Take no new request (``ShuttingDown``); the accepted ones go on, and any left after
        ``timeout`` seconds end with an error event (503)."""
        with self._cv:
            if not self._draining:
                self._draining, self._deadline = True, time.monotonic() + timeout
            self._cv.notify()

    def drain(self, timeout: float) -> None:
        """``begin_drain``, then wait until nothing is left (the engine thread ends)."""
        self.begin_drain(timeout)
        if self._thread is not None:
            self._thread.join(timeout + 30)

    # --- the engine thread --------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._waiting and not self._rows and not self._draining:
                    self._cv.wait()
                if self._draining and not self._waiting and not self._rows:
                    return
                room = self.settings.max_batch - len(self._rows)
                admit = [self._waiting.popleft() for _ in range(min(room, len(self._waiting)))]
                self.metrics.queue.set(len(self._waiting))
            try:
                self._expire()
                for t in admit:
                    self._admit(t)
                self._release()
                if self._rows:
                    self._step()
                    self._release()
            except Exception as e:  # noqa: BLE001 - a failed step ends its requests with the error, not the server
                self._fail_all(f"generation failed: {type(e).__name__}: {e}")
            self.metrics.running.set(len(self._rows))
            self.metrics.cache_bytes(cache_nbytes(self._cache) if self._cache is not None else 0)

    def _end(self, row: _Row, event: Event) -> None:
        if not row.done:
            row.done = True
            row.ticket.sink(event)
            self.metrics.requests.labels(_OUTCOME.get(event.finish or event.kind, "failed")).inc()

    def _why_end(self, ticket: Ticket, now: float) -> Event | None:
        if ticket.cancelled.is_set():
            return Event("done", finish="cancelled")
        if ticket.deadline is not None and now > ticket.deadline:
            return Event("error", status=504, message=f"the request took longer than its "
                         f"{self.settings.request_timeout} s limit: ask for fewer tokens or retry later")
        if self._deadline is not None and now > self._deadline:
            return Event("error", status=503, message="the server shut down before this request finished: "
                         "retry on another")
        return None

    def _expire(self) -> None:
        """Cancelled requests leave; those past their deadline (or the drain's) end with an error."""
        now = time.monotonic()
        for row in self._rows:
            why = self._why_end(row.ticket, now)
            if why is not None:
                self._end(row, why)
        with self._cv:
            ended = [(t, why) for t in self._waiting if (why := self._why_end(t, now)) is not None]
            for t, _ in ended:
                self._waiting.remove(t)
        for t, why in ended:
            self._end(_Row(t, None), why)

    def _forward(self, ids: torch.Tensor, cache: Cache, **kw: object) -> torch.Tensor:
        with torch.no_grad():
            out = self.model(input_ids=ids.to(self.device), use_cache=True, **{self._kw: cache}, **self._keep, **kw)
        return out.logits[:, -1].float().cpu()

    def _admit(self, ticket: Ticket) -> None:
        """Prefill one request alone, choose its first token, and let its row join the batch."""
        if ticket.cancelled.is_set():
            return self._end(_Row(ticket, None), Event("done", finish="cancelled"))
        req = ticket.request
        row = _Row(ticket, row_generator(req))
        cache = self.new_cache()
        ids = torch.tensor([req.prompt_ids], dtype=torch.long)
        try:
            logits = self._forward(ids, cache, attention_mask=torch.ones_like(ids).to(self.device))
        except Exception as e:  # noqa: BLE001 - this request fails, the batch goes on
            return self._end(row, Event("error", message=f"generation failed: {type(e).__name__}: {e}"))
        self._emit(row, choose(logits[0], req, row.gen))
        self.metrics.generated(1)  # the prefill's token counts too
        if row.done:
            return None
        P, T = len(req.prompt_ids), self._length
        if self._cache is None:
            self._cache, self._length = cache, P
        else:
            if P < T:
                R.pad_left(cache, T - P)
                row.start = T - P
            elif P > T:
                R.pad_left(self._cache, P - T)
                for r in self._rows:
                    r.start += P - T
                self._length = P
            R.join(self._cache, cache)
        self._rows.append(row)
        R.set_starts(self._cache, [r.start for r in self._rows])
        return None

    def _emit(self, row: _Row, token: int) -> None:
        now = time.monotonic()
        if not row.tokens:
            self.metrics.ttft.observe(now - row.ticket.submitted)
        else:
            self.metrics.latency.observe(now - row.last)
        row.tokens.append(token)
        row.pending, row.last = token, now
        row.ticket.sink(Event("token", token=token))
        req = row.ticket.request
        if token in self.eos_ids or self._stopped(row):
            self._end(row, Event("done", finish="stop"))
        elif len(row.tokens) >= req.max_tokens:
            self._end(row, Event("done", finish="length"))

    def _stopped(self, row: _Row) -> bool:
        stops = row.ticket.request.stop
        if not stops:
            return False
        tail = self.decode(row.tokens[-(max(len(s) for s in stops) + 8):])  # a stop string ends in the last tokens
        return any(s in tail for s in stops)

    def _step(self) -> None:
        """One token for every running row: one forward over the batch."""
        T = self._length
        starts = torch.tensor([r.start for r in self._rows], dtype=torch.long)
        ids = torch.tensor([[r.pending] for r in self._rows], dtype=torch.long)
        mask = (torch.arange(T + 1)[None] >= starts[:, None]).long()
        logits = self._forward(ids, self._cache, attention_mask=mask.to(self.device),
                               position_ids=(T - starts)[:, None].to(self.device))
        self._length = T + 1
        for i, row in enumerate(self._rows):
            self._emit(row, choose(logits[i], row.ticket.request, row.gen))
        self.metrics.generated(len(self._rows))

    def _release(self) -> None:
        """Rows that ended leave the batch; columns that are padding in every row left are dropped."""
        keep = [i for i, r in enumerate(self._rows) if not r.done and not r.ticket.cancelled.is_set()]
        for i, r in enumerate(self._rows):
            if i not in keep:
                self._end(r, Event("done", finish="cancelled"))
        if len(keep) == len(self._rows):
            return
        self._rows = [self._rows[i] for i in keep]
        if not self._rows:
            self._cache, self._length = None, 0
            return
        R.keep_rows(self._cache, keep)
        drop = min(r.start for r in self._rows)
        if drop:
            R.trim_left(self._cache, drop)
            for r in self._rows:
                r.start -= drop
            self._length -= drop
        R.set_starts(self._cache, [r.start for r in self._rows])

    def _fail_all(self, message: str) -> None:
        for row in self._rows:
            self._end(row, Event("error", message=message))
        self._rows, self._cache, self._length = [], None, 0
