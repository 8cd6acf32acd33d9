"""``headcode serve`` on loopback, talked to with the ``openai`` client: each answer equals what
``generate`` gives on the same model with the same plan, streaming equals non-streaming,
concurrent requests each get their own answer, bad requests get a 4xx and the server goes on."""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from headcode.api import from_pretrained
from headcode.cli import main
from headcode.compiler import SurrogatePlan, compile_source, save_plan
from headcode.compiler.tokens import vocabulary_pieces
from headcode.runtime.model.loading import load_model

openai = pytest.importorskip("openai")

SOURCES = {
    "L0.H0": "def attend(t):\n    return 0.7 * previous(t, 1) + 0.3 * first(t)\n",
    "L0.H1": "def attend(t):\n    return same_token(t) + 0.2 * uniform(t)\n",
    "L1.H2": "def attend(t):\n    return 0.6 * decay(t, 0.5) + 0.4 * first(t)\n",
}
TEMPLATE = ("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
PROMPTS = ["Once upon a time", "Tom saw a big red ball", "Lily laughed.", "The next day, it rained"]


@pytest.fixture(scope="module")
def plan_path(tiny_llama_dir, tmp_path_factory):
    lm = load_model(tiny_llama_dir)
    pieces = vocabulary_pieces(lm.tokenizer)
    heads = {k: compile_source(src, pieces, lm.fingerprint, name=k, model_id=lm.name, strict=True)
             for k, src in SOURCES.items()}
    return str(save_plan(SurrogatePlan(lm.name, lm.fingerprint, heads),
                         tmp_path_factory.mktemp("serve") / "plan.safetensors"))


def continuer(model_dir: str, plan: str | None):
    """Greedy continuation by ``generate`` on the model with ``plan``, in this process."""
    model = from_pretrained(model_dir, surrogates=plan)
    tok = model.headcode_tokenizer

    def continue_(text: str, n: int) -> str:
        ids = torch.tensor([tok(text)["input_ids"]])
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                 do_sample=False, pad_token_id=tok.pad_token_id)
        return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)

    return continue_


@pytest.fixture(scope="module")
def reference(tiny_llama_dir, plan_path):
    return continuer(tiny_llama_dir, plan_path)


@pytest.fixture(scope="module")
def server(tiny_llama_dir, plan_path, tmp_path_factory):
    tpl = tmp_path_factory.mktemp("tpl") / "chat.jinja"
    tpl.write_text(TEMPLATE)
    cmd = [sys.executable, "-m", "headcode.cli", "serve", tiny_llama_dir, "--surrogates", plan_path,
           "--port", "0", "--name", "tiny-sym", "--chat-template", str(tpl), "--max-tokens", "64"]
    err = open(tmp_path_factory.mktemp("log") / "stderr.txt", "w+")  # a file: a full pipe would block the server
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    line = proc.stdout.readline() if sel.select(timeout=120) else ""
    if "http://" not in line:
        proc.kill()
        err.seek(0)
        pytest.fail(f"the server did not start: {line!r} {err.read()[-2000:]}")
    url = line.split("at ", 1)[1].strip()
    client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=60)
    yield proc, client, url
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    err.close()


def test_models_names_the_plan(server, plan_path):
    _, client, _ = server
    models = client.models.list().data
    assert [m.id for m in models] == ["tiny-sym"]
    info = models[0].model_extra["headcode"]
    assert info["surrogates"] == plan_path and sorted(info["heads_replaced"]) == sorted(SOURCES)
    assert info["total_heads"] == 8


def test_completion_equals_generate(server, reference):
    _, client, _ = server
    r = client.completions.create(model="tiny-sym", prompt=PROMPTS[0], max_tokens=12, temperature=0)
    assert r.choices[0].text == reference(PROMPTS[0], 12)
    assert r.usage.completion_tokens <= 12 and r.usage.prompt_tokens > 0
    assert r.choices[0].finish_reason in ("stop", "length")


def test_sampling_with_a_seed_repeats(server):
    _, client, _ = server
    texts = [client.completions.create(model="tiny-sym", prompt=PROMPTS[3], max_tokens=12, temperature=0.9,
                                       top_p=0.95, seed=seed).choices[0].text for seed in (3, 3, 4)]
    assert texts[0] == texts[1] and texts[0] != texts[2]


