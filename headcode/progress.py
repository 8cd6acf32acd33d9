"""Progress for a stage whose steps are not known ahead: one bar counting the model's forward
passes (every batch of every measurement of the stage), instead of a bar per measurement."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def forward_passes(model: Any, desc: str, enabled: bool = True) -> Iterator[Any]:
    """``with forward_passes(model, "evaluate"):`` one tqdm bar (on stderr) that counts the forward
    passes ``model`` makes inside the block; nothing when ``enabled`` is false."""
    if not enabled:
        yield None
        return
    from tqdm.auto import tqdm

    bar = tqdm(desc=desc, unit=" passes")

    def count(*_: Any) -> None:  # a pre-hook that returned something would replace the inputs
        bar.update(1)

    hook = model.register_forward_pre_hook(count)
    try:
        yield bar
    finally:
        hook.remove()
        bar.close()
