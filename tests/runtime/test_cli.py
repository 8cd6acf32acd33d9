"""The command line: --help, JSON output, one-line errors with a non-zero exit."""

from __future__ import annotations

import json

import pytest

from headcode.cli import main


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "heads" in out and "capture" in out


def test_heads_json(tiny_llama_dir, capsys):
    assert main(["heads", tiny_llama_dir, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["layers"], info["heads"], info["kv_heads"]) == (2, 4, 2)


@pytest.mark.parametrize("argv, needle", [
    (["heads", "no/such/model/x"], "unknown model"),
    (["capture", "TINY", "--heads", "L99.H0", "--out", "OUT"], "out of range"),
    (["capture", "TINY", "--corpus", "EMPTY", "--out", "OUT"], "has no text"),
])
def test_bad_input_is_one_line_and_nonzero(argv, needle, tiny_gpt2_dir, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n  \n")
    out = tmp_path / "p.safetensors"
    argv = [{"TINY": tiny_gpt2_dir, "EMPTY": str(empty), "OUT": str(out)}.get(a, a) for a in argv]
    assert main(argv) != 0
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_capture_writes_patterns(tiny_gpt2_dir, tmp_path, capsys):
    from headcode.runtime.model.patterns import HeadPatterns

    txt = tmp_path / "c.txt"
    txt.write_text("\n\n".join(f"Story {i}. The cat sat on the mat, and the dog ran {i} times." for i in range(12)))
    out = tmp_path / "p.safetensors"
    assert main(["capture", tiny_gpt2_dir, "--corpus", str(txt), "--heads", "L1", "--out", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    hp = HeadPatterns.load(str(out))
    assert info["texts"] == len(hp.tokens) == 12 and len(hp.heads) == 4
    assert set(hp.splits) <= {"fit", "select", "test"}
