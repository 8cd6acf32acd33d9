"""Show a model's attention layout: layers, query heads, KV heads, head size, parameters.

  headcode heads                 # the bundled default (SmolLM2-135M)
  headcode heads ./my-checkpoint --json
"""

from __future__ import annotations

import argparse
import json

from headcode.commands._options import add_model

HELP = "show a model's layers, heads, KV heads and parameters"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    from headcode.runtime.model.loading import load_model

    lm = load_model(args.model)
    info = {"model": lm.name, "architecture": type(lm.model).__name__, "layers": lm.n_layers,
            "heads": lm.n_heads, "kv_heads": lm.n_kv_heads, "head_dim": lm.head_dim,
            "total_heads": lm.n_layers * lm.n_heads, "parameters": lm.n_params,
            "tokenizer_fingerprint": lm.fingerprint}
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            print(f"{k:>22}  {v:,}" if isinstance(v, int) else f"{k:>22}  {v}")
    return 0
