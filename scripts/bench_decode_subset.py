"""Decode and prefill through the headcode cache at batch 8, context 2048/4096 and prefill 4096 (the
README's decode table): a subset of ``headcode bench --only decode`` that fits in ~11 min on 2 cores.

    python scripts/bench_decode_subset.py PLAN.safetensors [--out decode.json]
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch  # noqa: E402

from headcode.benchmarks.cases import Settings  # noqa: E402
from headcode.benchmarks.decode_cases import decode_cases  # noqa: E402
from headcode.compiler.export import load_plan  # noqa: E402
from headcode.files import write_json  # noqa: E402
from headcode.runtime.model.loading import load_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("plan", help="surrogates.safetensors whose compiled heads are replaced")
    ap.add_argument("--out", default="decode.json", help="cases as JSON")
    args = ap.parse_args()
    torch.set_num_threads(1)
    lm = load_model("smollm2-135m")
    settings = replace(Settings.full(), decode_contexts=(2048, 4096), decode_batches=(8,), decode_fractions=(0.5,),
                       prefill_lengths=(4096,), decode_steps=8, decode_repeat=3)
    cases = decode_cases(lm, settings, load_plan(args.plan))
    write_json(args.out, cases)


if __name__ == "__main__":
    main()
