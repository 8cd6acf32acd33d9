"""Shared fixtures: tiny random GPT-2 and Llama (GQA) checkpoints that the tests build and
save themselves (no hub), a tiny byte-level BPE tokenizer trained here, and the real
default model (slow)."""

from __future__ import annotations

import os

import pytest

STORY = (
    "Once upon a time, there was a little cat named Tom. Tom liked to play in the park. "
    "One day, Tom saw a big red ball! He ran to the ball and kicked it. \"Look at me,\" said Tom. "
    "His friend Lily laughed. They played until the sun went down.\n\nThe next day, it rained. "
    "Tom and Lily stayed at home and read a book about a brave dog."
)


def make_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator([STORY] * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>",
                                   bos_token="<|endoftext|>", pad_token="<|endoftext|>")


def _save(model, tok, path):
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory, tiny_tokenizer):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tiny_tokenizer), n_positions=512, n_embd=64, n_layer=2, n_head=4)
    return _save(GPT2LMHeadModel(cfg), tiny_tokenizer, tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, tiny_tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512)
    return _save(LlamaForCausalLM(cfg), tiny_tokenizer, tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session", params=["gpt2", "llama"])
def tiny_dir(request, tiny_gpt2_dir, tiny_llama_dir):
    return tiny_gpt2_dir if request.param == "gpt2" else tiny_llama_dir


@pytest.fixture(scope="session")
def default_model():
    """The real bundled SmolLM2-135M (GGUF de-quantised once into the user cache)."""
    from headcode.runtime.model.loading import load_model

    return load_model("smollm2-135m")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cluster`` need Ray (the cluster extra): skipped, and said so, without it;
    ``make test-cluster`` installs it and checks the import before it runs them."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        skip = pytest.mark.skip(reason="Ray is not installed (the cluster extra): make test-cluster")
        for item in items:
            if "cluster" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _offline():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    yield


@pytest.fixture
def canned_chat():
    """A local OpenAI-style chat endpoint: ``url = canned_chat(reply)`` with ``reply(path, body) -> str``
    (the assistant's text); the servers stop after the test."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    servers = []

    def start(reply) -> str:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                content = reply(self.path, body)
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
                return None

        srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}/v1"

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()
