"""Lazy package attributes: a package lists ``{name: module}`` and each name is imported on first
use, so importing the package stays cheap (``import headcode`` loads no torch)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_attributes(package: str, api: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``api[name]`` is the module that defines ``name``."""

    def getattr_(name: str) -> Any:
        if name in api:
            return getattr(importlib.import_module(api[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def dir_() -> list[str]:
        return sorted(set(importlib.import_module(package).__dict__) | set(api))

    return getattr_, dir_
