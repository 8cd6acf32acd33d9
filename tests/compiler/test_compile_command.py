"""``headcode compile DIR`` on a tiny checkpoint, and compiled heads on real tokenizer text."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from catalogue import PROGRAMS, REJECTED

from headcode.cli import main
from headcode.compiler import compile_program, load_plan, run_head
from headcode.compiler.pattern import attention_from_scores
from headcode.compiler.program import Program
from headcode.compiler.tokens import Tokens, tokenizer_fingerprint, vocabulary_pieces
from headcode.errors import HeadcodeError

TEXT = ("Tom saw a big red ball! He ran to the ball, and kicked it.\n\"Look at me,\" said Tom. "
        "His friend Lily laughed; they played until 5 o'clock. The next day, Tom and Lily read a book.")


def _write_dir(tmp_path, model_dir):
    d = tmp_path / "explain"
    (d / "programs").mkdir(parents=True)
    (d / "report.json").write_text(json.dumps({"model": model_dir, "heads": []}))
    (d / "programs" / "L0.H1.py").write_text(PROGRAMS[3].source)
    (d / "programs" / "L1.H0.py").write_text(REJECTED[0].source)
    (d / "programs" / "L0.H0.py").write_text("# no function here\nx = 1\n")
    (d / "programs" / "notes.txt").write_text("ignored")
    return d


def test_compile_command_writes_plan_and_reports(tmp_path, tiny_gpt2_dir, tiny_tokenizer, capsys):
    d = _write_dir(tmp_path, tiny_gpt2_dir)
    assert main(["compile", str(d), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    status = {r["head"]: r["status"] for r in rep["heads"]}
    assert status == {"L0.H0": "refused", "L0.H1": "compiled", "L1.H0": "refused"}
    reasons = {r["head"]: " ".join(r["reasons"]) for r in rep["heads"]}
    assert "defines no function" in reasons["L0.H0"] and "product" in reasons["L1.H0"]
    assert rep["fingerprint"] == tokenizer_fingerprint(tiny_tokenizer)
    plan = load_plan(d / "surrogates.safetensors", expected_fingerprint=rep["fingerprint"])
    assert set(plan.heads) == {"L0.H1"}  # a plan holds compiled heads only: IR and tables
    assert plan.heads["L0.H1"].compiled and plan.heads["L0.H1"].source == PROGRAMS[3].source
    assert main(["compile", str(d)]) == 0
    out = capsys.readouterr()
    assert "L0.H1  compiled" in out.out and "L1.H0  refused" in out.out and "1 compiled, 2 refused" in out.err


def test_compile_command_errors_are_one_line(tmp_path, capsys):
    assert main(["compile", str(tmp_path)]) == 1
    assert "programs" in capsys.readouterr().err
    (tmp_path / "programs").mkdir()
    (tmp_path / "programs" / "L0.H0.py").write_text(PROGRAMS[0].source)
    assert main(["compile", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "report.json" in err and err.count("\n") == 1


@pytest.mark.parametrize("backend", ["numba", "triton", "torch"])
def test_catalogue_on_real_tokenizer_text(tiny_tokenizer, backend):
    pieces = vocabulary_pieces(tiny_tokenizer)
    fp = tokenizer_fingerprint(tiny_tokenizer)
    t = Tokens.from_text(tiny_tokenizer, TEXT)
    assert len(t) > 40
    rng = np.random.default_rng(3)
    v = rng.standard_normal((len(t), 8)).astype(np.float32)
    for c in PROGRAMS:
        prog = Program.from_source(c.source, c.name)
        head = compile_program(prog, pieces, fp)
        out = run_head(head, torch.from_numpy(t.ids)[None], torch.from_numpy(v)[None], backend=backend)
        ref = attention_from_scores(prog.scores(t)) @ v.astype(np.float64)
        np.testing.assert_allclose(out[0].double().numpy(), ref, atol=1e-5, rtol=0, err_msg=c.name)


def test_uncompiled_head_refuses_to_run():
    head = compile_program(Program.from_source(REJECTED[0].source), ["a", "b"], "fp")
    with pytest.raises(HeadcodeError, match="cannot be compiled"):
        run_head(head, torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 3, 4))
