"""A tampered plan file (a term index past its table, a bad parameter) is refused at load
(``compiler.head.check_head_data`` from ``load_plan``), in one line, before any kernel could read
out of bounds."""

from __future__ import annotations

import json

import pytest
from catalogue import VOCAB
from safetensors import safe_open
from safetensors.numpy import save_file

from headcode.compiler import SurrogatePlan, compile_source, load_plan, save_plan
from headcode.errors import HeadcodeError

SOURCE = "def attend(t):\n    return 0.5 * most_recent(t, punct) + 0.5 * in_same_sentence(t)\n"


def _tamper(src, dst, edit) -> None:
    with safe_open(str(src), framework="numpy") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    heads = json.loads(meta["heads"])
    edit(heads["L0.H0"])
    meta["heads"] = json.dumps(heads)
    save_file(tensors, str(dst), metadata=meta)


def _edit_term(field, value):
    def edit(head):
        head["terms"][0][field] = value
    return edit


@pytest.mark.parametrize("edit, words", [
    (_edit_term("key_table", 7), "term 0: names table row 7, outside"),
    (_edit_term("query_table", -5), "term 0: names table row -5, outside"),
    (_edit_term("kind", "teleport"), "unknown selector kind 'teleport'"),
    (_edit_term("weight", -1.0), "not finite and non-negative"),
    (_edit_term("key_table", -1), "term 0: most_recent has no table row for its key class"),
    (lambda h: h["terms"][1].update(aux_table=-1), "term 1: sentence has no table row for its class"),
    (lambda h: h["terms"][1].update(kind="decay", rate=1.5), "term 1: decay rate must be in (0, 1)"),
])
def test_a_tampered_plan_is_refused_in_one_line(tmp_path, edit, words):
    head = compile_source(SOURCE, VOCAB, "fp", name="L0.H0", model_id="m", strict=True)
    good = save_plan(SurrogatePlan(model_id="m", fingerprint="fp", heads={"L0.H0": head}), tmp_path / "ok.safetensors")
    assert load_plan(good).heads["L0.H0"].terms == head.terms
    bad = tmp_path / "bad.safetensors"
    _tamper(good, bad, edit)
    with pytest.raises(HeadcodeError) as e:
        load_plan(bad)
    msg = str(e.value)
    assert "\n" not in msg and "L0.H0" in msg and words in msg
