"""The openai backend through the real openai client against a local canned server."""

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


REQUESTS: list = []


@pytest.fixture
def server(canned_chat):
    REQUESTS.clear()

    def reply(path, body):
        REQUESTS.append((path, body))
        return REPLIES[min(len(body["messages"]) // 2 - 1, len(REPLIES) - 1)]

    return canned_chat(reply)


def test_openai_backend_writes_refines_and_ranks(server, planted):
    b = OpenAIBackend(LLMOptions(base_url=server, model="canned", rounds=1, max_fit_texts=6), progress=False)
    b.prepare(planted, planted.heads)
    head = planted.heads[0]
    best, scored = rank_head(b, planted, head)
    assert best.source == "def attend(t):\n    return 0.7 * previous(t, 1) + 0.3 * first(t)\n"
    assert best.iou["test"] > 0.99
    paths = [p for p, _ in REQUESTS]
    assert paths == ["/v1/chat/completions"] * 2  # first prompt + one feedback round
    first, second = (body["messages"] for _, body in REQUESTS)
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
