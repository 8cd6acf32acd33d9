"""Make the bundled story corpus (runtime/text/data/stories.jsonl) with the default instruct model.

Each story is written by SmolLM2-135M-Instruct (the bundled GGUF) from a prompt that names a
character, a place and a theme (TinyStories style: short, simple words), sampled with a fixed
seed. Stories are kept if they have 3+ sentences and 60-260 words; exact duplicates dropped.

    python scripts/make_stories.py --n 400 --out runtime/text/data/stories.jsonl
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import re
import time

import torch
from tqdm import tqdm

from headcode.files import write_text
from headcode.runtime.model.loading import load_model

CHARACTERS = ["a little cat", "a small dog", "a girl named Lily", "a boy named Tom", "a brave mouse",
              "an old owl", "a kind bear", "a tiny bird", "a girl named Mia", "a boy named Ben",
              "a happy frog", "a shy rabbit", "a big elephant", "a curious fox", "a little fish",
              "a friendly dragon", "a robot", "a duck", "a girl named Sue", "a boy named Max"]
PLACES = ["in the park", "in a big forest", "by the sea", "in a small town", "at school",
          "on a farm", "in the garden", "in the snow", "near a river", "at home"]
THEMES = ["finds a lost toy", "makes a new friend", "learns to share", "is afraid of the dark",
          "helps a friend", "goes on a trip", "bakes a cake", "finds a secret door",
          "plays in the rain", "learns to be kind", "loses a ball", "sees a rainbow"]


def prompts(n: int, seed: int) -> list[str]:
    combos = list(itertools.product(CHARACTERS, PLACES, THEMES))
    random.Random(seed).shuffle(combos)
    return [f"Write a short story for a small child about {c} {p} who {t}. Use simple words."
            for c, p, t in combos[:n]]


def clean(text: str) -> str | None:
    text = re.sub(r"\s+", " ", text.replace("*", "").replace("#", "")).strip()
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", text) if s]
    if sentences and sentences[-1][-1] not in ".!?\"":
        sentences = sentences[:-1]  # cut off mid-sentence by the token limit
    text = " ".join(sentences)
    if not (50 <= len(text.split()) <= 260) or len(sentences) < 3 or text.count('"') % 2:
        return None
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--out", default="runtime/text/data/stories.jsonl")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    lm = load_model()
    lm.model.set_attn_implementation("sdpa")
    tok = lm.tokenizer
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    # each accepted story is appended to OUT.partial at once: an interrupted run keeps its
    # stories and, started again, goes on after the last batch it finished
    partial = args.out + ".partial"
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    stories: list[dict] = []
    done_prompts: set[str] = set()
    if os.path.exists(partial):
        with open(partial) as f:
            for line in f:
                row = json.loads(line)
                stories.append(row)
                done_prompts.update(row.get("batch", []))
    seen = {s["text"] for s in stories}
    todo = prompts(args.n * 2, args.seed)
    bar = tqdm(total=args.n, initial=min(len(stories), args.n), desc="stories")
    t0 = time.time()
    with open(partial, "a") as sink:
        for i in range(0, len(todo), args.batch):
            if len(stories) >= args.n:
                break
            batch = todo[i:i + args.batch]
            if set(batch) <= done_prompts:
                continue
            torch.manual_seed(args.seed * 100_003 + i)  # per batch: a resumed run samples the same
            chats = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                             add_generation_prompt=True) for p in batch]
            enc = tok(chats, return_tensors="pt", padding=True)
            with torch.no_grad():
                out = lm.model.generate(**enc, max_new_tokens=200, do_sample=True, temperature=0.7,
                                        top_p=0.9, repetition_penalty=1.1, pad_token_id=tok.pad_token_id)
            for p, seq in zip(batch, out[:, enc.input_ids.shape[1]:]):
                text = clean(tok.decode(seq, skip_special_tokens=True))
                if text and text not in seen and len(stories) < args.n:
                    seen.add(text)
                    row = {"id": len(stories), "prompt": p, "text": text, "batch": batch}
                    stories.append(row)
                    sink.write(json.dumps(row) + "\n")
                    sink.flush()
                    bar.update(1)
    bar.close()
    write_text(args.out, "".join(json.dumps({k: s[k] for k in ("id", "prompt", "text")}) + "\n" for s in stories))
    os.remove(partial)
    print(f"{len(stories)} stories in {time.time() - t0:.0f}s -> {args.out}")


if __name__ == "__main__":
    main()
