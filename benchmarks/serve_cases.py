"""``headcode bench --only serve``: N concurrent OpenAI clients against ``headcode serve``, the base
model and a plan with half the heads replaced as whole KV groups, each side in its own server
process (nothing one side allocated or warmed helps the other).

Per side: one warm-up request; the same N requests one at a time (the base side only: the
"served one at a time" reference); then all N at once, half streaming and half not, each a prompt
of C tokens asking for n tokens. Reported: completion tokens/s (the sum over requests / wall
time), TTFT and per-token latency p50/p99 (streaming requests: time to the first chunk, gaps between
chunks over the tokens they carry), and the K/V + selector-state bytes at peak (the server's own
count from the tensors, ``headcode_cache_bytes_peak`` on ``/metrics``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headcode.benchmarks.cases import case
from headcode.benchmarks.decode_cases import group_heads
from headcode.benchmarks.model_cases import plan_pool, programs_plan, text_ids


@dataclass(frozen=True)
class ServeLoad:
    clients: int = 16
    context: int = 2048
    new_tokens: int = 64

    @classmethod
    def quick(cls) -> ServeLoad:
        return cls(clients=4, context=128, new_tokens=8)


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def half_plan(loaded: Any, plan: Any, out: Path) -> Path:
    """A plan file with 50% of the heads as whole KV groups (from ``plan``, or the catalogue programs)."""
    from headcode.compiler import SurrogatePlan
    from headcode.compiler.export import save_plan

    plan = plan if plan is not None else programs_plan(loaded)
    heads = {str(h) for h in group_heads(loaded, 0.5, plan_pool(plan))}
    half = SurrogatePlan(plan.model_id, plan.fingerprint, {k: v for k, v in plan.heads.items() if k in heads})
    return Path(save_plan(half, out))


class _Server:
    def __init__(self, model: str, plan: Path | None, load: ServeLoad, log_dir: Path):
        cmd = [sys.executable, "-m", "headcode.cli", "serve", model, "--port", "0", "--name", "m",
               "--max-batch", str(load.clients), "--max-queue", str(3 * load.clients),
               "--max-tokens", str(load.new_tokens)] + (["--surrogates", str(plan)] if plan else [])
        self.err = open(log_dir / f"serve-{'plan' if plan else 'base'}.log", "w")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.err, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if "http://" not in line:
            self.close()
            raise RuntimeError(f"headcode serve did not start (see {self.err.name})")
        self.url = line.split("at ", 1)[1].strip()

    def peak_bytes(self) -> float:
        text = urllib.request.urlopen(self.url.replace("/v1", "/metrics"), timeout=30).read().decode()
        return max((float(x.split()[-1]) for x in text.splitlines() if x.startswith("headcode_cache_bytes_peak")),
                   default=0.0)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.err.close()


def _one(client: Any, prompt: str, n: int, stream: bool) -> dict[str, Any]:
    t0 = time.perf_counter()
    if not stream:
        r = client.completions.create(model="m", prompt=prompt, max_tokens=n, temperature=0)
        return {"tokens": r.usage.completion_tokens, "wall": time.perf_counter() - t0, "ttft": None, "gaps": []}
    first, last, gaps, chunks = None, t0, [], 0
    for c in client.completions.create(model="m", prompt=prompt, max_tokens=n, temperature=0, stream=True,
                                       stream_options={"include_usage": True}):
        now = time.perf_counter()
        if c.choices and c.choices[0].text:
            first = now if first is None else first
            if chunks:
                gaps.append(now - last)
            chunks, last = chunks + 1, now
        if c.usage is not None:
            tokens = c.usage.completion_tokens
    per = (chunks - 1) / max(1, tokens - 1) if chunks > 1 else 1.0  # chunks carry about one token each
    return {"tokens": tokens, "wall": time.perf_counter() - t0, "ttft": (first or last) - t0,
            "gaps": [g * per for g in gaps]}


def _side(model: str, plan: Path | None, prompts: list[str], load: ServeLoad, sequential: bool,
          log_dir: Path) -> dict[str, Any]:
    import openai

    srv = _Server(model, plan, load, log_dir)
    try:
        client = openai.OpenAI(base_url=srv.url, api_key="none", max_retries=0, timeout=3600)
        _one(client, prompts[0], load.new_tokens, True)  # warm-up: kernels compiled, buffers grown once
        out: dict[str, Any] = {}
        if sequential:
            t0 = time.perf_counter()
            done = [_one(client, p, load.new_tokens, i % 2 == 0) for i, p in enumerate(prompts)]
            out["sequential_tokens_per_s"] = sum(d["tokens"] for d in done) / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(len(prompts)) as pool:
            done = list(pool.map(lambda ip: _one(client, ip[1], load.new_tokens, ip[0] % 2 == 0), enumerate(prompts)))
        wall = time.perf_counter() - t0
        ttft = [d["ttft"] for d in done if d["ttft"] is not None]
        gaps = [g for d in done for g in d["gaps"]]
        out.update(tokens_per_s=sum(d["tokens"] for d in done) / wall, wall_s=wall,
                   ttft_p50=_pct(ttft, 0.5), ttft_p99=_pct(ttft, 0.99), token_p50=_pct(gaps, 0.5),
                   token_p99=_pct(gaps, 0.99), cache_bytes_peak=srv.peak_bytes())
        return out
    finally:
        srv.close()


def serve_cases(model: str, loaded: Any, plan: Any, quick: bool, log: Callable[[str], None]) -> list[dict[str, Any]]:
    load = ServeLoad.quick() if quick else ServeLoad()
    ids = text_ids(loaded.tokenizer, load.context + 16 * load.clients)[0]
    prompts = [loaded.tokenizer.decode(ids[16 * i: 16 * i + load.context]) for i in range(load.clients)]
    with tempfile.TemporaryDirectory() as tmp:
        path = half_plan(loaded, plan, Path(tmp) / "half.safetensors")
        log(f"  serve: {load.clients} clients, context {load.context}, {load.new_tokens} tokens each: base")
        base = _side(model, None, prompts, load, True, Path(tmp))
        log("  serve: 50% of heads as whole KV groups")
        ours = _side(model, path, prompts, load, False, Path(tmp))
    ms = {k: 1e3 / v["tokens_per_s"] for k, v in (("base", base), ("ours", ours))}
    c = case(f"serve[50%] C={load.context} N={load.clients}", "serve", load.context, loaded.head_dim, ms["ours"],
             ms["base"], clients=load.clients, new_tokens=load.new_tokens, base=base, surrogate=ours,
             batching_gain=base["tokens_per_s"] / base["sequential_tokens_per_s"],
             p99_token_ratio=(ours["token_p99"] or 0) / (base["token_p99"] or 1),
             cache_ratio=ours["cache_bytes_peak"] / max(1.0, base["cache_bytes_peak"]))
    log(f"  serve: base {base['tokens_per_s']:.1f} tok/s ({c['batching_gain']:.2f}x one at a time), 50% replaced "
        f"{ours['tokens_per_s']:.1f} tok/s = {c['speedup']:.2f}x; p99/token {ours['token_p99']:.3f} vs "
        f"{base['token_p99']:.3f} s; TTFT p50 {ours['ttft_p50']:.2f} vs {base['ttft_p50']:.2f} s; "
        f"cache at peak {c['cache_ratio']:.0%} of the base's")
    return [c]

