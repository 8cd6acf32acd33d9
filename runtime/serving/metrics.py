"""Prometheus metrics of a serving engine (``prometheus_client``, one registry per engine so that
several apps in one process — tests, replicas — never share or clash):

- ``headcode_queue_length``, ``headcode_running_requests``: waiting for a row / decoding now;
- ``headcode_generated_tokens_total`` and ``headcode_tokens_per_second`` (over the last 10 s);
- ``headcode_requests_total{outcome}``: ok (end of text, a stop string or max_tokens), cancelled
  (the client went away), failed (an error, a timeout), rejected (429 queue full, 503 draining);
- ``headcode_time_to_first_token_seconds`` and ``headcode_time_per_token_seconds`` (between two
  tokens of one request) histograms;
- ``headcode_cache_bytes`` and ``headcode_cache_bytes_peak``: the running batch's K/V and selector
  states, counted from the tensors.
"""

from __future__ import annotations

import collections
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_TTFT = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ServeMetrics:
    WINDOW = 10.0  # seconds of the tokens/s gauge

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.queue = Gauge("headcode_queue_length", "requests waiting for a row", registry=r)
        self.running = Gauge("headcode_running_requests", "requests decoding now", registry=r)
        self.tokens = Counter("headcode_generated_tokens", "tokens generated", registry=r)
        self.rate = Gauge("headcode_tokens_per_second", "tokens generated per second over the last 10 s", registry=r)
        self.requests = Counter("headcode_requests", "requests ended, by outcome", ["outcome"], registry=r)
        self.ttft = Histogram("headcode_time_to_first_token_seconds", "submission to first token",
                              buckets=_TTFT, registry=r)
        self.latency = Histogram("headcode_time_per_token_seconds", "time between two tokens of one request",
                                 buckets=_LATENCY, registry=r)
        self.cache = Gauge("headcode_cache_bytes", "K/V and selector states of the running batch", registry=r)
        self.cache_peak = Gauge("headcode_cache_bytes_peak", "most K/V and state bytes held at once", registry=r)
        self.peak_bytes = 0
        self._recent: collections.deque[tuple[float, int]] = collections.deque()

    def generated(self, n: int) -> None:
        now = time.monotonic()
        self.tokens.inc(n)
        self._recent.append((now, n))
        while self._recent and self._recent[0][0] < now - self.WINDOW:
            self._recent.popleft()
        span = max(now - self._recent[0][0], 1e-3) if len(self._recent) > 1 else self.WINDOW
        self.rate.set(sum(k for _, k in self._recent) / span)

    def cache_bytes(self, n: int) -> None:
        self.cache.set(n)
        if n > self.peak_bytes:
            self.peak_bytes = n
            self.cache_peak.set(n)

    def text(self) -> bytes:
        return generate_latest(self.registry)
