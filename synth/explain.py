"""Explain heads: propose (backend), rank on held-out text, build the library; resumable.

``explain_heads`` saves each head's front to ``state_dir/L3.H7.json`` as soon as it is
built, and skips heads whose state is already there, so an interrupted run restarted with
the same state directory continues where it stopped.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from headcode.errors import HeadcodeError
from headcode.files import write_json
from headcode.runtime.model.heads import HeadRef
from headcode.runtime.model.patterns import HeadPatterns
from headcode.synth.backend import Backend, Candidate, Rejected
from headcode.synth.library import build_library
from headcode.synth.occam import FrontPoint, pareto, within_budget
from headcode.synth.occam import choose as occam_choose
from headcode.synth.ranking import finalize, head_points, program_name, score_source

STATE_VERSION = 2


def load_state(path: Path, backend: str) -> list[FrontPoint] | None:
    """The saved front of one head, or ``None`` (no file); an incompatible file is an error."""
    if not path.exists():
        return None
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise HeadcodeError(f"cannot read {path} ({e}); delete it to redo that head") from e
    if d.get("version") != STATE_VERSION or d.get("backend") != backend:
        raise HeadcodeError(f"{path} was written by backend {d.get('backend')!r} (state version "
                            f"{d.get('version')}); use another --out or delete {path.parent}")
    return [FrontPoint(**{k: v for k, v in p.items() if k != "fidelity"}) for p in d["front"]]


# one head's search: its candidate points (or why it got none) and the programs the sandbox refused
HeadSearch = tuple[HeadRef, "list[FrontPoint] | Rejected", dict[str, str]]
# runs the search of every head of a list, yielding each as it finishes (in any order)
SearchRunner = Callable[[Backend, HeadPatterns, Sequence[HeadRef]], Iterator[HeadSearch]]


def search_head(backend: Backend, patterns: HeadPatterns, head: HeadRef) -> HeadSearch:
    """One head's search, in this process (a cluster worker calls this too)."""
    try:
        points = head_points(backend, patterns, head)
    except Rejected as e:
        return head, e, {}
    return head, points, dict(getattr(backend, "refused", {}))


def search_here(backend: Backend, patterns: HeadPatterns, todo: Sequence[HeadRef]) -> Iterator[HeadSearch]:
    """The search of every head, one after another in this process."""
    for h in todo:
        yield search_head(backend, patterns, h)


def _search(backend: Backend, patterns: HeadPatterns, todo: Sequence[HeadRef], fronts: dict[str, list[FrontPoint]],
            state: Path | None, bar: Any, run: SearchRunner = search_here) -> dict[str, str]:
    """The front of every head in ``todo`` (into ``fronts``), each saved under ``state`` as soon as it
    is made; returns the heads that got none, with why."""
    failed: dict[str, str] = {}
    for h, points, refused in run(backend, patterns, todo):
        front = pareto(points) if not isinstance(points, Rejected) else []
        if isinstance(points, Rejected) or not front:
            failed[str(h)] = str(points) if isinstance(points, Rejected) else \
                f"{h}: no candidate program within the size limit"
        else:
            fronts[str(h)] = front
            if state:
                write_json(state / f"{h}.json", {
                    "version": STATE_VERSION, "backend": backend.name,
                    "front": [p.to_json() for p in front],
                    "alternatives": [{"program": program_name(p.source), "iou": p.iou,
                                      "output_error": p.output_error, "size": p.size} for p in points],
                    "refused": [{"program": program_name(s), "reason": r} for s, r in refused.items()]})
        bar.update(1)
    return failed


def explain_heads(
    patterns: HeadPatterns,
    backend: Backend,
    heads: Sequence[HeadRef] | None = None,
    state_dir: str | Path | None = None,
    max_programs: int = 1000,
    progress: bool = True,
    budget: bool = True,
    run: SearchRunner = search_here,
) -> dict[str, Candidate]:
    """``{"L3.H7": Candidate}`` with fit/select/test scores for every head that could be explained.

    Per head: the front of (size, select fidelity) and Occam's choice (saved as soon as it is
    made); then, over all heads, the readability budget (``occam.within_budget``; ``budget``);
    then the chosen programs are scored on every split, test last. ``run``: where the per-head
    searches run (``search_here``: this process; ``headcode.cluster.explain``: a Ray cluster).
    """
    heads = tuple(heads) if heads is not None else patterns.heads
    missing = [h for h in heads if h not in patterns.index]
    if missing:
        raise HeadcodeError(f"no captured attention for heads {', '.join(map(str, missing[:5]))}")
    state = Path(state_dir) if state_dir is not None else None
    fronts: dict[str, list[FrontPoint]] = {}
    todo = []
    for h in heads:
        f = load_state(state / f"{h}.json", backend.name) if state else None
        if f is None:
            todo.append(h)
        else:
            fronts[str(h)] = f
    # one bar: the search of every head not done yet, then the scoring of every chosen program
    bar = tqdm(total=len(todo) + len(heads), desc=f"explain ({backend.name})", unit="head", disable=not progress)
    bar.set_postfix_str("preparing")
    backend.prepare(patterns, heads)
    bar.set_postfix_str("")
    bar.reset()  # the rate and time left count from here: preparing is a one-off
    failed = _search(backend, patterns, todo, fronts, state, bar, run)
    fronts = {str(h): fronts[str(h)] for h in heads if str(h) in fronts}  # heads' order, however they finished
    if failed:
        tqdm.write(f"headcode: {len(failed)} heads got no program: " +
                   "; ".join(f"{h}: {r}" for h, r in list(failed.items())[:3]))
    pick = {h: occam_choose(f) for h, f in fronts.items()}
    if budget:
        pick = within_budget(fronts, pick)
    results: dict[str, Candidate] = {}
    bar.total = len(todo) + len(fronts)
    bar.set_postfix_str("scoring")
    for h in sorted(fronts):
        try:
            results[h] = finalize(backend, patterns, HeadRef.parse(h), fronts[h][pick[h]].source, fronts[h])
        except Rejected as e:
            failed[h] = str(e)
        bar.update(1)

    def score(head: str, source: str, splits: Sequence[str]) -> Candidate:
        return score_source(backend, patterns, HeadRef.parse(head), source, splits)

    final = build_library(results, score, max_programs=max_programs)
    bar.close()
    return {h: c if c.source == results[h].source else
            finalize(backend, patterns, HeadRef.parse(h), c.source, fronts[h]) for h, c in final.items()}
