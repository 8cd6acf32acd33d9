"""``--cluster`` without a cluster: the spec is parsed (bad ones named in one line), Ray is never
imported unless asked for, and asking without Ray installed says how to install it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from headcode.cluster import ClusterSpec, parse_cluster
from headcode.errors import HeadcodeError


def test_cluster_specs():
    assert parse_cluster(None) is None and parse_cluster("local") is None
    assert parse_cluster("ray") == ClusterSpec(None)
    assert parse_cluster("ray:10.0.0.5:6379") == ClusterSpec("10.0.0.5:6379")
    assert parse_cluster("ray:auto").address == "auto" and str(parse_cluster("ray:auto")) == "ray:auto"
    for bad in ("dask", "ray:", "slurm:host"):
        with pytest.raises(HeadcodeError, match="--cluster"):
            parse_cluster(bad)


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_ray_is_not_imported_unless_asked_for():
    r = _run("import sys\nfrom headcode.cli import build_parser\nbuild_parser()\n"
             "import headcode.pipeline.explain, headcode.pipeline.serve, headcode.commands.serve\n"
             "import headcode.pipeline.evaluate, headcode.pipeline.calibrate, headcode.commands.select\n"
             "print('ray' in sys.modules)")
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr


def test_asking_without_ray_names_the_extra(tmp_path):
    out = tmp_path / "out"
    r = _run("import sys\nsys.modules['ray'] = None  # as if Ray were not installed\n"
             "from headcode.cli import main\n"
             f"sys.exit(main(['explain', '--patterns', 'missing.safetensors', '--out', {str(out)!r}, "
             "'--cluster', 'ray']))")
    assert r.returncode == 1 and "headcode[cluster]" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()  # said before anything was read or written
    r = _run("from headcode.cli import main\nimport sys\n"
             f"sys.exit(main(['explain', '--out', {str(out)!r}, '--llm-per-minute', '30']))")
    assert r.returncode == 1 and "--cluster" in r.stderr


def test_rate_limiter_spaces_the_slots(monkeypatch):
    from headcode.cluster import explain as ce

    now = [1000.0]
    monkeypatch.setattr(ce.time, "time", lambda: now[0])
    r = ce.RateLimiter(per_minute=120)  # a slot every 0.5 s, for all workers together
    assert [r.reserve() for _ in range(3)] == [0.0, 0.5, 1.0]
    now[0] += 10.0  # idle: the next caller goes at once, no burst is saved up
    assert r.reserve() == 0.0 and r.reserve() == 0.5


def test_openai_backend_travels_to_a_worker_without_its_client():
    import pickle

    from headcode.synth.llm import LLMOptions, OpenAIBackend

    b = OpenAIBackend(LLMOptions(base_url="http://127.0.0.1:9/v1", model="m"))
    b.limiter = lambda: None
    c = pickle.loads(pickle.dumps(b))
    assert c.limiter is None and c.client is not b.client and str(c.client.base_url) == str(b.client.base_url)
    assert c.options == b.options


def test_every_llm_request_waits_for_the_limiter(canned_chat):
    from headcode.synth.llm import LLMOptions, OpenAIBackend

    b = OpenAIBackend(LLMOptions(base_url=canned_chat(lambda path, body: "a reply"), model="m"))
    calls = []
    b.limiter = lambda: calls.append(1)
    assert b._ask([{"role": "user", "content": "hi"}]) == "a reply" and calls == [1]


@pytest.mark.parametrize("command", ["evaluate", "select", "calibrate"])
def test_evaluate_select_calibrate_name_the_extra_before_loading(tmp_path, command):
    plan = tmp_path / "plan.safetensors"
    plan.write_bytes(b"")  # never read: the missing extra is said first
    out = tmp_path / ("out.json" if command == "evaluate" else "out.safetensors")
    args = [command, "no/model/needed", "--surrogates", str(plan), "--out", str(out), "--cluster", "ray"]
    args += ["--fraction", "0.25"] if command == "calibrate" else []
    r = _run("import sys\nsys.modules['ray'] = None  # as if Ray were not installed\n"
             f"from headcode.cli import main\nsys.exit(main({args!r}))")
    assert r.returncode == 1 and "headcode[cluster]" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not out.exists()
    if command == "calibrate":  # the fit is one sequential optimisation: --cluster is for choosing heads
        r = _run(f"from headcode.cli import main\nimport sys\nsys.exit(main({args[:-2]!r}))")
        assert r.returncode == 1 and "--fraction" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
