"""Issue 17: a program that gets out of the language, a hostile worker, and the host's reply reader.

The language-level shapes (attribute-by-name helpers, dead-branch rebinding, raw buffers,
mutable defaults) are in ``hostile.py``'s catalogue and run through explain, compile and the
compile command there; this file holds the findings that need their own harness.
"""

from __future__ import annotations

import io
import json
import os
import resource
import signal
import struct
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
from hostile import MARKER

from headcode.compiler import sandbox as S
from headcode.compiler.sandbox.frames import MalformedReply, read_reply, write_reply
from headcode.compiler.tokens import Tokens

TEXTS = [Tokens.synthetic(["<s>", " The", " cat", ".", " It", " sat", " the"])]
GOOD = "def attend(t):\n    return 0.5 * previous(t, 1) + 0.5 * first(t)\n"
FAST = S.Limits(time_s=5.0, memory_mb=1024)


# the reply reader: forged bytes -------------------------------------------------------------------
def _npy(header: str, payload: bytes = b"") -> bytes:
    h = header.encode("latin1")
    pad = 64 - (10 + len(h) + 1) % 64
    h = h + b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h + payload


def _zip(members: dict[str, bytes], method: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=method) as z:
        for k, v in members.items():
            z.writestr(k, v)
    return buf.getvalue()


def _status(text: bytes) -> bytes:
    return _npy(f"{{'descr': '|u1', 'fortran_order': False, 'shape': ({len(text)},), }}", text)


FORGED = {
    "nested_json": _zip({"status.npy": _status(b"[" * 200_000 + b"]" * 200_000)}),
    "declares_16_TiB": _zip({"status.npy": _status(b'{"ok": true}'),
                             "s0.npy": _npy("{'descr': '<f8', 'fortran_order': False, 'shape': (2199023255552,), }")}),
    "inflates_to_512_MB": _zip({"status.npy": _status(b'{"ok": true}'),
                                "s0.npy": _npy("{'descr': '|u1', 'fortran_order': False, 'shape': (536870912,), }",
                                               bytes(1 << 29))}, zipfile.ZIP_DEFLATED),
    "truncated": write_reply({"ok": True}, {"s0": np.ones((7, 7))})[:-50],
    "garbage": os.urandom(4096),
    "object_dtype": _zip({"status.npy": _status(b'{"ok": true}'),
                          "s0.npy": _npy("{'descr': '|O', 'fortran_order': False, 'shape': (1,), }", bytes(8))}),
    "status_not_object": write_reply({"ok": True}, {})[:0] + _zip({"status.npy": _status(b"[1, 2]")}),
    # from a colleague's forged-reply catalogue (lost worktree, session 4)
    "complex_scores": write_reply({"ok": True}, {"s0": np.ones((6, 6), np.complex128)}),
    "declares_60000_members": b"\0" * 64 + b"PK\x05\x06" + bytes(4) + (60_000).to_bytes(2, "little") * 2 + bytes(10),
    "status_of_3_MB": _zip({"status.npy": _status(b'{"ok": true, "pad": "' + b"x" * (3 << 20) + b'"}')}),
}


@pytest.mark.parametrize("name", list(FORGED))
def test_the_reader_refuses_every_forged_reply_before_allocating(name):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(MalformedReply):
        read_reply(FORGED[name])
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB


def test_the_reader_reads_an_honest_reply():
    status, arrays = read_reply(write_reply({"ok": True, "head": {"a": [1, {"b": 2}]}}, {"s0": np.eye(3)}))
    assert status["head"]["a"][1]["b"] == 2 and np.array_equal(arrays["s0"], np.eye(3))


def test_the_reader_reads_every_number_type_a_worker_writes():
    kinds = (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
             np.float16, np.float32, np.float64)
    arrays = {f"a{i}": (np.arange(12).reshape(3, 4) % 2).astype(k) for i, k in enumerate(kinds)}
    arrays["fortran"] = np.asfortranarray(np.arange(12.0).reshape(3, 4))
    status = {"ok": True, "head": {"terms": [{"kind": "first", "weight": 1.0}]}, "reason": "[{\"x"}
    got, back = read_reply(write_reply(status, arrays))
    assert got == status and set(back) == set(arrays)
    for k, a in arrays.items():
        np.testing.assert_array_equal(back[k], a)
        assert back[k].dtype == a.dtype and back[k].flags.writeable


