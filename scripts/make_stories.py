"""Make the bundled story corpus (runtime/data/stories.jsonl) with the default instruct model.

Each story is written by SmolLM2-135M-Instruct (the bundled GGUF) from a prompt that names a
character, a place and a theme (TinyStories style: short, simple words), sampled with a fixed
seed. Stories are kept if they have 3+ sentences and 60-260 words; exact duplicates dropped.

    python scripts/make_stories.py --n 400 --out runtime/data/stories.jsonl
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

from headcode.runtime.loading import load_model

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
    ap.add_argument("--out", default="runtime/data/stories.jsonl")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    lm = load_model()
    lm.model.set_attn_implementation("sdpa")
    tok = lm.tokenizer
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    torch.manual_seed(args.seed)
    stories: list[dict] = []
    seen: set[str] = set()
    todo = prompts(args.n * 2, args.seed)
    bar = tqdm(total=args.n, desc="stories")
    t0 = time.time()
    for i in range(0, len(todo), args.batch):
        batch = todo[i:i + args.batch]
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
                stories.append({"id": len(stories), "prompt": p, "text": text})
                bar.update(1)
        if len(stories) >= args.n:
            break
    bar.close()
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        for s in stories:
            f.write(json.dumps(s) + "\n")
    os.replace(tmp, args.out)
    print(f"{len(stories)} stories in {time.time() - t0:.0f}s -> {args.out}")


if __name__ == "__main__":
    main()
