"""The hostile suite (``hostile.py``) contained in explain, in compile and at plan load; the OS
layers hold with the Python layers switched off; free-form programs are causal."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hostile import HOSTILE, MARKER

from headcode.compiler import SurrogatePlan, load_plan, save_plan
from headcode.compiler import sandbox as S
from headcode.compiler.check import check_source
from headcode.compiler.head import CompiledHead, Term
from headcode.compiler.tokens import Tokens
from headcode.errors import HeadcodeError

TEXTS = [Tokens.synthetic(["<s>", " The", " cat", ".", " It", " sat"]), Tokens.synthetic(["<s>", " a", " b"])]
VOCAB = ["<s>", " The", " cat", ".", " It", " sat", " a", " b"]
FAST = S.Limits(time_s=1.0, memory_mb=1024)
GOOD = "def attend(t):\n    return 0.5 * previous(t, 1) + 0.5 * first(t)\n"


@pytest.fixture(autouse=True)
def no_marker():
    if os.path.exists(MARKER):
        os.remove(MARKER)
    yield
    assert not os.path.exists(MARKER), "a hostile program wrote the marker file"


def _has(reason: str, fragments: tuple[str, ...]) -> bool:
    return any(f in reason for f in fragments)


@pytest.fixture(scope="module")
def explained():
    return S.run_programs([h.source for h in HOSTILE] + [GOOD], TEXTS, FAST, workers=2)


@pytest.mark.parametrize("h", HOSTILE, ids=lambda h: h.name)
def test_contained_in_explain(explained, h):
    r = explained[HOSTILE.index(h)]
    assert not r.ok and r.scores == (), h.name
    assert _has(r.reason, h.reasons), r.reason
    assert "os-release" not in r.reason.replace("'/etc/os-release'", "") and "Debian" not in r.reason


def test_good_program_runs_after_the_hostile_ones(explained):
    r = explained[-1]
    assert r.ok and r.mode == "traced" and r.scores[0][2, 1] == 0.5


@pytest.mark.parametrize("h", HOSTILE, ids=lambda h: h.name)
def test_contained_in_compile(h):
    head = S.compile_in_sandbox(h.source, VOCAB, "fp-hostile", name="L0.H0", limits=FAST)
    assert not head.compiled and not head.terms and head.tables.shape == (0, len(VOCAB))
    assert _has(" ".join(head.reasons), h.reasons), head.reasons


def test_check_lists_every_reason_at_once():
    src = "import os\ndef attend(t):\n    getattr(t, 'x').__class__\n    return open('f')\n"
    reasons = check_source(src)
    assert len(reasons) == 4, reasons
    assert [r.split(":")[0] for r in reasons] == ["line 1", "line 3", "line 3", "line 4"]


def _first_term_head(name: str, source: str) -> CompiledHead:
    return CompiledHead(name=name, source=source, terms=(Term("first", 1.0),), table_names=(),
                        tables=np.zeros((0, len(VOCAB)), dtype=np.uint8), fingerprint="fp-hostile")


def test_plan_carrying_code_loads_without_running_it(tmp_path):
    heads = {}
    for i, h in enumerate(HOSTILE):
        heads[f"L{i}.H0"] = _first_term_head(f"L{i}.H0", h.source)  # compiled, hostile source text
        heads[f"L{i}.H1"] = CompiledHead(f"L{i}.H1", h.source, (), (), np.zeros((0, len(VOCAB)), np.uint8),
                                         "fp-hostile", compiled=False, reasons=("crafted",))
    path = save_plan(SurrogatePlan("tiny", "fp-hostile", heads), tmp_path / "surrogates.safetensors")
    back = load_plan(path)
    for i, h in enumerate(HOSTILE):
        assert back.heads[f"L{i}.H0"].source == h.source and back.heads[f"L{i}.H1"].source == h.source
    from headcode.runtime.surrogate.apply import build_surrogates

    fns = build_surrogates({k: v for k, v in back.heads.items() if v.compiled}, None)
    assert len(fns) == len(HOSTILE)
    with pytest.raises(HeadcodeError, match="not compiled"):
        build_surrogates({"L0.H1": back.heads["L0.H1"]}, None)


def test_plan_with_malformed_terms_is_refused_on_load(tmp_path):
    bad = CompiledHead("L0.H0", GOOD, (Term("most_recent", 1.0, key_table=7),), (),
                       np.zeros((0, len(VOCAB)), np.uint8), "fp")
    path = save_plan(SurrogatePlan("tiny", "fp", {"L0.H0": bad}), tmp_path / "p.safetensors")
    with pytest.raises(HeadcodeError, match="table row 7") as e:
        load_plan(path)
    assert "\n" not in str(e.value)


def test_the_worker_reports_its_layers():
    w = S.Worker(1024)
    try:
        assert {"rlimits", "no_new_privs", "ast_check", "audit_hook"} <= set(w.layers)
        known = {"no_new_privs", "userns", "netns", "chroot", "setuid", "rlimits", "seccomp", "ast_check",
                 "restricted_builtins", "audit_hook"}
        assert set(w.layers) <= known
        assert ("setuid" in w.layers) == (w.uid == 65534)  # a layer is listed only if it took effect
    finally:
        w.kill()


# the OS layers alone: full builtins, no check, no audit hook -----------------------------------
def _escape(body: str, head: str = "") -> str:
    """A program that raises ESCAPED if ``body`` (an attempt at harm) succeeds."""
    return (f"{head}def attend(t):\n    try:\n        ok = {body}\n    except BaseException as e:\n"
            f"        return first(t)\n    if ok is False:\n        return first(t)\n"
            f"    raise RuntimeError('ESCAPED ' + repr(ok)[:80])\n")


OS_ONLY = {  # name: (program, the layer that holds it, or a tuple: any of them)
    "read_file": (_escape("open('/etc/os-release').read()"), "chroot"),
    "write_marker": (_escape(f"open('{MARKER}', 'w').write('x')"), "chroot"),
    "write_proc_self_mem": (_escape("open('/proc/self/mem', 'wb')"), "chroot"),
    # RLIMIT_NPROC=0 stops fork for any uid but 0; seccomp stops it for every uid
    "shell": (_escape(f"__import__('os').system('touch {MARKER}') == 0 or False"), ("seccomp", "nproc")),
    "fork": (_escape("__import__('os').fork()"), ("seccomp", "nproc")),
    "network": (_escape("__import__('socket').create_connection(('1.1.1.1', 53), timeout=2)"), "netns"),
    "signal_parent": (_escape("__import__('os').kill(__import__('os').getppid(), 0)"), "setuid"),
    "setuid_root": (_escape("__import__('os').setuid(0)"), "setuid"),
    "raise_nproc": (_escape("__import__('resource').setrlimit(__import__('resource').RLIMIT_NPROC, (10**6, 10**6))"),
                    "setuid"),
    "ctypes_setuid": (_escape("ctypes.CDLL(None).setuid(0) == 0 or False", head="import ctypes\n"), "setuid"),
    "chroot_escape": (_escape("__import__('os').chroot('/')"), "setuid"),
    "raw_socket": (_escape("ctypes.CDLL(None).socket(2, 1, 0) >= 0 or False", head="import ctypes\n"), "seccomp"),
    "raw_execve": (_escape("ctypes.CDLL(None).execve(b'/proc/self/exe', None, None) >= 0 or False",
                           head="import ctypes\n"), "seccomp"),
    "unshare_user_ns": (_escape("ctypes.CDLL(None).unshare(0x10000000) == 0 or False", head="import ctypes\n"),
                        "seccomp"),
}


@pytest.fixture(scope="module")
def os_only():
    with S.python_layers_off():
        w = S.Worker(1024, python_layers=False)
        layers = set(w.layers) | ({"nproc"} if "rlimits" in w.layers and w.uid != 0 else set())
        w.kill()
        res = S.run_programs([p for p, _ in OS_ONLY.values()], TEXTS, FAST)
        hang = ("import signal, time\ndef attend(t):\n    signal.pthread_sigmask(signal.SIG_BLOCK, "
                "{signal.SIGALRM, signal.SIGXCPU})\n    time.sleep(60)\n    return first(t)\n")
        res.append(S.run_programs([hang, GOOD], TEXTS, FAST)[0])
    return layers, dict(zip(list(OS_ONLY) + ["blocked_sleep"], res))


@pytest.mark.parametrize("case", list(OS_ONLY))
def test_os_layers_hold_without_python_layers(os_only, case):
    layers, res = os_only
    assert "audit_hook" not in layers
    need = OS_ONLY[case][1] if isinstance(OS_ONLY[case][1], tuple) else (OS_ONLY[case][1],)
    if not layers & set(need):
        pytest.skip(f"this system does not allow the {' or '.join(need)} layer")
    r = res[case]
    assert r.ok, r.reason  # the attempt failed inside the program: it fell back to first(t)


def test_a_hang_that_ignores_signals_is_killed_from_outside(os_only):
    r = os_only[1]["blocked_sleep"]
    assert not r.ok and "killed from outside" in r.reason, r.reason


# free-form programs are causal ---------------------------------------------------------------------
PEEK = ("import numpy as np\ndef attend(t):\n    T = len(t)\n    s = np.ones((T, T))\n"
        "    if t.pieces[-1] == ' sat':\n        s[:, 0] = 100.0\n    return s\n")


def test_free_form_rows_see_only_their_prefix():
    a = Tokens.synthetic(["<s>", " The", " cat", ".", " It", " sat"])
    b = Tokens.synthetic(["<s>", " The", " cat", ".", " It", " ran"])
    ra = S.run_programs([PEEK], [a], FAST)[0]
    rb = S.run_programs([PEEK], [b], FAST)[0]
    assert ra.ok and ra.mode == "prefix" and rb.ok
    np.testing.assert_array_equal(ra.scores[0][:5], rb.scores[0][:5])  # rows before the change agree
    assert ra.scores[0][5, 0] == 100.0 and rb.scores[0][5, 0] == 1.0
    assert not np.any(np.triu(ra.scores[0], 1))
    from headcode.compiler.program import Program

    np.testing.assert_array_equal(Program.from_source(PEEK).scores(a), ra.scores[0])  # same rule in-process


# one program cannot change what the next one computes in the same worker -------------------------
def test_a_program_cannot_poison_the_next_in_the_same_worker():
    poison_tables = ("def attend(t):\n    fake = tok(lambda p: p.strip() == 'the').name\n"
                     "    return most_recent(t, Pred('punct', lambda p: True)) + uniform(t, Pred(fake, lambda p: True))\n")
    poison_texts = "def attend(t):\n    t.ids[:] = 0\n    return uniform(t)\n"
    honest = ("def attend(t):\n    return most_recent(t, punct) + same_token(t) + "
              "uniform(t, tok(lambda p: p.strip() == 'the'))\n")
    a = S.compile_in_sandbox(poison_tables, VOCAB, "fp-poison", limits=FAST)
    b = S.compile_in_sandbox(honest, VOCAB, "fp-poison", limits=FAST)
    assert a.compiled and b.compiled and a.tables.all()
    from headcode.compiler.predicates import punct

    np.testing.assert_array_equal(b.tables[b.table_names.index("punct")], punct.table(VOCAB))
    the = [n for n in b.table_names if n.startswith("tok:")][0]
    np.testing.assert_array_equal(b.tables[b.table_names.index(the)], [p.strip() == "the" for p in VOCAB])
    *_, after = S.run_programs([poison_tables, poison_texts, honest], TEXTS, FAST)
    from headcode.compiler.pattern import evaluate
    from headcode.compiler.program import Program

    expr = Program.from_source(honest).trace()  # our own copy of a trusted program, in this process
    assert after.ok
    for t, y in zip(TEXTS, after.scores):
        np.testing.assert_array_equal(evaluate(expr, t), y)


def test_compile_command_refuses_every_hostile_file(tmp_path, tiny_gpt2_dir, capsys):
    import json

    from headcode.cli import main

    d = tmp_path / "explain"
    (d / "programs").mkdir(parents=True)
    for i, h in enumerate(HOSTILE):
        (d / "programs" / f"L{i}.H0.py").write_text(h.source)
    (d / "programs" / "L99.H0.py").write_text(GOOD)
    assert main(["compile", str(d), "--model", tiny_gpt2_dir, "--json", "--time-limit", "1"]) == 0
    rows = {r["head"]: r for r in json.loads(capsys.readouterr().out)["heads"]}
    for i, h in enumerate(HOSTILE):
        r = rows[f"L{i}.H0"]
        assert r["status"] == "refused" and _has(" ".join(r["reasons"]), h.reasons), (h.name, r)
    assert rows["L99.H0"]["status"] == "compiled"
    assert set(load_plan(d / "surrogates.safetensors").heads) == {"L99.H0"}


def test_a_compromised_worker_cannot_forge_replies():
    forge = ("import os\ndef attend(t):\n    for fd in range(3, 16):\n        try:\n"
             "            os.write(fd, ({n}).to_bytes(8, 'little') + b'x' * 64)\n"
             "        except OSError:\n            pass\n    return first(t)\n")
    with S.python_layers_off():
        res = S.run_programs([forge.format(n=64), forge.format(n=2**62), GOOD], TEXTS, FAST)
    assert "malformed reply" in res[0].reason and "more than" in res[1].reason, [r.reason for r in res]
    assert res[2].ok


def test_printing_cannot_grow_the_host():
    loud = "def attend(t):\n    for i in range(8):\n        print('x' * 10 ** 8, end='')\n    return first(t)\n"
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    (r,) = S.run_programs([loud], TEXTS, S.Limits(time_s=20.0, memory_mb=1024))
    assert r.ok, r.reason
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB: not the 800 MB printed


def test_numpy_error_state_does_not_carry_over():
    # np.seterr is out of the language now; with the Python layers off it runs, in its own process
    raising = "import numpy as np\ndef attend(t):\n    np.seterr(all='raise')\n    return first(t)\n"
    nan_ok = ("import numpy as np\ndef attend(t):\n    z = np.zeros((len(t), len(t)))\n"
              "    return np.nan_to_num(z / z) + 1.0\n")
    assert ".seterr" in S.run_programs([raising], TEXTS, FAST)[0].reason
    with S.python_layers_off():
        res = S.run_programs([raising, nan_ok], TEXTS, FAST)
    assert all(r.ok for r in res), [r.reason for r in res]
