import os

import pytest

from headcode.compiler.sandbox import Limits, run_programs
from headcode.compiler.tokens import Tokens

TEXTS = [Tokens.synthetic(["<s>", " The", " cat", ".", " It"]), Tokens.synthetic(["<s>", " a", " b"])]
GOOD = "def attend(t):\n    return 0.5 * previous(t, 1) + 0.5 * first(t)\n"
BAD = {
    "infinite loop": ("def attend(t):\n    while True:\n        pass\n", "time limit"),
    "loop eating exceptions": ("def attend(t):\n    while True:\n        try:\n            pass\n"
                               "        except BaseException:\n            pass\n", "time limit"),
    "10 GiB": ("import numpy as np\ndef attend(t):\n    return np.ones(10 * 2**30 // 8)\n", "memory"),
    "os.system": ("import os\ndef attend(t):\n    os.system('touch /tmp/headcode_sandbox_pwned')\n",
                  "import of 'os' is not allowed"),
    "file write": ("import numpy as np\ndef attend(t):\n    np.save('/tmp/headcode_sandbox_pwned.npy', "
                   "np.zeros(3))\n    return np.ones((len(t), len(t)))\n", "attribute `.save` is not allowed"),
    "open builtin": ("def attend(t):\n    open('/tmp/headcode_sandbox_pwned', 'w')\n", "open"),
    "socket": ("import socket\ndef attend(t):\n    socket.create_connection(('127.0.0.1', 9))\n",
               "import of 'socket' is not allowed"),
    "escape to sys": ("def attend(t):\n    import sys\n", "import of 'sys' is not allowed"),
    "wrong shape": ("import numpy as np\ndef attend(t):\n    return np.ones((2, 3))\n", "shape"),
    "negative": ("import numpy as np\ndef attend(t):\n    return -np.ones((len(t), len(t)))\n", "negative"),
    "nan": ("import numpy as np\ndef attend(t):\n    return np.full((len(t), len(t)), np.nan)\n", "NaN"),
    "exception": ("def attend(t):\n    return 1 / 0\n", "ZeroDivisionError"),
    "syntax": ("def attend(t)\n    return 1\n", "SyntaxError"),
}


@pytest.fixture(scope="module")
def results():
    srcs = [GOOD] + [s for s, _ in BAD.values()] + [GOOD.replace("0.5 * first", "0.5 * current")]
    return run_programs(srcs, TEXTS, Limits(time_s=1.5, memory_mb=1024), workers=2, chunk=4)


@pytest.mark.parametrize("case", list(BAD))
def test_refusals_have_reasons(results, case):
    r = results[1 + list(BAD).index(case)]
    assert not r.ok and r.scores == ()
    assert BAD[case][1] in r.reason, r.reason
    assert not any(f.startswith("headcode_sandbox_pwned") for f in os.listdir("/tmp"))


def test_good_programs_run_around_bad_ones(results):
    assert len(results) == len(BAD) + 2
    for r in (results[0], results[-1]):
        assert r.ok, r.reason
        assert [m.shape for m in r.scores] == [(5, 5), (3, 3)]
    assert results[0].scores[0][2, 1] == 0.5 and results[0].scores[0][2, 0] == 0.5


def test_a_child_killed_mid_batch_costs_one_program():
    # a hard hang in C code ignores the alarm; the parent kills the child, the next program still runs
    hang = "import numpy as np\ndef attend(t):\n    import time\n"  # refused quickly (time not allowed)
    sleeper = "def attend(t):\n    x = 0\n    while True:\n        x += 1\n"
    res = run_programs([sleeper, hang, GOOD], TEXTS, Limits(time_s=1.0, memory_mb=1024))
    assert [r.ok for r in res] == [False, False, True]
    assert "time limit" in res[0].reason


def test_each_program_gets_a_fresh_process_killed_after_it(monkeypatch):
    from headcode.compiler.sandbox import worker as SW

    started = []
    real = SW.Worker.__post_init__

    def spy(self):
        real(self)
        started.append(self)

    monkeypatch.setattr(SW.Worker, "__post_init__", spy)
    res = run_programs([GOOD, GOOD.replace("first", "current")], TEXTS, Limits(memory_mb=1024), workers=1)
    assert all(r.ok for r in res)
    assert len({w.proc.pid for w in started}) == 2 and not any(w.alive() for w in started)
    assert not SW._POOL.live


def test_a_worker_runs_one_program_only():
    from headcode.compiler import sandbox as S

    w = S.Worker(1024)
    try:
        ok, _ = w.request({"op": "score", "source": GOOD, "pieces": ["<s>", " a"], "fingerprint": "x"}, 5.0)
        other, _ = w.request({"op": "score", "source": GOOD.replace("first", "current"), "pieces": ["<s>"],
                              "fingerprint": "x"}, 5.0)
    finally:
        w.kill()
    assert ok["ok"] and ok["traced"] and not other["ok"] and "another program" in other["reason"]
