"""A head's attention summarised for a language model (and for people).

Following the paper: the strongest query -> key pairs across ~25 fit texts, written
``query|key:percent``; plus where the mass goes — by relative offset, to the first token,
to the same token, to punctuation, to sentence starts. Only fit texts are read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from headcode.compiler import predicates as P
from headcode.runtime.model.heads import HeadRef
from headcode.runtime.model.patterns import HeadPatterns

MAX_OFFSET = 8


@dataclass(frozen=True)
class HeadSummary:
    head: str
    pairs: tuple[tuple[str, ...], ...]   # per text: "query|key:percent" strings
    offset_mass: tuple[float, ...]       # mass at offsets 0..MAX_OFFSET, then beyond
    first_mass: float
    same_token_mass: float
    punct_mass: float
    sentence_start_mass: float

    def text(self) -> str:
        lines = [f"Head {self.head}. Mean attention mass per query:"]
        offs = ", ".join(f"-{k}: {100 * m:.0f}%" for k, m in enumerate(self.offset_mass[:-1]))
        lines.append(f"- by offset (query minus key): {offs}, further: {100 * self.offset_mass[-1]:.0f}%")
        lines.append(f"- on the first token: {100 * self.first_mass:.0f}%; on earlier copies of the query "
                     f"token: {100 * self.same_token_mass:.0f}%; on punctuation: {100 * self.punct_mass:.0f}%; "
                     f"on sentence starts: {100 * self.sentence_start_mass:.0f}%")
        lines.append("Strongest query|key:percent pairs, one line per text:")
        lines += ["  " + "  ".join(p) for p in self.pairs]
        return "\n".join(lines)


def _show(piece: str) -> str:
    return piece.replace("\n", "\\n").replace("|", "¦").replace(" ", "▁") or "∅"


def summarise(patterns: HeadPatterns, head: HeadRef, n_texts: int = 25, pairs_per_text: int = 12,
              min_percent: float = 5.0) -> HeadSummary:
    """Summarise ``head`` on up to ``n_texts`` fit texts (the first ones, deterministic)."""
    texts = patterns.texts("fit")[:n_texts]
    offset = np.zeros(MAX_OFFSET + 2)
    first = same = punct = sstart = 0.0
    rows = 0
    all_pairs = []
    for i in texts:
        t = patterns.tokens[i]
        a = patterns.attention(i, head).astype(np.float64)
        T = len(t)
        q, k = np.tril_indices(T)
        d = q - k
        np.add.at(offset, np.minimum(d, MAX_OFFSET + 1), a[q, k])
        first += float(a[:, 0].sum())
        same += float((a * (t.ids[:, None] == t.ids[None, :])).sum())
        punct += float(a[:, t.has(P.punct)].sum())
        sstart += float(a[:, t.sentence_begin].sum())
        rows += T
        # the strongest pairs, skipping the trivial first row
        w = a[q, k]
        keep = (q > 0) & (w * 100 >= min_percent)
        order = np.argsort(-w[keep], kind="stable")[:pairs_per_text]
        qs, ks, ws = q[keep][order], k[keep][order], w[keep][order]
        all_pairs.append(tuple(f"{_show(t.pieces[a_])}|{_show(t.pieces[b_])}:{round(100 * x)}"
                               for a_, b_, x in zip(qs, ks, ws)))
    n = max(rows, 1)
    return HeadSummary(str(head), tuple(all_pairs), tuple(float(x) / n for x in offset),
                       first / n, same / n, punct / n, sstart / n)