def test_the_forgeries_are_real():
    """An unbounded reader chokes on them: the nested JSON overflows ``json.loads``, the bomb
    declares half a gigabyte in a frame of a few hundred kilobytes."""
    z = zipfile.ZipFile(io.BytesIO(FORGED["nested_json"]))
    raw = z.read("status.npy")
    with pytest.raises(RecursionError):
        json.loads(raw[raw.index(b"\n") + 1:])
    z = zipfile.ZipFile(io.BytesIO(FORGED["inflates_to_512_MB"]))
    assert len(FORGED["inflates_to_512_MB"]) < 1_000_000 and z.getinfo("s0.npy").file_size > 500 << 20


def _forger(body: bytes) -> str:
    frame = struct.pack("<Q", len(body)) + body
    return ("import os\ndef attend(t):\n    for fd in range(3, 16):\n        try:\n"
            f"            os.write(fd, {frame!r})\n        except OSError:\n            pass\n"
            "    return first(t)\n")


def test_a_compromised_worker_sending_forged_frames_costs_only_its_program():
    forged = [n for n in FORGED if len(FORGED[n]) < 2_000_000]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with S.python_layers_off():  # the program runs with every Python layer off: only the OS layers and the reader
        res = S.run_programs([_forger(FORGED[n]) for n in forged] + [GOOD], TEXTS, FAST)
    for n, r in zip(forged, res):
        assert not r.ok and "malformed reply" in r.reason, (n, r.reason)
    assert res[-1].ok
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000


def test_explain_survives_forged_replies_and_finishes(tmp_path, tiny_gpt2_dir, canned_chat):
    from headcode.cli import main

    forgers = [_forger(FORGED[n]) for n in ("nested_json", "declares_16_TiB", "garbage")]
    reply = "\n".join(f"```python\n{s}```" for s in forgers)
    url = canned_chat(lambda path, body: reply)
    out = tmp_path / "explain"
    args = ["explain", tiny_gpt2_dir, "--corpus", "stories", "--out", str(out), "--heads", "L0.H1,L1.H0",
            "--backend", "openai", "--base-url", url, "--model", "canned", "--rounds", "0",
            "--max-texts", "6", "--max-tokens", "16", "--no-progress"]
    with S.python_layers_off():
        assert main(args) == 0
        assert main(args) == 0  # and resumes
    state = json.loads((out / "state" / "L0.H1.json").read_text())
    reasons = [r["reason"] for r in state["refused"]]
    assert len(reasons) == 3 and all("malformed reply" in r for r in reasons), reasons
    assert (out / "programs" / "L1.H0.py").exists()


def test_a_plan_with_deeply_nested_metadata_is_a_clean_error(tmp_path):
    from safetensors.numpy import save_file

    from headcode.compiler.export import FORMAT, FORMAT_VERSION, load_plan
    from headcode.errors import HeadcodeError

    p = tmp_path / "nested.safetensors"
    save_file({"x": np.zeros(1, dtype=np.uint8)}, str(p), metadata={
        "format": FORMAT, "format_version": FORMAT_VERSION, "model": "m", "fingerprint": "f",
        "heads": "[" * 100_000 + "]" * 100_000})
    with pytest.raises(HeadcodeError, match="metadata is not JSON headcode reads.*nested"):
        load_plan(p)


# one worker cannot touch another, nor outlive its host ---------------------------------------------
def test_a_worker_cannot_signal_another_worker_or_the_host():
    sibling = S.Worker(1024)
    if "seccomp" not in sibling.layers:
        sibling.kill()
        pytest.skip(f"no seccomp here (layers: {', '.join(sibling.layers)})")
    try:
        kill = ("import os\ndef attend(t):\n    os.kill({pid}, 9)\n    return first(t)\n")
        limit = ("import resource\ndef attend(t):\n    resource.prlimit({pid}, resource.RLIMIT_CPU, (1, 1))\n"
                 "    return first(t)\n")  # a sibling's CPU limit to 1 s kills it too (found in review)
        with S.python_layers_off():
            res = S.run_programs([kill.format(pid=sibling.proc.pid), kill.format(pid=os.getpid()),
                                  "import os\ndef attend(t):\n    os.kill(os.getppid(), 9)\n    return first(t)\n",
                                  limit.format(pid=sibling.proc.pid)],
                                 TEXTS, FAST)
        assert all(not r.ok and "not permitted" in r.reason for r in res), [r.reason for r in res]
        assert sibling.alive()
    finally:
        sibling.kill()


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return "gone"


