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


class _FailingGenerator:
    """A generator whose stream breaks after one piece (a fault mid-generation)."""

    max_context = 1 << 20

    def encode(self, text: str) -> tuple[int, ...]:
        return (1, 2, 3)

    def check(self, req) -> None:
        return None

    def stream(self, req):
        yield "Once"
        raise RuntimeError("the device went away")


def test_an_error_mid_stream_sends_an_error_event_then_done():
    from fastapi.testclient import TestClient

    from headcode.server import ServedModel, build_app

    app = build_app(_FailingGenerator(), ServedModel(id="m", base_model="m"))
    with TestClient(app) as c:
        r = c.post("/v1/completions", json={"model": "m", "prompt": "x", "max_tokens": 4, "stream": True})
    events = [ln[len("data: "):] for ln in r.text.splitlines() if ln.startswith("data: ")]
    assert r.status_code == 200 and events[-1] == "[DONE]"
    assert json.loads(events[0])["choices"][0]["text"] == "Once"
    err = json.loads(events[-2])["error"]
    assert err["type"] == "server_error" and "device went away" in err["message"]


def test_a_full_queue_is_a_429_and_metrics_count_it(tiny_llama_dir, monkeypatch):
    """Issue 20: past ``max_queue`` requests waiting or running, a request is refused at once (429
    through the app, ``Overloaded`` from the generator) and the held ones still complete; /metrics
    reports outcomes, queue, tokens and the latency histograms in Prometheus' text format."""
    import threading

    from fastapi.testclient import TestClient

    from headcode.runtime.surrogate.serving import GenerationRequest, Generator, Overloaded
    from headcode.server import ServedModel, build_app

    lm = load_model(tiny_llama_dir)
    gen = Generator(lm.model, lm.tokenizer, max_queue=1)
    gate, real = threading.Event(), gen._run

    def held(*a, **kw):
        gate.wait(30)
        return real(*a, **kw)

    monkeypatch.setattr(gen, "_run", held)
    req = GenerationRequest(gen.encode("Tom saw"), max_tokens=4, temperature=0.0)
    first = gen.submit(req)
    with pytest.raises(Overloaded, match="retry later"):
        gen.submit(req)
    app = build_app(gen, ServedModel(id="m", base_model="m", max_tokens=8))
    with TestClient(app) as c:
        r = c.post("/v1/completions", json={"model": "m", "prompt": "Tom", "max_tokens": 4, "stream": True})
        assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"
        gate.set()
        assert len(first.result(30)) == 4
        ok = c.post("/v1/completions", json={"model": "m", "prompt": "Tom", "max_tokens": 3, "temperature": 0})
        assert ok.status_code == 200
        text = c.get("/metrics").text
    assert 'headcode_requests_total{outcome="rejected"} 2' in text
    assert 'headcode_requests_total{outcome="ok"} 2' in text and "headcode_generated_tokens_total 7" in text
    assert "headcode_queue_length 0" in text and 'headcode_time_to_first_token_seconds_count 2' in text
    gen.close()
