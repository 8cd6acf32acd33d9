"""What several commands share, with defaults read from the settings dataclasses (defined once):
the model argument, how heads are chosen (``RankSettings``), and a field's default."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from headcode.runtime.evaluation.settings import RankSettings
from headcode.runtime.model.loading import DEFAULT_MODEL


def default(cls: type, name: str) -> Any:
    """The default of field ``name`` of the dataclass ``cls`` (``TypeError`` if it has none)."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise TypeError(f"{cls.__name__}.{name} has no default")


def add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL,
                   help=f"{DEFAULT_MODEL} (the bundled default), a hub id, a checkpoint directory or a .gguf file")


def add_rank(p: argparse.ArgumentParser, what: str = "heads", d: RankSettings | None = None) -> None:
    """``--measure-texts/-tokens/-factor``, ``--rounds``, ``--batch-size`` (defaults from ``d``,
    else ``RankSettings()``)."""
    d = d or RankSettings()
    p.add_argument("--measure-texts", type=int, default=d.measure_texts,
                   help=f"select texts for measuring {what} one by one (default {d.measure_texts})")
    p.add_argument("--measure-tokens", type=int, default=d.measure_tokens,
                   help=f"... truncated to this many tokens (default {d.measure_tokens})")
    p.add_argument("--measure-factor", type=float, default=d.measure_factor,
                   help=f"{what} measured one by one: this many times the number to replace (default {d.measure_factor})")
    p.add_argument("--rounds", type=int, default=d.rounds,
                   help=f"choose in this many rounds, each on top of the {what} already chosen (default {d.rounds})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"texts per forward pass (default {d.batch_size})")


def add_cluster(p: argparse.ArgumentParser, what: str) -> None:
    """``--cluster ray[:ADDRESS]``: the independent forward passes (``what``) as Ray tasks."""
    p.add_argument("--cluster", default=None, metavar="ray[:ADDRESS]",
                   help=f"{what} as Ray tasks: ray (a local instance) or ray:ADDRESS (a running cluster); "
                        "the numbers are the local run's (pip install 'headcode[cluster]')")


def rank_from(args: argparse.Namespace) -> RankSettings:
    return RankSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(RankSettings)})
