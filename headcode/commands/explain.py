"""Explain attention heads as short programs, ranked on held-out text, with a report.

  headcode explain --corpus stories --out out/explain
  headcode explain --corpus stories --unit sentence --heads L0-3 --out out/sent
  headcode explain --backend openai --base-url http://127.0.0.1:8000/v1 --model qwen --out out/llm
  headcode explain --patterns patterns.safetensors --out out/explain

Programs are written on the fit split, chosen on the select split and reported on the test
split. Writes DIR/programs/L<l>.H<h>.py, DIR/report.json, DIR/report.md and DIR/plots/.
Resumable: the captured patterns (DIR/patterns.safetensors) and each finished head
(DIR/state/) are kept; run the same command again to continue an interrupted run.
The openai backend reads the key from OPENAI_API_KEY (any value works for local servers).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from headcode.errors import HeadcodeError

HELP = "explain heads as programs (offline search or an OpenAI-compatible model) with a report"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default="smollm2-135m", help="model spec (default: smollm2-135m)")
    p.add_argument("--corpus", default="stories", help="stories | lambada | FILE.txt | hf:<dataset>")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--heads", default=None, help="all (default), or e.g. L3.H7,L5 (a whole layer),L2-4")
    p.add_argument("--unit", default="paragraph", choices=["sentence", "paragraph"])
    p.add_argument("--backend", default="offline", choices=["offline", "openai"])
    p.add_argument("--base-url", default=None, help="OpenAI-compatible endpoint (openai backend)")
    p.add_argument("--model", "--llm", dest="llm", default="gpt-4o-mini",
                   help="model name at the endpoint (openai backend)")
    p.add_argument("--max-programs", type=int, default=1000, help="library size cap (default 1000)")
    p.add_argument("--max-texts", type=int, default=100, help="at most this many texts per split (default 100)")
    p.add_argument("--max-tokens", type=int, default=256, help="truncate each text to this many tokens")
    p.add_argument("--rounds", type=int, default=2, help="feedback rounds per head (openai backend)")
    p.add_argument("--patterns", default=None, help="use this captured patterns file instead of capturing")
    p.add_argument("--no-progress", action="store_true")


def _patterns(args: argparse.Namespace, out: Path):
    """Captured patterns: --patterns, the cache in DIR, or a fresh capture (then cached)."""
    from headcode.runtime.heads import parse_heads
    from headcode.runtime.patterns import HeadPatterns

    if args.patterns:
        hp = HeadPatterns.load(args.patterns)
        layers = max(h.layer for h in hp.heads) + 1
        per = max(h.head for h in hp.heads) + 1
        heads = parse_heads(args.heads, layers, per) if args.heads else hp.heads
        return hp, hp.model, heads
    cache, meta_path = out / "patterns.safetensors", out / "run.json"
    meta = {"model": args.model, "corpus": args.corpus, "unit": args.unit, "heads": args.heads,
            "max_texts": args.max_texts, "max_tokens": args.max_tokens}
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        if {k: old.get(k) for k in meta} != meta:
            raise HeadcodeError(f"{out} holds a run with other settings ({old}); use another --out")
    if cache.exists() and meta_path.exists():
        hp = HeadPatterns.load(str(cache))
        return hp, hp.model, hp.heads
    from headcode.files import write_json
    from headcode.runtime.capture import capture
    from headcode.runtime.corpus import load_corpus
    from headcode.runtime.loading import load_model

    lm = load_model(args.model)
    heads = parse_heads(args.heads, lm.n_layers, lm.n_heads)
    corpus = load_corpus(args.corpus, args.unit).take(args.max_texts)
    toks = corpus.tokens(lm.tokenizer, args.max_tokens)
    hp = capture(lm, toks, heads=heads, splits=corpus.splits, unit=args.unit,
                 progress=not args.no_progress, dtype=np.float16)  # half the memory; scores need no more
    out.mkdir(parents=True, exist_ok=True)
    hp.save(str(cache))
    write_json(meta_path, meta)
    return hp, lm.name, heads


def make_backend(args: argparse.Namespace):
    if args.backend == "offline":
        from headcode.synth.offline import OfflineBackend

        return OfflineBackend(progress=not args.no_progress)
    from headcode.synth.llm import LLMOptions, OpenAIBackend

    return OpenAIBackend(LLMOptions(base_url=args.base_url, model=args.llm, rounds=args.rounds))


def run(args: argparse.Namespace) -> int:
    from headcode.synth.explain import explain_heads
    from headcode.synth.report import write_report

    if args.max_programs < 1:
        raise HeadcodeError("--max-programs must be at least 1")
    out = Path(args.out)
    hp, model_name, heads = _patterns(args, out)
    if not hp.texts("fit") or not hp.texts("select") or not hp.texts("test"):
        raise HeadcodeError("the captured texts must cover the fit, select and test splits: "
                            "use a larger corpus or a larger --max-texts")
    backend = make_backend(args)
    results = explain_heads(hp, backend, heads, state_dir=out / "state", max_programs=args.max_programs,
                            progress=not args.no_progress)
    if not results:
        raise HeadcodeError("no head could be explained (see the messages above)")
    test_text = hp.texts("test")[0]

    def example(head: str, source: str):
        from headcode.runtime.heads import HeadRef

        return hp.attention(test_text, HeadRef.parse(head)), backend.attention(source, [test_text])[0]

    rep = write_report(out, model_name, args.corpus if not args.patterns else args.patterns, hp.unit,
                       results, example)
    print(json.dumps({"out": str(out), **rep["summary"]}))
    return 0
