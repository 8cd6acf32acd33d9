"""Files written whole or not at all: a temporary name, then ``os.replace``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_json(report: Any, path: str | os.PathLike) -> None:
    """Write JSON to a temporary name, then rename: never a half-written report."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=2)
    os.replace(tmp, path)