def test_a_worker_dies_with_its_host():
    host = subprocess.Popen([sys.executable, "-c",
                             "from headcode.compiler.sandbox import Worker\nw = Worker(1024)\n"
                             "print(w.proc.pid, flush=True)\n"  # then keeps it busy: no EOF on its stdin ends it
                             "w.request({'op': 'compile', 'source': 'def attend(t):\\n    while True:\\n        pass\\n', "
                             "'pieces': ['a'], 'fingerprint': 'f'}, 100.0)\n"],
                            stdout=subprocess.PIPE, text=True)
    try:
        pid = int(host.stdout.readline())
        time.sleep(0.5)
        assert _state(pid) not in ("gone", "Z")
        host.send_signal(signal.SIGKILL)
        host.wait(10)
        deadline = time.monotonic() + 5
        while _state(pid) not in ("gone", "Z") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _state(pid) in ("gone", "Z")
    finally:
        host.kill()


# no state passes from one program to the next --------------------------------------------------------
def test_a_patched_worker_cannot_change_the_next_program(tmp_path):
    """The issue's escape patched its (reused) worker so that the next head's honest
    ``previous(t, 1)`` compiled as ``uniform``. With the Python layers off a program can patch
    anything in its process; the next program runs in another one."""
    patch = ("import sys\ndef attend(t):\n    m = sys.modules['headcode.compiler.selectors.offset']\n"
             "    u = sys.modules['headcode.compiler.selectors.uniform']\n"
             "    for k in list(vars(m)):\n        if not k.startswith('__'):\n"
             "            setattr(m, k, getattr(u, k, getattr(m, k)))\n"
             "    sys.modules['headcode.compiler.selectors.registry']._REGISTRY.clear()\n"
             "    return first(t)\n")
    honest = "def attend(t):\n    return previous(t, 1)\n"
    pieces = sorted({p for t in TEXTS for p in t.pieces})
    with S.python_layers_off():
        S.compile_in_sandbox(patch, pieces, "fp", limits=FAST)
        head = S.compile_in_sandbox(honest, pieces, "fp", limits=FAST)
        (r,) = S.run_programs([honest], TEXTS, FAST)
    assert head.compiled and head.terms[0].kind == "offset", head.describe()
    assert r.ok and r.scores[0][3, 2] == 1.0 and r.scores[0][3].sum() == 1.0


# what explain scores is what compile builds ------------------------------------------------------------
STATEFUL = ("def attend(t):\n    seen = []\n"
            "    p = tok(lambda s: seen.append(s) or len(seen) % 2 == 0)\n"
            "    return 0.5 * most_recent(t, p) + 0.5 * first(t)\n")


def test_a_predicate_with_state_is_refused_in_explain_and_in_compile():
    (r,) = S.run_programs([STATEFUL], TEXTS, FAST)
    assert not r.ok and "not a function of the token alone" in r.reason, r.reason
    head = S.compile_in_sandbox(STATEFUL, [f" w{i}" for i in range(50)], "fp", limits=FAST)
    assert not head.compiled and "not a function of the token alone" in " ".join(head.reasons)


def test_explain_scores_the_compiled_head():
    """A traced program's scores in explain equal the compiled head's, computed from the plan's
    own tables on the text's ids (compile against the real vocabulary, then the reference)."""
    import torch

    from headcode.kernels.program_head.naive import program_scores_naive

    src = ("def attend(t):\n    return 0.4 * most_recent(t, tok(lambda p: p.strip() == 'the')) "
           "+ 0.3 * previous(t, 2) + 0.3 * same_token(t)\n")
    vocab = ["<s>", " The", " cat", ".", " It", " sat", " the", " dog"]
    head = S.compile_in_sandbox(src, vocab, "fp", limits=FAST)
    (r,) = S.run_programs([src], TEXTS, FAST)
    ids = torch.tensor([[vocab.index(p) for p in TEXTS[0].pieces]])
    assert r.ok and r.mode == "traced"
    np.testing.assert_allclose(r.scores[0], program_scores_naive(head.spec, ids)[0].numpy())


# a predicate whose state saturates: consistent over the model's vocabulary (so compile builds it),
# but another table over the few pieces of the scored texts (the review after issue 17)
SATURATING = ("seen = set()\n\ndef late(p):\n    seen.add(p)\n    return len(seen) > 300 and p.lower() == ' the'\n\n"
              "def attend(t):\n    return 0.5 * most_recent(t, tok(late)) + 0.5 * first(t)\n")


