"""What a served request is, what comes back, and the errors a server answers with a status code.

A ``Ticket`` is one request inside the engine: the engine sends it ``Event``s (each new token,
then one end: done or an error) through the ``sink`` the caller gave (a thread's queue, or an
asyncio queue through ``loop.call_soon_threadsafe``); ``cancel()`` (a client that went away)
frees its row at the next step.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from headcode.errors import HeadcodeError


class RequestError(HeadcodeError):
    """A request that cannot be served as asked (400)."""

    status = 400


class Overloaded(RequestError):
    """Every row runs and the waiting queue is full: try again later (429)."""

    status = 429


class ShuttingDown(RequestError):
    """The server is stopping and takes no new request (503)."""

    status = 503


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt's generation settings; ``temperature == 0``: greedy."""

    prompt_ids: tuple[int, ...]
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class GenerationResult:
    text: str
    finish_reason: str          # "stop" (end of text or a stop string) or "length"
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Event:
    """``kind``: ``token`` (``token`` is set), ``done`` (``finish``: stop / length / cancelled) or
    ``error`` (``message``, and ``status``: the HTTP status it would have had before any output)."""

    kind: str
    token: int | None = None
    finish: str | None = None
    message: str | None = None
    status: int = 500


_ids = itertools.count()


@dataclass(eq=False)
class Ticket:
    """One request in the engine. ``deadline``: ``time.monotonic()`` past which it ends with an error."""

    request: GenerationRequest
    sink: Callable[[Event], None]
    deadline: float | None = None
    id: int = field(default_factory=lambda: next(_ids))
    submitted: float = field(default_factory=time.monotonic)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()


def visible_text(text: str, stops: Sequence[str], final: bool) -> tuple[str, bool]:
    """``(text safe to show, a stop string was hit)``: cut at the first stop string; unless
    ``final``, also hold back a tail that may start a stop string or is an incomplete character."""
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    if hits:
        return text[: min(hits)], True
    if final:
        return text, False
    hold = max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
    text = text[: len(text) - hold]
    return text.rstrip("\ufffd"), False
