"""``HeadPatterns``: captured attention of some heads on some texts, with their splits.

Patterns are stored per text as packed lower triangles (``[H, T(T+1)/2]`` float32): exact,
and half the memory of full matrices. The values each head reads (its KV head's value
vectors, ``[K, T, D]`` float16 per text) are kept for the output error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from headcode.compiler.tokens import Tokens
from headcode.errors import HeadcodeError
from headcode.files import replacing
from headcode.runtime.model.heads import HeadRef

SPLITS = ("fit", "select", "test")
FORMAT_VERSION = 1


def pack(a: np.ndarray) -> np.ndarray:
    """``[..., T, T]`` -> ``[..., T(T+1)/2]`` (lower triangle, row-major)."""
    T = a.shape[-1]
    r, c = np.tril_indices(T)
    return np.ascontiguousarray(a[..., r, c])


def unpack(p: np.ndarray, T: int) -> np.ndarray:
    out = np.zeros(p.shape[:-1] + (T, T), dtype=p.dtype)
    r, c = np.tril_indices(T)
    out[..., r, c] = p
    return out


@dataclass(frozen=True, eq=False)
class HeadPatterns:
    model: str
    unit: str
    heads: tuple[HeadRef, ...]
    tokens: tuple[Tokens, ...]
    splits: tuple[str, ...]
    packed: tuple[np.ndarray, ...]          # per text [H, T(T+1)/2] float32 (or float16)
    kv_of_head: tuple[int, ...]             # per head: index into values' first axis
    values: tuple[np.ndarray, ...] = ()     # per text [K, T, D] float16 (may be empty)

    def __post_init__(self) -> None:
        n = len(self.tokens)
        if not (len(self.splits) == len(self.packed) == n) or (self.values and len(self.values) != n):
            raise ValueError("HeadPatterns: one split, one pattern block (and one value block) per text")
        bad = set(self.splits) - set(SPLITS)
        if bad:
            raise ValueError(f"HeadPatterns: unknown splits {sorted(bad)}")

    @cached_property
    def index(self) -> dict[HeadRef, int]:
        return {h: i for i, h in enumerate(self.heads)}

    def texts(self, split: str | None = None) -> list[int]:
        return [i for i, s in enumerate(self.splits) if split is None or s == split]

    def attention(self, text: int, head: HeadRef) -> np.ndarray:
        """``[T, T]`` float32 post-softmax attention of ``head`` on text ``text``."""
        return unpack(self.packed[text][self.index[head]].astype(np.float32, copy=False), len(self.tokens[text]))

    def value(self, text: int, head: HeadRef) -> np.ndarray:
        """``[T, D]`` the values ``head`` reads (its KV head's)."""
        if not self.values:
            raise HeadcodeError("these patterns were captured without values")
        return self.values[text][self.kv_of_head[self.index[head]]].astype(np.float32)

    def select(self, heads: tuple[HeadRef, ...]) -> HeadPatterns:
        """A view with only ``heads`` (values kept whole)."""
        idx = [self.index[h] for h in heads]
        return HeadPatterns(self.model, self.unit, tuple(heads), self.tokens, self.splits,
                            tuple(p[idx] for p in self.packed),
                            tuple(self.kv_of_head[i] for i in idx), self.values)

    # files ----------------------------------------------------------------------------------
    def save(self, path: str) -> None:
        """safetensors: tensors ``p{i}``, ``v{i}``, ``ids{i}``; the rest as JSON metadata."""
        from safetensors.numpy import save_file

        tensors: dict[str, np.ndarray] = {}
        for i, t in enumerate(self.tokens):
            tensors[f"p{i}"] = self.packed[i]
            tensors[f"ids{i}"] = t.ids
            tensors[f"off{i}"] = t.offsets
            if self.values:
                tensors[f"v{i}"] = self.values[i]
        meta = {
            "format": "headcode.patterns", "version": FORMAT_VERSION, "model": self.model,
            "unit": self.unit, "heads": [str(h) for h in self.heads], "splits": list(self.splits),
            "kv_of_head": list(self.kv_of_head), "texts": [t.text for t in self.tokens],
            "pieces": [list(t.pieces) for t in self.tokens],
        }
        with replacing(path) as tmp:
            save_file(tensors, str(tmp), metadata={"headcode": json.dumps(meta)})

    @classmethod
    def load(cls, path: str) -> HeadPatterns:
        from safetensors import safe_open

        try:
            with safe_open(path, "np") as f:
                meta = json.loads((f.metadata() or {}).get("headcode", "null"))
                if not meta or meta.get("format") != "headcode.patterns":
                    raise HeadcodeError(f"{path} is not a headcode patterns file (made by `headcode capture`)")
                if meta["version"] != FORMAT_VERSION:
                    raise HeadcodeError(f"{path} has patterns format {meta['version']}; this headcode "
                                        f"reads {FORMAT_VERSION}: capture again")
                n = len(meta["texts"])
                keys = set(f.keys())
                toks = tuple(Tokens(meta["texts"][i], f.get_tensor(f"ids{i}"), tuple(meta["pieces"][i]),
                                    f.get_tensor(f"off{i}")) for i in range(n))
                packed = tuple(f.get_tensor(f"p{i}") for i in range(n))
                values = tuple(f.get_tensor(f"v{i}") for i in range(n)) if "v0" in keys else ()
        except (OSError, ValueError, KeyError) as e:
            raise HeadcodeError(f"cannot read patterns file {path}: {e}") from e
        return cls(meta["model"], meta["unit"], tuple(HeadRef.parse(h) for h in meta["heads"]), toks,
                   tuple(meta["splits"]), packed, tuple(meta["kv_of_head"]), values)
