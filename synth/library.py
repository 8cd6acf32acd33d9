"""The shared program library: at most ``max_programs`` distinct programs across all heads.

1. Identical sources are one program.
2. Near-identical sources (the same text once numbers are masked, every number within
   ``near`` of the other's) are merged into the one used by more heads — but a head takes
   the merged program only if its *select* IoU drops by no more than ``near_loss``.
3. Over the cap, the programs used by the fewest heads (then the lowest summed select IoU)
   are dropped; each of their heads takes the library program that is best on its select split.

Every head whose program changes is scored again (select, then test once chosen), so the
reported numbers are always those of the program the head ends up with.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Sequence

from headcode.synth.backend import Candidate, Rejected
from headcode.synth.ranking import choose

_NUM = re.compile(r"(?<![\w.])\d+\.\d+|(?<![\w.])\d+(?![\w.])")

# score(head, source, splits) -> Candidate with those splits' scores
Scorer = Callable[[str, str, Sequence[str]], Candidate]


def skeleton(source: str) -> tuple[str, tuple[float, ...]]:
    """The source with its numbers masked, and the numbers."""
    return _NUM.sub("#", source), tuple(float(x) for x in _NUM.findall(source))


def _near(a: str, b: str, tol: float) -> bool:
    (sa, na), (sb, nb) = skeleton(a), skeleton(b)
    return sa == sb and all(abs(x - y) <= tol for x, y in zip(na, nb))


def build_library(
    chosen: dict[str, Candidate],
    score: Scorer,
    max_programs: int = 1000,
    near: float = 0.02,
    near_loss: float = 0.002,
) -> dict[str, Candidate]:
    """Heads -> final candidates (with test scores) using at most ``max_programs`` sources."""
    if max_programs < 1:
        raise ValueError("max_programs must be at least 1")
    final = dict(chosen)

    def users() -> dict[str, list[str]]:
        u: dict[str, list[str]] = defaultdict(list)
        for h in sorted(final):
            u[final[h].source].append(h)
        return u

    def retarget(h: str, source: str, min_select: float | None = None) -> bool:
        try:
            c = score(h, source, ("fit", "select"))
        except Rejected:
            return False
        if min_select is not None and c.iou.get("select", -1.0) < min_select:
            return False
        t = score(h, source, ("test",))
        final[h] = Candidate(c.program, source, h, {**c.iou, **t.iou},
                             {**c.output_error, **t.output_error}, {**c.jsd, **t.jsd})
        return True

    # near-identical programs: fold the less used into the more used
    by_use = sorted(users().items(), key=lambda kv: (-len(kv[1]), kv[0]))
    kept: list[str] = []
    for src, heads in by_use:
        target = next((k for k in kept if _near(src, k, near)), None)
        if target is None:
            kept.append(src)
            continue
        for h in heads:
            retarget(h, target, final[h].iou.get("select", 0.0) - near_loss)

    # over the cap: drop the least used programs, re-home their heads on select
    u = users()
    if len(u) > max_programs:
        ranked = sorted(u, key=lambda s: (-len(u[s]), -sum(final[h].iou.get("select", 0.0) for h in u[s]), s))
        keep = ranked[:max_programs]
        for src in ranked[max_programs:]:
            for h in u[src]:
                options = []
                for k in keep:
                    try:
                        options.append(score(h, k, ("fit", "select")))
                    except Rejected:
                        continue
                best = choose(options)
                retarget(h, best.source)
    return final
