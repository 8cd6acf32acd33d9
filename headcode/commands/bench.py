"""Measure compiled programs against the neural heads they replace, without pytest.

  headcode bench --out bench.json                       # the default model, full cases (minutes)
  headcode bench --quick --out bench.json               # a smoke run (seconds after the model loads)
  headcode bench --surrogates out/explain/surrogates.safetensors --out bench.json

The same cases as ``pytest benchmarks/ --benchmark-only`` (both read ``headcode.benchmarks.cases``):
one head (Numba; the torch reference at short lengths; Triton with a GPU) against SDPA, eager
attention, FlexAttention (compiled) and a copy of V; one layer's attention, prefill and greedy
generation with 10/25/50% of heads replaced against the base model; compile time per program;
synthesis throughput (offline backend); peak memory of one head at T=4096; decoding tokens/s at
context 512/2048/4096 and batch 1/8, prefill at T=1024/4096 and KV-cache bytes per token through the
headcode cache, with 25/50% of heads replaced as whole KV groups, each ratio beside its limit
``1 / (1 - share * attention's share of the step)`` (``--only decode``). Each figure is a
median over repeated runs after warm-up; each ratio compares two sides measured in this run
(``speedup`` = neural_ms / surrogate_ms). With ``--surrogates`` the layer, prefill and generation
cases put that plan's compiled heads in place (as many as it has, up to each share). The JSON
records the machine (CPU, cores, torch/numba/triton/transformers versions, GPU).
``--only serve`` (not in the default set): 16 concurrent OpenAI clients (half streaming) against
``headcode serve``, the base model and half the heads as whole KV groups, each in its own server
process: tokens/s (and the base served one request at a time), TTFT and per-token p50/p99, K/V and
state bytes at peak.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from headcode.commands._options import add_model
from headcode.pipeline.bench import GROUPS

HELP = "time compiled programs against neural heads (one head, a layer, the model) and write JSON"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model(p)
    p.add_argument("--surrogates", default=None, help="surrogates.safetensors whose heads the model cases use")
    p.add_argument("--quick", action="store_true", help="few, short cases and few repeats (a smoke run)")
    p.add_argument("--only", default=None, help=f"comma list of suites to run: {','.join(GROUPS)} (default all but serve; "
                                                "'model' covers layer, prefill and generation)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's own; 1 on a busy machine avoids waits on "
                        "a descheduled worker thread)")
    p.add_argument("--decode-contexts", type=_ints, default=None, metavar="N,N", help="decode suite: contexts (e.g. 2048,4096)")
    p.add_argument("--decode-batches", type=_ints, default=None, metavar="N,N", help="decode suite: batch sizes (e.g. 8)")
    p.add_argument("--decode-fractions", type=_floats, default=None, metavar="F,F",
                   help="decode suite: shares of heads replaced as whole KV groups (e.g. 0.5)")
    p.add_argument("--prefill-lengths", type=_ints, default=None, metavar="N,N", help="decode suite: prefill lengths")
    p.add_argument("--decode-steps", type=int, default=None, help="decode suite: decoding steps per timed run")
    p.add_argument("--out", required=True, help="report file (.json)")


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x.strip())


def _fmt_ms(x: float | None) -> str:
    return "-" if x is None else (f"{x:.4f}" if x < 0.1 else f"{x:.3f}" if x < 10 else f"{x:.1f}")


def table(cases: list[dict[str, Any]]) -> str:
    """One line per case: surrogate and neural time, and their ratio (or the case's own figure)."""
    rows = [("group", "case", "surrogate ms", "neural ms", "speedup", "note")]
    for c in cases:
        note = ""
        if c["group"] == "head":
            note = f"vs {c['neural']}; eager x{c['speedup_vs_eager']:.0f}; {c['x_copy_v']:.1f}x copy of V"
        elif c["group"] == "generate":
            note = f"{c['surrogate_tokens_per_s']:.1f} vs {c['neural_tokens_per_s']:.1f} tok/s"
        elif c["group"] in ("layer", "model"):
            note = f"{c['replaced']} heads replaced"
        elif c["group"] in ("decode", "prefill"):
            note = f"limit {c['limit']:.2f}x (attention {c['attention_share']:.0%} of the step)"
            if c["group"] == "decode":
                note += (f"; {c['tokens_per_s']:.1f} vs {c['base_tokens_per_s']:.1f} tok/s; cache "
                         f"{c['cache_bytes_per_token']:.0f} vs {c['base_cache_bytes_per_token']:.0f} B/token")
        elif c["group"] == "synthesis":
            note = f"{c['heads_per_min']:.1f} heads/min ({c['heads']} heads, {c['texts']} texts)"
        elif c["group"] == "compile":
            note = f"vocabulary of {c['vocab']}"
        elif c["group"] == "memory":
            note = (f"peak {c['surrogate_bytes'] / 2**20:.2f} MiB vs SDPA {c['neural_bytes'] / 2**20:.2f} MiB "
                    f"(x{c['memory_ratio']:.1f}), eager {c['eager_bytes'] / 2**20:.1f} MiB")
        sp = "-" if c["speedup"] is None else f"{c['speedup']:.2f}x"
        rows.append((c["group"], c["name"], _fmt_ms(c["surrogate_ms"]), _fmt_ms(c["neural_ms"]), sp, note))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(r[i].ljust(widths[i]) if i < 2 else r[i].rjust(widths[i]) for i in range(5))
                     + "  " + r[5] for r in rows)


def run(args: argparse.Namespace) -> int:
    from headcode.pipeline.bench import BenchSettings, parse_groups, run_benchmarks

    res = run_benchmarks(BenchSettings(out=Path(args.out), model=args.model,
                                       surrogates=Path(args.surrogates) if args.surrogates else None,
                                       quick=args.quick, only=parse_groups(args.only), threads=args.threads,
                                       decode_contexts=args.decode_contexts, decode_batches=args.decode_batches,
                                       decode_fractions=args.decode_fractions, prefill_lengths=args.prefill_lengths,
                                       decode_steps=args.decode_steps))
    print(table(res.report["cases"]))
    for s in res.report["skipped"]:
        print(f"skipped {s['name']}: {s['reason']}")
    m = res.report["machine"]
    print(f"machine: {m['cpu']}, {m['usable_cores']} cores, torch {m['torch']}, numba {m['numba']}, "
          f"GPU {m['gpu'] or 'none'} -> {res.out}")
    return 0
