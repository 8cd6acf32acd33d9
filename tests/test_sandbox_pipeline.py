"""A program that is harmless in the sandbox but harmful anywhere else leaves no trace after
explain -> compile -> load -> generate (issue 10), with every layer on, and with the Python
layers off (then the program really runs in the sandbox, is chosen or compiled, and its write
fails there)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from headcode.cli import main
from headcode.compiler import sandbox as S
from headcode.synth.ranking import program_name


def harmful(marker: str) -> str:
    return ("def attend(t):\n    try:\n        f = open(" + repr(marker) + ", 'a')\n        f.write('ran')\n"
            "        f.close()\n    except Exception:\n        pass\n"
            "    return 0.6 * previous(t, 1) + 0.4 * first(t)\n")


REPLY = {"text": ""}


@pytest.fixture
def endpoint(canned_chat):
    return canned_chat(lambda path, body: REPLY["text"])


def test_the_program_is_harmful_elsewhere(tmp_path):
    """The same source run by a plain interpreter writes its marker: the containment below is real."""
    marker = tmp_path / "elsewhere"
    code = (f"import numpy\nfrom headcode.compiler.namespace import namespace\nns = namespace()\n"
            f"exec({harmful(str(marker))!r}, ns)\n"
            "from headcode.compiler.tokens import Tokens\nns['attend'](Tokens.synthetic(['a', 'b']))\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert marker.read_text() == "ran"


@pytest.mark.parametrize("layers", ["all", "os_only"])
def test_no_trace_after_explain_compile_load_generate(tmp_path, tiny_gpt2_dir, tiny_tokenizer, endpoint,
                                                      capsys, layers):
    import torch

    import headcode

    if layers == "os_only":
        w = S.Worker(1024, python_layers=False)
        w.kill()
        if "chroot" not in w.layers:  # then nothing but the Python layers stops a file write
            pytest.skip(f"this system does not allow the chroot layer (layers: {', '.join(w.layers)})")
    marker = tmp_path / "marker"
    src = harmful(str(marker))
    REPLY["text"] = f"Here:\n```python\n{src}```\n"
    out = tmp_path / "explain"
    ctx = S.python_layers_off() if layers == "os_only" else _nothing()
    with ctx:
        assert main(["explain", tiny_gpt2_dir, "--corpus", "stories", "--out", str(out), "--heads", "L0.H1",
                     "--backend", "openai", "--base-url", endpoint, "--model", "canned", "--rounds", "0",
                     "--max-texts", "8", "--max-tokens", "24", "--no-progress"]) == 0
        capsys.readouterr()
        state = json.loads((out / "state" / "L0.H1.json").read_text())
        ran = [a["program"] for a in state["alternatives"]]
        if layers == "os_only":  # it ran in the sandbox (scored), where its write failed
            assert program_name(src) in ran
        else:  # refused by the check before it ran: never a candidate; the reason is kept
            assert program_name(src) not in ran and len(ran) == 2  # the two fallbacks
            (why,) = [r["reason"] for r in state["refused"] if r["program"] == program_name(src)]
            assert "name `open` is not allowed" in why
        (out / "programs" / "L1.H2.py").write_text(src)  # as a program file, too
        assert main(["compile", str(out), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    status = {r["head"]: r for r in rep["heads"]}
    if layers == "os_only":
        assert status["L1.H2"]["status"] == "compiled"  # traced in the sandbox
    else:
        assert status["L1.H2"]["status"] == "refused" and "name `open`" in status["L1.H2"]["reasons"][0]
    model = headcode.from_pretrained(tiny_gpt2_dir, surrogates=str(out / "surrogates.safetensors"))
    assert set(map(str, model.headcode_handle.heads)) >= ({"L0.H1", "L1.H2"} if layers == "os_only" else {"L0.H1"})
    ids = torch.tensor([tiny_tokenizer("Once upon a time, Tom").input_ids])
    gen = model.generate(ids, max_new_tokens=4, do_sample=False,
                         pad_token_id=tiny_tokenizer.pad_token_id)
    assert gen.shape[1] == ids.shape[1] + 4
    assert not marker.exists() and not os.path.exists(str(marker))


def test_explain_refuses_what_compile_refuses_over_the_models_vocabulary(tmp_path, tiny_gpt2_dir, tiny_tokenizer,
                                                                         endpoint, capsys):
    """A predicate that answers one way while it has been asked few times: over the few pieces
    of the fit texts it looks pure, over the model's vocabulary (what compile tabulates) it
    is not. Explain compiles against the model's vocabulary, so it refuses the
    program with compile's reason rather than score a head compile would not build."""
    limit = len(tiny_tokenizer) - 20  # more than twice the pieces the texts hold, fewer than the vocabulary
    src = (f"calls = [0]\n\ndef late(p):\n    calls[0] += 1\n    return calls[0] > {limit}\n\n"
           "def attend(t):\n    return 0.5 * most_recent(t, tok(late)) + 0.5 * first(t)\n")
    REPLY["text"] = f"```python\n{src}```\n"
    out = tmp_path / "explain"
    assert main(["explain", tiny_gpt2_dir, "--corpus", "stories", "--out", str(out), "--heads", "L0.H1",
                 "--backend", "openai", "--base-url", endpoint, "--model", "canned", "--rounds", "0",
                 "--max-texts", "8", "--max-tokens", "24", "--no-progress"]) == 0
    state = json.loads((out / "state" / "L0.H1.json").read_text())
    (why,) = [r["reason"] for r in state["refused"] if r["program"] == program_name(src)]
    assert "not a function of the token alone" in why
    (out / "programs" / "L1.H2.py").write_text(src)
    capsys.readouterr()
    assert main(["compile", str(out), "--json"]) == 0
    row = {r["head"]: r for r in json.loads(capsys.readouterr().out)["heads"]}["L1.H2"]
    assert row["status"] != "compiled" and "not a function of the token alone" in " ".join(row["reasons"])


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False
