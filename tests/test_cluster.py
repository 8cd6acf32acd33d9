"""More than one machine, on a Ray cluster the tests start themselves (the ``cluster`` extra;
``make test-cluster``): explain with one task per head gives the local run's programs and
numbers, a worker killed mid-run has its head run again and the run finishes, and
``serve --replicas 2`` answers the openai client as one ``headcode serve`` does."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from headcode.pipeline.explain import ExplainSettings, explain_model

pytestmark = pytest.mark.cluster

HERE = Path(__file__).resolve().parent
RAY = str(Path(sys.executable).parent / "ray")
EXTRA = {  # three more planted heads beside the synthesis tests' three: six tasks on two CPUs
    "L1.H1": "def attend(t):\n    return 0.8 * previous(t, 1) + 0.2 * current(t)\n",
    "L2.H0": "def attend(t):\n    return 0.6 * first(t) + 0.4 * previous(t, 2)\n",
    "L2.H1": "def attend(t):\n    return 0.5 * current(t) + 0.5 * first(t)\n",
}


def _synth_patterns():
    spec = importlib.util.spec_from_file_location("synth_patterns", HERE / "synth" / "conftest.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.make_patterns({**mod.PLANTED, **EXTRA}, noise=0.05)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _outputs(out: Path) -> dict[str, str]:
    """Everything explain wrote that the run decides (report, programs, each head's state)."""
    files = [out / "report.json", *sorted((out / "programs").iterdir()), *sorted((out / "state").iterdir())]
    return {f.relative_to(out).as_posix(): f.read_text() for f in files}


@pytest.fixture(scope="module")
def patterns(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("cluster") / "patterns.safetensors"
    _synth_patterns().save(str(path))
    return str(path)


@pytest.fixture(scope="module")
def local_run(patterns, tmp_path_factory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("local") / "out"
    explain_model(ExplainSettings(out=out, patterns=patterns, progress=False))
    return _outputs(out)


@pytest.fixture(scope="module")
def head_node(tmp_path_factory):
    """``ray start --head`` with 2 CPUs on a free port; stopped (with its workers) at the end."""
    port = _free_port()
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    subprocess.run([RAY, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                    "--disable-usage-stats"], check=True, capture_output=True, env=env, timeout=180)
    yield f"127.0.0.1:{port}"
    _stop_head(port)


def _cmdlines() -> dict[int, bytes]:
    out = {}
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit():
                out[int(d.name)] = (d / "cmdline").read_bytes()
        except OSError:
            continue
    return out


def _stop_head(port: int) -> None:
    """Stop the Ray instance this module started (not ``ray stop``: that stops every Ray instance
    on the machine): the processes of its session directory, and their children (the workers)."""
    import re

    procs = _cmdlines()
    gcs = [c for c in procs.values() if b"gcs_server" in c and f"--gcs_server_port={port}".encode() in c]
    found = re.search(rb"session_[0-9_-]+", gcs[0]) if gcs else None
    if found is None:
        return
    ours = {pid for pid, c in procs.items() if found.group() in c}
    for pid in list(ours):
        try:
            kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            kids = []
        ours |= {int(k) for k in kids}
    for pid in ours:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            continue
    current = Path("/tmp/ray/ray_current_cluster")  # what a bare ray.init() would join next
    if current.is_file() and current.read_text().strip().endswith(f":{port}"):
        current.unlink(missing_ok=True)


def test_explain_on_a_local_ray_instance_equals_the_local_run(patterns, local_run, tmp_path):
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        out = tmp_path / "out"
        explain_model(ExplainSettings(out=out, patterns=patterns, progress=False, cluster="ray"))
    finally:
        ray.shutdown()
    assert _outputs(out) == local_run  # the same programs and numbers, byte for byte


def _task_pids() -> list[int]:
    """Worker processes running a head's search now (Ray titles a busy worker ``ray::<task>``)."""
    pids = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and (d / "cmdline").read_bytes().startswith(b"ray::_search_task"):
                pids.append(int(d.name))
        except OSError:
            continue
    return pids


def test_a_worker_killed_mid_run_is_retried_and_the_run_finishes(head_node, patterns, local_run, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "headcode.cli", "explain", "--patterns", patterns, "--out", str(out),
           "--cluster", f"ray:{head_node}", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed, deadline = None, time.time() + 300
    while killed is None and proc.poll() is None and time.time() < deadline:
        pids = _task_pids()
        if pids:
            os.kill(pids[0], signal.SIGKILL)
            killed = pids[0]
        time.sleep(0.02)
    log = proc.communicate(timeout=600)[0]
    assert killed is not None, f"no head's task was seen running: {log[-2000:]}"
    assert proc.returncode == 0, log[-2000:]
    assert _outputs(out) == local_run


SERVE_PORT: dict[str, int] = {}


@contextmanager
def _serving(head_node: str, model_dir: str, tmp_path: Path) -> Iterator[str]:
    """``headcode serve MODEL --replicas 2`` on the cluster at ``head_node``: its OpenAI base URL once
    both replicas answer; interrupted (Ctrl-C: the deployment is deleted) at the end. One port per
    cluster: Serve's HTTP proxy keeps the port it was first started on."""
    port = SERVE_PORT.setdefault(head_node, _free_port())
    cmd = [sys.executable, "-m", "headcode.cli", "serve", model_dir, "--replicas", "2", "--cluster",
           f"ray:{head_node}", "--port", str(port), "--name", "tiny", "--max-tokens", "64"]
    log = open(tmp_path / "serve.log", "w+")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 300
        while "serving 2 replicas" not in Path(log.name).read_text():
            assert proc.poll() is None and time.time() < deadline, Path(log.name).read_text()[-2000:]
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_serve_two_replicas_answers_the_openai_client(head_node, tiny_llama_dir, tmp_path):
    openai = pytest.importorskip("openai")
    sys.path.insert(0, str(HERE))
    from test_serve import continuer

    with _serving(head_node, tiny_llama_dir, tmp_path) as url:
        client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=120)
        assert [m.id for m in client.models.list().data] == ["tiny"]
        reference = continuer(tiny_llama_dir, None)
        prompts = ["Tom liked to", "The next day, it", "His friend Lily", "They played until"]
        for p in prompts:
            r = client.completions.create(model="tiny", prompt=p, max_tokens=8, temperature=0)
            assert r.choices[0].text == reference(p, 8)
        with urllib.request.urlopen(url.removesuffix("/v1") + "/health", timeout=30) as h:
            assert json.load(h)
        bad = urllib.request.Request(f"{url}/completions", data=b'{"model": "tiny"}', method="POST",
                                     headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(bad, timeout=30)
        assert 400 <= e.value.code < 500  # a bad request gets a 4xx through the proxy too


def _replica_pids() -> list[int]:
    """Ray Serve's replica processes of the headcode deployment (titled ``ray::ServeReplica:APP:NAME``)."""
    pids = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and (d / "cmdline").read_bytes().startswith(b"ray::ServeReplica:headcode"):
                pids.append(int(d.name))
        except OSError:
            continue
    return pids


@pytest.mark.slow
def test_serve_loses_no_request_when_a_replica_is_killed_under_load(head_node, tiny_llama_dir, tmp_path):
    """A stream of requests from 4 clients; one replica's process is killed (SIGKILL) in the middle.
    Every request gets the right answer: Ray Serve routes the requests after the kill to the other
    replica (and restarts the dead one); a request caught inside the killed replica would fail with
    a 5xx, which the openai client retries (``max_retries=5``; its retries are counted and printed:
    none were needed in the runs on the 2-core machine, so there Serve's routing is what kept them)."""
    import logging

    openai = pytest.importorskip("openai")
    sys.path.insert(0, str(HERE))
    from test_serve import continuer

    prompts = ["Tom liked to", "The next day, it", "His friend Lily", "They played until"]
    reference = continuer(tiny_llama_dir, None)
    want = {p: reference(p, 8) for p in prompts}
    retries: list[str] = []  # the openai client's own log of each retry it made

    class Retries(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("Retrying request"):
                retries.append(record.getMessage())

    log, handler = logging.getLogger("openai"), Retries()
    log.addHandler(handler)
    level = log.level
    log.setLevel(logging.INFO)
    answers: list[tuple[str, str | BaseException]] = []
    killed: list[int] = []
    stop = threading.Event()
    with _serving(head_node, tiny_llama_dir, tmp_path) as url:
        client = openai.OpenAI(base_url=url, api_key="none", max_retries=5, timeout=120)

        def send(i: int) -> None:
            while not stop.is_set():
                p = prompts[(i + len(answers)) % len(prompts)]
                try:
                    r = client.completions.create(model="tiny", prompt=p, max_tokens=8, temperature=0)
                    answers.append((p, r.choices[0].text))
                except Exception as e:  # noqa: BLE001 - a lost request, reported below
                    answers.append((p, e))

        threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        try:
            deadline = time.time() + 240
            while len(answers) < 8 and time.time() < deadline:
                time.sleep(0.05)
            pids = _replica_pids()
            assert len(pids) == 2, pids
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])
            after = len(answers)
            while len(answers) < after + 24 and time.time() < deadline:
                time.sleep(0.05)
        finally:
            stop.set()
            for t in threads:
                t.join(180)
            log.removeHandler(handler)
            log.setLevel(level)
    lost = [(p, a) for p, a in answers if isinstance(a, BaseException)]
    assert killed and not lost, lost[:3]
    assert len(answers) >= 32 and all(a == want[p] for p, a in answers)
    print(f"{len(answers)} requests answered, {len(retries)} retried by the client")


# evaluate / select --cluster: the independent forward passes as Ray tasks -----------------------
@pytest.fixture(scope="module")
def local_ray():
    """A local Ray instance for the commands run in this process (``--cluster ray`` joins it)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny_plan(tiny_llama_dir, tmp_path_factory):
    """A compiled program for every head of the tiny Llama (GQA), and a corpus file."""
    from headcode.compiler import save_plan
    from headcode.runtime.model.loading import load_model
    from tests.runtime.test_evaluate import PARAGRAPHS
    from tests.runtime.test_select import full_plan

    d = tmp_path_factory.mktemp("plan")
    save_plan(full_plan(load_model(tiny_llama_dir)), d / "full.safetensors")
    (d / "c.txt").write_text("\n\n".join(f"{p} ({i})" for i, p in enumerate(PARAGRAPHS * 3)))
    (d / "more.txt").write_text("\n\n".join(" ".join(p.split()[::-1]) for p in PARAGRAPHS * 2))  # a second test set
    return d


def _run(args: list[str]) -> None:
    from headcode.cli import main

    assert main(args) == 0


@pytest.fixture
def submitted(monkeypatch) -> dict[str, int]:
    """Tasks the runs send to Ray, by function: that a run with --cluster ran its passes there."""
    from headcode.cluster.evaluate import RayExecutor

    counts: dict[str, int] = {}
    remote = RayExecutor._remote

    def counting(self, fn):
        task = remote(self, fn)

        class Counted:
            def remote(self, *a):
                counts[fn.__name__] = counts.get(fn.__name__, 0) + 1
                return task.remote(*a)
        return Counted()

    monkeypatch.setattr(RayExecutor, "_remote", counting)
    return counts


def test_evaluate_on_ray_equals_the_local_run(tiny_llama_dir, tiny_plan, local_ray, submitted, tmp_path):
    """Heads chosen, perplexities of every variant and test set, QA scores: equal to the last digit."""
    args = ["evaluate", tiny_llama_dir, "--surrogates", str(tiny_plan / "full.safetensors"), "--fraction", "0.25",
            "--text", str(tiny_plan / "c.txt"), "--test-text", str(tiny_plan / "more.txt"), "--curve", "0,0.25,0.5",
            "--qa", "arc_easy", "--qa-limit", "4", "--measure-texts", "3", "--rounds", "2", "--batch-size", "2",
            "--quiet"]
    reports = {}
    for name, extra in (("local", []), ("ray", ["--cluster", "ray"])):
        _run(args + ["--out", str(tmp_path / f"{name}.json"), "--plot", str(tmp_path / f"{name}.png")] + extra)
        r = json.loads((tmp_path / f"{name}.json").read_text())
        reports[name] = {k: v for k, v in r.items() if k not in ("seconds", "plot", "plots")}
    local, ray = reports["local"], reports["ray"]
    assert len(local["heads_replaced"]) == 2 and local["qa"]["arc_easy"]["n"] == 4
    assert len(local["test_sets"]) == 2 and len(local["curve"]) == 3
    assert ray == local  # the same heads, perplexities and QA numbers, to the last digit
    # every measured loss, perplexity and QA score came from Ray: 2 test sets x (base + 5 variants x 2 shares),
    # each in one shard of 4 batches or less; QA: base + 3 variants
    assert submitted["_set_loss"] >= 2 * 3 and submitted["_batch_logprobs"] >= 22 and submitted["_item_logprobs"] >= 4


@pytest.mark.parametrize("whole_groups", [False, True])
def test_select_on_ray_equals_the_local_run(tiny_llama_dir, tiny_plan, local_ray, submitted, tmp_path, whole_groups):
    args = ["select", tiny_llama_dir, "--surrogates", str(tiny_plan / "full.safetensors"), "--fraction", "0.5",
            "--text", str(tiny_plan / "c.txt"), "--measure-texts", "3", "--rounds", "2", "--quiet"]
    args += ["--whole-groups"] if whole_groups else []
    reports = {}
    for name, extra in (("local", []), ("ray", ["--cluster", "ray"])):
        _run(args + ["--out", str(tmp_path / f"{name}.safetensors")] + extra)
        r = json.loads((tmp_path / f"{name}.json").read_text())
        reports[name] = {k: v for k, v in r.items() if k != "plan"}
    assert len(reports["local"]["heads"]) == 4
    assert reports["ray"] == reports["local"]  # the same heads, measured losses and select loss
    assert submitted["_set_loss"] >= 3  # the base and at least two candidates, in each of two rounds
