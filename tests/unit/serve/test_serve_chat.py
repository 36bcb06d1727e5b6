"""`/v1/chat/completions`: the conversation through the checkpoint tokenizer's chat template."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from fastapi import FastAPI
from serve_checkpoint import make_checkpoint
from test_serve_app import run, sse

from ml_playground.config.schema import ModelConfig, ServeConfig
from ml_playground.data.tokenizers import HuggingFaceTokenizer
from ml_playground.generate.service import (
    GenerationResult,
    GenerationSettings,
    LoadedModel,
    encode_messages,
    generate_from_ids,
    load_for_inference,
)
from ml_playground.model.gpt import GPT
from ml_playground.serve.app import create_app

MESSAGES = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "the king"},
]


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    """A char-tokenizer checkpoint: no chat template."""
    return load_for_inference(make_checkpoint(tmp_path_factory.mktemp("plain") / "ckpt"), "cpu")


@pytest.fixture(scope="module")
def chat(plain: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    """The same checkpoint with a chat-template HF tokenizer and a GPT of its vocabulary."""
    pytest.importorskip("transformers")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "finetune"))
    from tiny_hf import save_tiny_model

    folder = save_tiny_model(tmp_path_factory.mktemp("chat") / "hf", chat=True)
    tokenizer = HuggingFaceTokenizer.from_pretrained(str(folder))
    torch.manual_seed(0)
    config = ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=64)
    model = GPT(config.model_copy(update={"vocab_size": tokenizer.vocab_size}))
    with torch.no_grad():  # sharp logits: greedy text depends on the prompt
        for param in model.parameters():
            if param.dim() > 1:
                param.mul_(10.0)
    return replace(plain, model=model.eval(), tokenizer=tokenizer)


def post_chat(app: FastAPI, body: dict[str, Any]) -> httpx.Response:
    return run(app, lambda client: client.post("/v1/chat/completions", json=body))


def greedy_reply(loaded: LoadedModel, max_tokens: int) -> GenerationResult:
    ids = encode_messages(loaded, MESSAGES)
    settings = GenerationSettings(max_new_tokens=max_tokens, temperature=0.0)
    return generate_from_ids(loaded, [ids], settings)[0]


def test_a_chat_reply_continues_the_templated_conversation(chat: LoadedModel) -> None:
    app = create_app(chat, ServeConfig())
    body = {"messages": MESSAGES, "max_tokens": 8, "temperature": 0.0, "n": 2}
    response = post_chat(app, body)
    assert response.status_code == 200, response.text
    reply = response.json()
    assert reply["object"] == "chat.completion"
    assert reply["id"].startswith("chatcmpl-")
    expected = greedy_reply(chat, 8)
    assert [c["message"] for c in reply["choices"]] == [
        {"role": "assistant", "content": expected.text}
    ] * 2
    assert [c["index"] for c in reply["choices"]] == [0, 1]
    prompt_tokens = len(encode_messages(chat, MESSAGES))
    assert reply["usage"] == {
        "prompt_tokens": 2 * prompt_tokens,
        "completion_tokens": 2 * expected.completion_tokens,
        "total_tokens": 2 * (prompt_tokens + expected.completion_tokens),
    }


def test_a_streamed_chat_reply_sends_the_role_then_the_text(chat: LoadedModel) -> None:
    app = create_app(chat, ServeConfig())
    body = {"messages": MESSAGES, "max_tokens": 8, "temperature": 0.0, "stream": True}
    chunks = sse(post_chat(app, body))
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0]["choices"] == [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
         "finish_reason": None}
    ]  # fmt: skip
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[1:])
    assert text == greedy_reply(chat, 8).text
    assert chunks[-1]["choices"][0]["finish_reason"] in ("length", "stop")
    assert chunks[-1]["choices"][0]["delta"] == {}


def test_a_checkpoint_without_a_chat_template_refuses_chat(plain: LoadedModel) -> None:
    response = post_chat(create_app(plain, ServeConfig()), {"messages": MESSAGES})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "messages"
    assert error["message"].startswith("chat prompts need a tokenizer with a chat template")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
        ({"messages": MESSAGES, "prompt": "x"}, "prompt"),
    ],
)
def test_bad_chat_requests_name_the_parameter(
    chat: LoadedModel, body: dict[str, Any], param: str
) -> None:
    response = post_chat(create_app(chat, ServeConfig()), body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param
