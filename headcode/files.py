"""Files written whole or not at all: everything goes to a temporary name beside the target,
then ``os.replace`` puts it in place; a failure removes the temporary and leaves the target as
it was. The one atomic writer of headcode: JSON, text, figures, safetensors and directories."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists() or p.is_symlink():
        p.unlink()


@contextmanager
def replacing(path: str | os.PathLike[str]) -> Iterator[Path]:
    """``with replacing(path) as tmp:`` write ``tmp`` (a file, or a directory you create); it
    replaces ``path`` when the block ends without an error and is removed otherwise. A directory
    already at ``path`` is kept (another process made it first) and ``tmp`` is dropped."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")  # the suffix stays last (savefig)
    _remove(tmp)
    try:
        yield tmp
        if not (tmp.is_dir() and path.is_dir()):
            os.replace(tmp, path)
    finally:
        _remove(tmp)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    with replacing(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | os.PathLike[str], obj: Any, indent: int = 1) -> Path:
    return write_text(path, json.dumps(obj, indent=indent) + "\n")


def save_figure(fig: Any, path: str | os.PathLike[str], dpi: int = 100) -> Path:
    """A matplotlib figure as an image (its format from ``path``'s suffix)."""
    with replacing(path) as tmp:
        fig.savefig(tmp, dpi=dpi)
    return Path(path)
