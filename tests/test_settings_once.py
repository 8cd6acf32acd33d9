"""Settings are defined once: each command's defaults are its settings dataclass's, and how heads
are chosen is one ``RankSettings`` shared by select, evaluate and calibrate."""

from __future__ import annotations

import dataclasses

import pytest

from headcode.cli import build_parser
from headcode.commands._options import rank_from
from headcode.pipeline.calibrate import CalibrateSettings
from headcode.runtime.evaluation.select_plan import SelectSettings
from headcode.runtime.evaluation.settings import EvalSettings
from headcode.runtime.model.loading import DEFAULT_MODEL

ARGS = {"evaluate": ["--surrogates", "p", "--out", "o"], "select": ["--surrogates", "p", "--out", "o"],
        "calibrate": ["--surrogates", "p", "--out", "o"]}


def _parse(cmd: str, *extra: str):
    return build_parser().parse_args([cmd, *ARGS[cmd], *extra])


@pytest.mark.parametrize("cmd,expected", [("evaluate", EvalSettings().rank), ("select", SelectSettings().rank),
                                          ("calibrate", CalibrateSettings("-", "-").rank)])
def test_rank_defaults_are_the_dataclasses(cmd, expected):
    assert rank_from(_parse(cmd)) == expected
    changed = rank_from(_parse(cmd, "--rounds", "7", "--measure-texts", "3"))
    assert changed == dataclasses.replace(expected, rounds=7, measure_texts=3)


def test_evaluate_defaults_are_evalsettings():
    a, e = _parse("evaluate"), EvalSettings()
    assert a.fraction == e.fraction and a.qa_limit == e.qa_limit
    assert tuple(float(x) for x in a.curve.split(",")) == e.curve
    assert tuple(a.baselines.split(",")) == e.baselines and tuple(a.own_choice.split(",")) == e.own_choice


def test_every_model_argument_defaults_to_the_bundled_model():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command" or a.choices)
    for name, p in sub.choices.items():
        model = [a for a in p._actions if a.dest == "model" and not a.option_strings]  # the positional MODEL
        if model:
            assert model[0].default == DEFAULT_MODEL, name
