"""Capture a corpus: load the model, read and split the corpus, record the heads' attention."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from headcode.runtime.model.loading import DEFAULT_MODEL


@dataclass(frozen=True)
class CaptureSettings:
    model: str = DEFAULT_MODEL       # smollm2-135m (bundled), a hub id, a checkpoint directory or a .gguf
    corpus: str = "stories"          # stories | lambada | FILE.txt | hf:<dataset>
    unit: str = "paragraph"          # or sentence
    heads: str | None = None         # all, or e.g. L3.H7,L5,L2-4
    max_texts: int | None = None     # per split
    max_tokens: int = 256            # per text
    batch_size: int = 8
    exact: bool = False              # float32 patterns (default float16: half the memory)
    progress: bool = True


def capture_corpus(s: CaptureSettings, loaded: Any = None) -> Any:
    """``HeadPatterns`` of ``s.heads`` on the corpus (every text with its split). ``loaded``: the
    model, when already loaded (it must be ``s.model``)."""
    import numpy as np

    from headcode.runtime.model.capture import capture
    from headcode.runtime.model.heads import parse_heads
    from headcode.runtime.model.loading import load_model
    from headcode.runtime.text.corpus import load_corpus

    lm = loaded if loaded is not None else load_model(s.model)
    heads = parse_heads(s.heads, lm.n_layers, lm.n_heads)
    corpus = load_corpus(s.corpus, s.unit).take(s.max_texts)
    return capture(lm, corpus.tokens(lm.tokenizer, s.max_tokens), heads=heads, splits=corpus.splits, unit=s.unit,
                   batch_size=s.batch_size, progress=s.progress, dtype=np.float32 if s.exact else np.float16)
