"""The openai backend through the real openai client against a local canned server."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from headcode.errors import HeadcodeError
from headcode.synth.llm import LLMOptions, OpenAIBackend
from headcode.synth.ranking import rank_head

REPLIES = [
    "Here are three:\n```python\ndef attend(t):\n    return current(t)\n```\n"
    "```python\nimport os\ndef attend(t):\n    os.system('true')\n```\n"
    "```python\ndef attend(t):\n    return 0.5 * previous(t, 1) + 0.5 * first(t)\n```\n",
    "Better:\n```python\ndef attend(t):\n    return 0.7 * previous(t, 1) + 0.3 * first(t)\n```\n",
]


class Handler(BaseHTTPRequestHandler):
    requests: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Handler.requests.append((self.path, body))
        content = REPLIES[min(len(body["messages"]) // 2 - 1, len(REPLIES) - 1)]
        out = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                          "choices": [{"index": 0, "finish_reason": "stop",
                                       "message": {"role": "assistant", "content": content}}],
                          "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *a):
        pass


@pytest.fixture
def server():
    Handler.requests = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()
    srv.server_close()


def test_openai_backend_writes_refines_and_ranks(server, planted):
    b = OpenAIBackend(LLMOptions(base_url=server, model="canned", rounds=1, max_fit_texts=6), progress=False)
    b.prepare(planted, planted.heads)
    head = planted.heads[0]
    best, scored = rank_head(b, planted, head)
    assert best.source == "def attend(t):\n    return 0.7 * previous(t, 1) + 0.3 * first(t)\n"
    assert best.iou["test"] > 0.99
    paths = [p for p, _ in Handler.requests]
    assert paths == ["/v1/chat/completions"] * 2  # first prompt + one feedback round
    first, second = (body["messages"] for _, body in Handler.requests)
    assert "previous(t, k)" in first[-1]["content"] and "|" in first[-1]["content"]  # vocabulary + summary
    assert "furthest off" in second[-1]["content"] and second[-2]["role"] == "assistant"
    assert all("os.system" not in c.source for c in scored)  # refused in the sandbox, not ranked


def test_unreachable_endpoint_is_one_line_error(planted):
    b = OpenAIBackend(LLMOptions(base_url="http://127.0.0.1:9/v1", timeout_s=5), progress=False)
    b.prepare(planted, planted.heads)
    with pytest.raises(HeadcodeError) as e:
        b.propose(planted, planted.heads[0])
    msg = str(e.value)
    assert "cannot reach" in msg and "--backend offline" in msg and "\n" not in msg
