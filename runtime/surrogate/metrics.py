"""What ``/metrics`` says about a serving ``Generator``, in Prometheus' text format.

Counters (requests by outcome, tokens), gauges (queued, running) and two histograms: time to
first token and time between tokens. Written by hand: ``prometheus_client`` is not in the lock
and six series in its text format are a few lines; the format is the one documented for
``text/plain; version=0.0.4`` exposition.
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass, field

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass
class Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    total: float = 0.0
    n: int = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.total += seconds
        self.n += 1

    def lines(self, name: str) -> list[str]:
        out, cum = [], 0
        for b, c in zip((*BUCKETS, float("inf")), self.counts):
            cum += c
            out.append(f'{name}_bucket{{le="{"+Inf" if b == float("inf") else b}"}} {cum}')
        return out + [f"{name}_sum {self.total:.6f}", f"{name}_count {self.n}"]


class Metrics:
    """Thread-safe counts of one server's work."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[str, int] = {"ok": 0, "rejected": 0, "failed": 0}
        self.tokens = 0
        self.queued = 0
        self.running = 0
        self.ttft = Histogram()
        self.per_token = Histogram()

    def text(self) -> str:
        with self.lock:
            lines = ["# HELP headcode_requests_total Requests by outcome (rejected: the queue was full).",
                     "# TYPE headcode_requests_total counter"]
            lines += [f'headcode_requests_total{{outcome="{k}"}} {v}' for k, v in self.requests.items()]
            lines += ["# HELP headcode_generated_tokens_total Tokens generated.",
                      "# TYPE headcode_generated_tokens_total counter", f"headcode_generated_tokens_total {self.tokens}",
                      "# HELP headcode_queue_length Requests waiting for the model.", "# TYPE headcode_queue_length gauge",
                      f"headcode_queue_length {self.queued}",
                      "# HELP headcode_running_requests Requests being generated.",
                      "# TYPE headcode_running_requests gauge", f"headcode_running_requests {self.running}",
                      "# HELP headcode_time_to_first_token_seconds From arrival to the first token.",
                      "# TYPE headcode_time_to_first_token_seconds histogram",
                      *self.ttft.lines("headcode_time_to_first_token_seconds"),
                      "# HELP headcode_time_per_token_seconds Between consecutive tokens of a request.",
                      "# TYPE headcode_time_per_token_seconds histogram",
                      *self.per_token.lines("headcode_time_per_token_seconds")]
        return "\n".join(lines) + "\n"