def test_streaming_equals_non_streaming(server):
    _, client, _ = server
    whole = client.completions.create(model="tiny-sym", prompt=PROMPTS[1], max_tokens=10, temperature=0)
    chunks = list(client.completions.create(model="tiny-sym", prompt=PROMPTS[1], max_tokens=10,
                                            temperature=0, stream=True))
    assert len(chunks) >= 2
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    counted = list(client.completions.create(model="tiny-sym", prompt=PROMPTS[1], max_tokens=10, temperature=0,
                                             stream=True, stream_options={"include_usage": True}))
    assert counted[-1].usage.completion_tokens == whole.usage.completion_tokens and not counted[-1].choices


def test_stop_string_is_cut(server, reference):
    _, client, _ = server
    full = reference(PROMPTS[2], 16)
    stop = full[len(full) // 2: len(full) // 2 + 2]
    assert stop.strip(), "the reference text should have a stop string to cut at"
    r = client.completions.create(model="tiny-sym", prompt=PROMPTS[2], max_tokens=16, temperature=0, stop=[stop])
    assert r.choices[0].text == full[: full.index(stop)] and r.choices[0].finish_reason == "stop"
    s = client.completions.create(model="tiny-sym", prompt=PROMPTS[2], max_tokens=16, temperature=0,
                                  stop=[stop], stream=True)
    assert "".join(c.choices[0].text for c in s) == r.choices[0].text


def test_chat_uses_the_chat_template(server, reference):
    _, client, _ = server
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who is Tom?"}]
    r = client.chat.completions.create(model="tiny-sym", messages=msgs, max_tokens=8, temperature=0)
    prompt = "<|system|>Be brief.\n<|user|>Who is Tom?\n<|assistant|>"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == reference(prompt, 8)
    chunks = list(client.chat.completions.create(model="tiny-sym", messages=msgs, max_tokens=8, temperature=0,
                                                 stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == r.choices[0].message.content


def test_four_concurrent_requests_each_get_their_own_answer(server, reference, tiny_llama_dir):
    _, client, _ = server

    def ask(p: str) -> str:
        return client.completions.create(model="tiny-sym", prompt=p, max_tokens=12, temperature=0).choices[0].text

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(ask, PROMPTS))
    assert answers == [reference(p, 12) for p in PROMPTS]
    base = continuer(tiny_llama_dir, None)
    assert answers != [base(p, 12) for p in PROMPTS]  # the plan is in use


def test_bad_requests_get_4xx_and_the_server_goes_on(server):
    proc, client, url = server
    with pytest.raises(openai.BadRequestError, match="prompt"):
        client.completions.create(model="tiny-sym", max_tokens=4, prompt=None)
    with pytest.raises(openai.BadRequestError, match="n must be 1"):
        client.completions.create(model="tiny-sym", prompt="Tom", max_tokens=4, n=2)
    with pytest.raises(openai.BadRequestError, match="more than this server allows"):
        client.completions.create(model="tiny-sym", prompt="Tom", max_tokens=1000)
    with pytest.raises(openai.NotFoundError, match="tiny-sym"):
        client.completions.create(model="gpt-4", prompt="Tom", max_tokens=4)
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model="tiny-sym", messages=[])
    req = urllib.request.Request(f"{url}/completions", data=b"{not json", method="POST",
                                 headers={"content-type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as bad:
        urllib.request.urlopen(req, timeout=30)
    assert bad.value.code == 400 and "error" in json.loads(bad.value.read())
    assert proc.poll() is None
    r = client.completions.create(model="tiny-sym", prompt="Tom", max_tokens=3, temperature=0)
    assert r.choices[0].text is not None


def test_a_bad_plan_fails_at_start_with_one_line(tiny_llama_dir, tmp_path, capsys):
    missing = tmp_path / "nope.safetensors"
    assert main(["serve", tiny_llama_dir, "--surrogates", str(missing), "--port", "0"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nope.safetensors" in err
    (tmp_path / "junk.safetensors").write_bytes(b"not a plan")
    assert main(["serve", tiny_llama_dir, "--surrogates", str(tmp_path / "junk.safetensors"), "--port", "0"]) == 1
    assert "cannot read surrogate plan" in capsys.readouterr().err
    assert main(["serve", str(tmp_path / "no-model"), "--port", "0"]) == 1
    assert capsys.readouterr().err.count("\n") == 1


def test_a_too_long_streaming_request_is_a_400_before_any_200(server):
    """Issue 20: the context check ran inside the stream, after the 200 was sent (an empty body)."""
    proc, client, url = server
    long = "Tom saw a ball. " * 2000
    with pytest.raises(openai.BadRequestError, match="context"):
        client.completions.create(model="tiny-sym", prompt=long, max_tokens=8, stream=True)
    with pytest.raises(openai.BadRequestError, match="context"):
        client.chat.completions.create(model="tiny-sym", messages=[{"role": "user", "content": long}],
                                       max_tokens=8, stream=True)
    assert proc.poll() is None


def _tiny_app(model_dir: str, **settings):
    """``(app, generator)``: the base tiny model behind ``build_app`` over a real batching engine."""
    from transformers import DynamicCache

    from headcode.runtime.serving.engine import EngineSettings
    from headcode.runtime.serving.generator import Generator
    from headcode.server import ServedModel, build_app

    lm = load_model(model_dir)
    gen = Generator(lm.model, lm.tokenizer, lambda: DynamicCache(config=lm.model.config),
                    settings=EngineSettings(**settings))
    return build_app(gen, ServedModel(id="m", base_model="m", max_tokens=400), drain_timeout=5), gen


def test_an_error_mid_stream_sends_an_error_event_then_done(tiny_llama_dir, monkeypatch):
    """A fault after the 200 (a decoding step that raises): the stream carries the text so far, one
    OpenAI-style error event, then [DONE]; the engine drops the failed rows and goes on."""
    from fastapi.testclient import TestClient

    app, gen = _tiny_app(tiny_llama_dir)
    real = gen.engine._step

    def broken() -> None:
        raise RuntimeError("the device went away")

    with TestClient(app) as c:
        monkeypatch.setattr(gen.engine, "_step", broken)  # the prefill's token comes, the first step fails
        r = c.post("/v1/completions", json={"model": "m", "prompt": "Tom saw", "max_tokens": 8, "stream": True})
        monkeypatch.setattr(gen.engine, "_step", real)
        again = c.post("/v1/completions", json={"model": "m", "prompt": "Tom saw", "max_tokens": 3, "temperature": 0})
    events = [ln[len("data: "):] for ln in r.text.splitlines() if ln.startswith("data: ")]
    assert r.status_code == 200 and events[-1] == "[DONE]"
    assert all("choices" in json.loads(e) for e in events[:-2])
    err = json.loads(events[-2])["error"]
    assert err["type"] == "server_error" and "device went away" in err["message"]
    assert again.status_code == 200 and again.json()["usage"]["completion_tokens"] == 3


def test_a_full_queue_is_a_429_and_metrics_count_it(tiny_llama_dir):
    """Issue 20: past ``max_queue`` requests running or waiting, a request is refused at once (429
    through the app, ``Overloaded`` from the generator) and the held one goes on; /metrics reports
    outcomes, queue, tokens and the latency histograms in Prometheus' text format."""
    import queue

    from fastapi.testclient import TestClient

    from headcode.runtime.serving.requests import GenerationRequest, Overloaded

    app, gen = _tiny_app(tiny_llama_dir, max_batch=1, max_queue=1)
    with TestClient(app) as c:
        events = queue.SimpleQueue()
        held = gen.submit(GenerationRequest(gen.encode("Tom saw"), max_tokens=400, temperature=0.0), events.put)
        assert events.get(timeout=60).kind == "token"  # running: the one place is taken
        with pytest.raises(Overloaded, match="retry later"):
            gen.submit(GenerationRequest(gen.encode("Tom"), max_tokens=4, temperature=0.0), events.put)
        r = c.post("/v1/completions", json={"model": "m", "prompt": "Tom", "max_tokens": 4, "stream": True})
        assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"
        held.cancel()
        while (ev := events.get(timeout=60)).kind == "token":
            pass
        assert ev.finish == "cancelled"
        ok = c.post("/v1/completions", json={"model": "m", "prompt": "Tom", "max_tokens": 3, "temperature": 0})
        assert ok.status_code == 200
        text = c.get("/metrics").text

    def value(name: str) -> float:
        return sum(float(ln.split()[-1]) for ln in text.splitlines() if ln.startswith(name + " ")
                   or ln.startswith(name + "{"))

    assert value('headcode_requests_total{outcome="rejected"}') == 2
    assert value('headcode_requests_total{outcome="ok"}') == 1
    assert value('headcode_requests_total{outcome="cancelled"}') == 1
    assert value("headcode_queue_length") == 0 and value("headcode_time_to_first_token_seconds_count") == 2
    assert 3 < value("headcode_generated_tokens_total") < 400
    assert value("headcode_time_per_token_seconds_count") >= 2


# --- many users at once (continuous batching), faults and load ---------------------------------------

STORY_WORDS = ("Once upon a time, there was a little cat named Tom. Tom liked to play in the park. One day, Tom "
               "saw a big red ball! He ran to the ball and kicked it. His friend Lily laughed.").split()


def _streamed(client, model: str, prompt: str, **kw) -> tuple[str, str | None]:
    text, finish = "", None
    for c in client.completions.create(model=model, prompt=prompt, stream=True, **kw):
        text += c.choices[0].text
        finish = c.choices[0].finish_reason or finish
    return text, finish


def test_sixteen_concurrent_streams_with_their_own_settings_each_equal_their_run_alone(server, reference):
    _, client, _ = server
    asks = [(" ".join(STORY_WORDS[: 2 + (7 * i) % 30]), 4 + (5 * i) % 27, i % 4 == 3) for i in range(16)]

    def ask(a):
        prompt, n, sampled = a
        kw = dict(temperature=0.8, top_p=0.9, seed=len(prompt)) if sampled else dict(temperature=0)
        return _streamed(client, "tiny-sym", prompt, max_tokens=n, **kw)

    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(ask, asks))
    for (prompt, n, sampled), (text, finish) in zip(asks, together):
        assert finish in ("stop", "length")
        if sampled:  # the same seed served alone gives the same text
            assert text == ask((prompt, n, sampled))[0]
        else:
            assert text == reference(prompt, n)


@pytest.fixture(scope="module")
def app_server(tiny_llama_dir, plan_path):
    """``create_app`` in this process under uvicorn (a thread): ``start(**settings) -> (client, url, app)``."""
    import socket
    import threading
    import time

    import uvicorn

    from headcode.pipeline.serve import ServeSettings, create_app

    running = []

    def start(**kw):
        app = create_app(ServeSettings(model=tiny_llama_dir, surrogates=plan_path, name="tiny-sym", **kw))
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        srv = uvicorn.Server(uvicorn.Config(app, log_level="error"))
        thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        while not srv.started:
            time.sleep(0.01)
        running.append((srv, thread))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
        return openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=60), url, app

    yield start
    for srv, thread in running:
        srv.should_exit = True
        thread.join(30)


def _metric(url: str, name: str) -> float:
    text = urllib.request.urlopen(url.replace("/v1", "/metrics"), timeout=10).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def test_a_client_that_disconnects_frees_its_row_at_once(app_server, monkeypatch):
    import time

    client, url, app = app_server(max_batch=1, max_queue=1, max_tokens=400)
    engine, step = app.state.generator.engine, app.state.generator.engine._step

    def slow_step() -> None:  # 400 tokens take ~8 s: the stream is surely still running when it closes
        time.sleep(0.02)
        step()

    monkeypatch.setattr(engine, "_step", slow_step)
    stream = client.completions.create(model="tiny-sym", prompt="Tom", max_tokens=400, temperature=0, stream=True)
    next(iter(stream))
    with pytest.raises(openai.RateLimitError, match="capacity"):  # the one row is taken, no queue
        client.completions.create(model="tiny-sym", prompt="Tom", max_tokens=2)
    stream.close()
    t0 = time.monotonic()
    while True:  # the row is freed as soon as the server sees the closed connection
        try:
            r = client.completions.create(model="tiny-sym", prompt="Lily", max_tokens=3, temperature=0)
            break
        except openai.RateLimitError:
            assert time.monotonic() - t0 < 5, "the disconnected stream kept its row"
            time.sleep(0.02)
    assert r.choices[0].finish_reason in ("stop", "length")
    assert _metric(url, 'headcode_requests_total{outcome="cancelled"}') == 1
    assert _metric(url, "headcode_generated_tokens_total") < 300  # the 400 tokens were never made


def _post(url: str, body: dict | bytes) -> tuple[int, str]:
    """``(status, body text)`` of a POST (a 4xx/5xx too), read to its end."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST", headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_bad_too_long_and_over_capacity_requests_interleaved_with_good_ones(app_server, reference, monkeypatch):
    import time

    client, url, app = app_server(max_batch=2, max_queue=3, max_tokens=400)
    engine, step = app.state.generator.engine, app.state.generator.engine._step

    def slow_step() -> None:  # 40 tokens take > 1 s: the refusals below meet all three in the engine
        time.sleep(0.03)
        step()

    monkeypatch.setattr(engine, "_step", slow_step)
    good = [(PROMPTS[i], 40) for i in range(3)]  # two rows run, one waits: the queue is then full
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(_streamed, client, "tiny-sym", p, max_tokens=n, temperature=0) for p, n in good]
        for _ in range(500):  # until all three are in
            if _metric(url, "headcode_running_requests") + _metric(url, "headcode_queue_length") >= 3:
                break
            time.sleep(0.01)
        over = _post(f"{url}/completions", {"model": "tiny-sym", "prompt": "Tom", "max_tokens": 2})
        too_long = _post(f"{url}/completions", {"model": "tiny-sym", "prompt": "Tom " * 300, "max_tokens": 300,
                                                "stream": True})
        malformed = _post(f"{url}/completions", b"{not json")
        unknown = _post(f"{url}/chat/completions", {"model": "gpt-4", "messages": []})
        results = [f.result() for f in futures]
    assert over[0] == 429 and "capacity" in json.loads(over[1])["error"]["message"]
    assert too_long[0] == 400 and "context" in json.loads(too_long[1])["error"]["message"]  # before any 200
    assert malformed[0] == 400 and unknown[0] == 400
    assert [t for t, _ in results] == [reference(p, n) for p, n in good]
    health = json.loads(urllib.request.urlopen(url.replace("/v1", "/health"), timeout=10).read())
    assert health["status"] == "ok" and health["running"] == 0


def test_an_error_mid_stream_is_an_error_event_then_done(app_server, monkeypatch):
    import time

    client, url, app = app_server(request_timeout=0.05, max_tokens=400)
    engine, step = app.state.generator.engine, app.state.generator.engine._step

    def slow_step() -> None:  # every step outlasts the 0.05 s limit, however fast the machine
        time.sleep(0.1)
        step()

    monkeypatch.setattr(engine, "_step", slow_step)
    status, text = _post(f"{url}/completions", {"model": "tiny-sym", "prompt": "Tom", "max_tokens": 400,
                                                "stream": True})
    assert status == 200
    events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["code"] == 504 and "limit" in error["message"]
    with pytest.raises(openai.APIError, match="limit"):  # the openai client raises on it
        _streamed(client, "tiny-sym", "Tom", max_tokens=400)
    with pytest.raises(openai.APIStatusError) as whole:
        client.completions.create(model="tiny-sym", prompt="Tom", max_tokens=400)
    assert whole.value.status_code == 504


def test_shutdown_under_load_loses_no_accepted_request_silently(tiny_llama_dir, plan_path, tmp_path):
    import signal
    import threading

    cmd = [sys.executable, "-m", "headcode.cli", "serve", tiny_llama_dir, "--surrogates", plan_path, "--port", "0",
           "--name", "tiny-sym", "--max-tokens", "500", "--drain-timeout", "10"]
    err = open(tmp_path / "stderr.txt", "w+")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = proc.stdout.readline().split("at ", 1)[1].strip()
    client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=60)
    started = threading.Barrier(9)

    def ask(i: int):
        got, finish = "", None
        try:
            stream = client.completions.create(model="tiny-sym", prompt=PROMPTS[i % 4], stream=True,
                                               max_tokens=6 if i % 2 else 500, temperature=0)
            for k, c in enumerate(stream):
                if k == 0:
                    started.wait(30)
                got += c.choices[0].text
                finish = c.choices[0].finish_reason or finish
            return "finished", finish
        except openai.APIError as e:  # an error event (the drain's deadline) or a refusal: said, not silent
            return "error", str(e)

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(ask, i) for i in range(8)]
        started.wait(60)
        proc.send_signal(signal.SIGTERM)
        outcomes = [f.result() for f in futures]
    assert proc.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has drained
    err.seek(0)
    assert "Traceback" not in err.read()
    err.close()
    for kind, detail in outcomes:
        assert (kind == "finished" and detail in ("stop", "length")) or (kind == "error" and "shut down" in detail)
    assert any(kind == "finished" for kind, _ in outcomes)
