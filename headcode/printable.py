"""Text from a program (its source, a predicate's name, a reason quoting it) made safe to print.

A program's text is untrusted: an escape sequence in it (``\\x1b[2K\\r``) would reach the
terminal raw and could rewrite what the user sees (a fake "compiled" line). ``printable``
writes every character that is not printable as its Python escape, so the user sees the
bytes, not their effect.
"""

from __future__ import annotations


def printable(text: str, keep_newlines: bool = False) -> str:
    """``text`` with control and other non-printable characters escaped (``\\x1b``, ``\\u202e``);
    ``keep_newlines``: keep ``\\n`` and ``\\t`` (program source shown as a block)."""
    keep = "\n\t" if keep_newlines else ""
    return "".join(c if c.isprintable() or c in keep else c.encode("unicode_escape").decode("ascii")
                   for c in str(text))
