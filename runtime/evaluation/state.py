"""Finished pieces of an evaluation (head rankings, perplexities, QA scores) kept in a JSON file
beside the report, so that an interrupted ``headcode evaluate`` resumes where it stopped.

The file is used only when its ``key`` (the plan, model, texts and settings that decide every
piece) matches the run's; every piece is further keyed by what it measured (test set, variant,
heads), so a stale piece is never reused. Written whole after each piece (temp name, then rename).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from headcode.files import write_json
from headcode.runtime.evaluation.selection import Ranking
from headcode.runtime.model.heads import HeadRef


class EvalState:
    def __init__(self, path: str | Path | None, key: str):
        self.path, self.key = (Path(path) if path else None), key
        self.pieces: dict[str, Any] = {}
        if self.path is not None and self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
            except (OSError, ValueError):
                data = {}
            if data.get("key") == key:
                self.pieces = dict(data.get("pieces", {}))

    def get(self, name: str) -> Any | None:
        return self.pieces.get(name)

    def put(self, name: str, value: Any) -> Any:
        self.pieces[name] = value
        if self.path is not None:
            write_json(self.path, {"key": self.key, "pieces": self.pieces})
        return value

    def remove(self) -> None:
        """Drop the file once the report is written."""
        if self.path is not None and self.path.is_file():
            self.path.unlink()


def heads_key(heads: Iterable[HeadRef]) -> str:
    return ",".join(str(h) for h in sorted(heads))


def ranking_to_json(r: Ranking) -> dict[str, Any]:
    return {"heads": [str(h) for h in r.heads], "measured": {str(h): v for h, v in r.measured.items()},
            "estimate": {str(h): v for h, v in r.estimate.items()}, "base_loss": r.base_loss, "method": r.method}


def ranking_from_json(d: dict[str, Any]) -> Ranking:
    def heads(m: dict[str, float]) -> dict[HeadRef, float]:
        return {HeadRef.parse(k): float(v) for k, v in m.items()}

    return Ranking(tuple(HeadRef.parse(h) for h in d["heads"]), heads(d["measured"]), heads(d["estimate"]),
                   float(d["base_loss"]), str(d["method"]))
