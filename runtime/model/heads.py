"""``HeadRef``: one query head, printed ``L3.H7`` and parsed from the same text; and head lists
(``L3.H7,L5,L2-4``). The one place that reads head names: plan keys, program file names
(``L3.H7.py``), report rows and ``--heads`` all go through it."""

from __future__ import annotations

import re
from dataclasses import dataclass

from headcode.errors import HeadcodeError

_HEAD = re.compile(r"^L(\d+)\.H(\d+)$")
_LAYERS = re.compile(r"^L(\d+)(?:-(\d+))?$")


@dataclass(frozen=True, order=True)
class HeadRef:
    layer: int
    head: int

    def __str__(self) -> str:
        return f"L{self.layer}.H{self.head}"

    @classmethod
    def match(cls, text: str) -> HeadRef | None:
        """The head ``text`` names (``L3.H7``, surrounding spaces ignored), or ``None``."""
        m = _HEAD.match(text.strip())
        return cls(int(m.group(1)), int(m.group(2))) if m else None

    @classmethod
    def parse(cls, text: str | HeadRef) -> HeadRef:
        """``L3.H7`` (or a ``HeadRef``, returned as it is); ``HeadcodeError`` for anything else."""
        if isinstance(text, HeadRef):
            return text
        ref = cls.match(str(text))
        if ref is None:
            raise HeadcodeError(f"bad head {text!r}: write heads as L<layer>.H<head>, e.g. L3.H7")
        return ref

    def check(self, n_layers: int, n_heads: int) -> HeadRef:
        if not (0 <= self.layer < n_layers and 0 <= self.head < n_heads):
            raise HeadcodeError(
                f"head {self} is out of range: this model has layers 0-{n_layers - 1} "
                f"and heads 0-{n_heads - 1} per layer"
            )
        return self


def parse_heads(spec: str | None, n_layers: int, n_heads: int) -> tuple[HeadRef, ...]:
    """``None``/``all`` -> every head; else a comma list of ``L3.H7``, ``L3`` (whole layer), ``L2-4``."""
    if spec is None or spec.strip() in ("", "all"):
        return tuple(HeadRef(l, h) for l in range(n_layers) for h in range(n_heads))
    out: list[HeadRef] = []
    for part in spec.split(","):
        part = part.strip()
        m = _LAYERS.match(part)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
            if not (0 <= lo <= hi < n_layers):
                raise HeadcodeError(f"layers {part!r} out of range: this model has layers 0-{n_layers - 1}")
            out += [HeadRef(l, h) for l in range(lo, hi + 1) for h in range(n_heads)]
        else:
            out.append(HeadRef.parse(part).check(n_layers, n_heads))
    return tuple(sorted(set(out)))
