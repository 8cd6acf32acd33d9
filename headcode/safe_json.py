"""JSON from someone we do not trust (a sandbox worker's reply, a plan file): bounded first.

``loads_bounded(text, max_bytes, max_depth)`` refuses text longer than ``max_bytes`` or nested
deeper than ``max_depth`` before the parser sees it, so neither a deep nest (``RecursionError``
in the parser) nor a huge document (memory) can hurt the reader; any other failure is a
``ValueError`` too, so a caller catches one type.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)


class UnsafeJSON(ValueError):
    """The text is not JSON we will parse: too long, too deep, or malformed."""


def depth(text: str) -> int:
    """The deepest nesting of ``[``/``{`` outside strings (linear time, no recursion)."""
    bare = _STRING.sub("", text).encode("utf-8", "replace")
    if not bare:
        return 0
    a = np.frombuffer(bare, dtype=np.uint8)
    step = np.isin(a, (ord("["), ord("{"))).astype(np.int64) - np.isin(a, (ord("]"), ord("}")))
    return int(np.cumsum(step).max(initial=0))


def loads_bounded(text: str | bytes, max_bytes: int = 1 << 20, max_depth: int = 32) -> Any:
    """``json.loads`` of ``text`` if it is at most ``max_bytes`` long and ``max_depth`` deep;
    ``UnsafeJSON`` (a ``ValueError``) otherwise or if it is not valid JSON."""
    if len(text) > max_bytes:
        raise UnsafeJSON(f"JSON of {len(text)} bytes, more than {max_bytes}")
    try:
        s = text.decode("utf-8") if isinstance(text, (bytes, bytearray)) else str(text)
        d = depth(s)
        if d > max_depth:
            raise UnsafeJSON(f"JSON nested {d} deep, more than {max_depth}")
        return json.loads(s)
    except UnsafeJSON:
        raise
    except (ValueError, RecursionError, MemoryError, TypeError) as e:
        raise UnsafeJSON(f"not valid JSON ({type(e).__name__})") from e