def test_explain_compiles_against_the_models_vocabulary():
    """Explain compiles a traced program against the model's whole vocabulary, by the function
    compile uses, in a fresh process: a predicate with module-level state builds the same table
    in both, and the scores are the compiled head's on the text's own ids."""
    import torch

    from headcode.kernels.program_head.naive import program_scores_naive

    vocab = [f" w{i}" for i in range(400)] + list(dict.fromkeys(TEXTS[0].pieces))
    text = Tokens.synthetic(list(TEXTS[0].pieces), ids=[vocab.index(p) for p in TEXTS[0].pieces])
    head = S.compile_in_sandbox(SATURATING, vocab, "fp-model", limits=FAST)
    assert head.compiled, head.reasons
    (r,) = S.run_programs([SATURATING], [text], FAST, vocabulary=S.Vocabulary(tuple(vocab), "fp-model"))
    assert r.ok and r.mode == "traced", r.reason
    compiled = program_scores_naive(head.spec, torch.from_numpy(text.ids)[None])[0].numpy()
    np.testing.assert_array_equal(r.scores[0], compiled)
    (few,) = S.run_programs([SATURATING], [text], FAST)  # the texts' own 7 pieces: another head
    assert few.ok and not np.array_equal(few.scores[0], compiled)


def test_a_text_of_another_tokenizer_is_refused():
    vocab = S.Vocabulary(("<s>", " The", " cat"), "fp-small")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        S.run_programs([GOOD], TEXTS, FAST, vocabulary=vocab)
    swapped = Tokens.synthetic(["<s>", " cat"], ids=[0, 1])
    with pytest.raises(ValueError, match="another tokenizer"):
        S.run_programs([GOOD], [swapped], FAST, vocabulary=vocab)


# the host's own path and the terminal ----------------------------------------------------------------
def test_from_source_holds_the_language(tmp_path):
    from headcode.compiler.program import Program, ProgramError

    target = tmp_path / "written"
    with pytest.raises(ProgramError, match="cannot be rebound"):
        Program.from_source(f"def attend(t):\n    if False:\n        open = None\n"
                            f"    open({str(target)!r}, 'w')\n    return first(t)\n")
    assert not target.exists()
    p = Program.from_source(GOOD)
    assert set(p.fn.__globals__["__builtins__"]) - {"__import__"} <= set(S.check_source.__globals__["SAFE_BUILTINS"])


def test_compile_prints_program_text_with_control_characters_escaped(tmp_path, tiny_gpt2_dir, capsys):
    from headcode.cli import main

    d = tmp_path / "explain"
    (d / "programs").mkdir(parents=True)
    (d / "programs" / "L0.H0.py").write_text(
        "def attend(t):\n    return uniform(t, tok(lambda p: p == 'a', '\\x1b[2K\\rL0.H0 compiled ok'))\n")
    assert main(["compile", str(d), "--model", tiny_gpt2_dir]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\\x1b[2K\\r" in out, out


def test_marker_untouched():
    assert not os.path.exists(MARKER)


def test_a_free_form_program_cannot_find_the_rest_of_its_text_in_its_process():
    """The issue's leak: a free-form program read the whole text one stack frame up. With every
    Python layer off it walks all frames for anything with token ids; row q may only ever find a
    text of q + 1 tokens, because the worker is sent one prefix at a time."""
    peek = ("import sys\nimport numpy as np\ndef attend(t):\n    n = len(t)\n    longest = n\n"
            "    f = sys._getframe(0)\n    while f is not None:\n"
            "        for v in list(f.f_locals.values()) + list(f.f_globals.values()):\n"
            "            for x in (v if isinstance(v, (list, tuple)) else [v]):\n"
            "                if hasattr(x, 'ids') and hasattr(x, 'pieces'):\n"
            "                    longest = max(longest, len(x.ids))\n"
            "        f = f.f_back\n"
            "    m = np.tril(np.ones((n, n)))\n    m[:, 0] = longest\n    return m\n")
    with S.python_layers_off():
        (r,) = S.run_programs([peek], TEXTS, FAST)
    assert r.ok and r.mode == "prefix", r.reason
    T = len(TEXTS[0])
    assert [int(r.scores[0][q, 0]) for q in range(T)] == [q + 1 for q in range(T)]
