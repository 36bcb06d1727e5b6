"""The HTTP API through httpx against the real app on a tiny random-init checkpoint."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
import pytest
from fastapi import FastAPI
from serve_checkpoint import BLOCK_SIZE, make_checkpoint

from ml_playground.config.schema import ServeConfig
from ml_playground.generate.service import LoadedModel, load_for_inference
from ml_playground.serve.app import create_app

T = TypeVar("T")
PROMPT = "KING:"


def run(app: FastAPI, work: Callable[[httpx.AsyncClient], Awaitable[T]]) -> T:
    async def main() -> T:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await work(client)

    return asyncio.run(main())


def post(app: FastAPI, body: Any, **kwargs: Any) -> httpx.Response:
    return run(app, lambda client: client.post("/v1/completions", json=body, **kwargs))


def sse(response: httpx.Response) -> list[dict[str, Any]]:
    """Parse a server-sent-events body strictly: `data: ...` events, ending in [DONE]."""
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.text.endswith("\n\n")
    events = response.text[:-2].split("\n\n")
    assert all(event.startswith("data: ") for event in events)
    assert events[-1] == "data: [DONE]"
    return [json.loads(event.removeprefix("data: ")) for event in events[:-1]]


def streamed_texts(chunks: list[dict[str, Any]]) -> dict[int, str]:
    texts: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
    return texts


def assert_completion(body: dict[str, Any], n_choices: int) -> None:
    assert body["object"] == "text_completion"
    assert body["id"].startswith("cmpl-")
    assert isinstance(body["created"], int)
    assert body["model"] == "tiny"
    assert [c["index"] for c in body["choices"]] == list(range(n_choices))
    for choice in body["choices"]:
        assert set(choice) == {"text", "index", "logprobs", "finish_reason"}
        assert choice["logprobs"] is None
        assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    """A tiny random-init checkpoint (char tokenizer), saved and loaded back as a user would."""
    return load_for_inference(make_checkpoint(tmp_path_factory.mktemp("serve") / "best"), "cpu")


@pytest.fixture
def app(loaded: LoadedModel) -> FastAPI:
    return create_app(loaded, ServeConfig(max_tokens_cap=64))


def test_health_and_models_name_the_checkpoint(app: FastAPI, loaded: LoadedModel) -> None:
    health = run(app, lambda client: client.get("/health"))
    assert health.status_code == 200
    info = health.json()
    assert info["status"] == "ok"
    assert info["model"] == "tiny"
    assert info["checkpoint"] == str(loaded.checkpoint.path)
    assert info["iter"] == 7
    assert info["block_size"] == BLOCK_SIZE

    models = run(app, lambda client: client.get("/v1/models")).json()
    assert models["object"] == "list"
    [card] = models["data"]
    assert card["id"] == "tiny"
    assert card["object"] == "model"
    assert card["owned_by"] == "ml-playground"
    assert run(app, lambda client: client.get("/v1/models/tiny")).json()["id"] == "tiny"
    missing = run(app, lambda client: client.get("/v1/models/gpt-4"))
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"


def test_the_playground_page_is_served(app: FastAPI) -> None:
    page = run(app, lambda client: client.get("/"))
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "/v1/completions" in page.text
    assert "/health" in page.text


def test_completion_has_the_openai_shape_and_counts_tokens(app: FastAPI) -> None:
    response = post(app, {"model": "tiny", "prompt": PROMPT, "max_tokens": 12, "seed": 1})
    assert response.status_code == 200
    body = response.json()
    assert_completion(body, 1)
    [choice] = body["choices"]
    assert choice["finish_reason"] == "length"
    assert len(choice["text"]) == 12  # one character per token
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 12, "total_tokens": 17}


def test_seed_reproduces_a_sampled_completion(app: FastAPI) -> None:
    def text(seed: int) -> str:
        body = {"prompt": PROMPT, "max_tokens": 24, "temperature": 1.0, "seed": seed}
        return str(post(app, body).json()["choices"][0]["text"])

    assert text(3) == text(3)
    assert text(3) != text(4)


def test_n_choices_and_prompt_lists(app: FastAPI) -> None:
    body = post(app, {"prompt": PROMPT, "max_tokens": 16, "n": 3, "seed": 0}).json()
    assert_completion(body, 3)
    texts = [c["text"] for c in body["choices"]]
    assert len(set(texts)) == 3  # independent samples, not copies
    assert body["usage"]["prompt_tokens"] == 5 * 3
    assert body["usage"]["completion_tokens"] == 16 * 3

    listed = post(app, {"prompt": ["a", "KING:"], "max_tokens": 4, "n": 2, "seed": 0}).json()
    assert_completion(listed, 4)  # prompt 0's two choices, then prompt 1's
    assert listed["usage"]["prompt_tokens"] == (1 + 5) * 2


def test_greedy_is_deterministic_without_a_seed(app: FastAPI) -> None:
    body = {"prompt": PROMPT, "max_tokens": 20, "temperature": 0}
    assert post(app, body).json()["choices"] == post(app, body).json()["choices"]


def test_stop_sequence_cuts_the_text_plain_and_streamed(app: FastAPI) -> None:
    greedy = post(app, {"prompt": PROMPT, "max_tokens": 30, "temperature": 0}).json()
    full = greedy["choices"][0]["text"]
    stop = full[10:12]
    expected = full[: full.index(stop)]
    body = {"prompt": PROMPT, "max_tokens": 30, "temperature": 0, "stop": [stop, "never"]}
    [choice] = post(app, body).json()["choices"]
    assert choice["text"] == expected
    assert choice["finish_reason"] == "stop"

    chunks = sse(post(app, {**body, "stream": True}))
    assert streamed_texts(chunks) == {0: expected}
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_streaming_matches_the_plain_completion(app: FastAPI) -> None:
    body = {"prompt": PROMPT, "max_tokens": 20, "n": 2, "seed": 5, "temperature": 0.9}
    plain = post(app, body).json()
    chunks = sse(post(app, {**body, "stream": True, "stream_options": {"include_usage": True}}))
    assert len(chunks) > 4  # token by token, not one blob
    for chunk in chunks:
        assert chunk["object"] == "text_completion"
        assert chunk["model"] == "tiny"
        assert chunk["id"] == chunks[0]["id"]
    assert streamed_texts(chunks) == {c["index"]: c["text"] for c in plain["choices"]}
    finishes = [c for chunk in chunks for c in chunk["choices"] if c["finish_reason"]]
    assert sorted(c["index"] for c in finishes) == [0, 1]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == plain["usage"]


def test_echo_prepends_the_prompt(app: FastAPI) -> None:
    body = {"prompt": PROMPT, "max_tokens": 5, "temperature": 0}
    plain = post(app, body).json()["choices"][0]["text"]
    echoed = post(app, {**body, "echo": True}).json()["choices"][0]["text"]
    assert echoed == PROMPT + plain
    assert streamed_texts(sse(post(app, {**body, "echo": True, "stream": True}))) == {0: echoed}


TOO_LONG = "a" * (BLOCK_SIZE + 1)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"max_tokens": 5}, "prompt"),
        ({"prompt": 42}, "prompt"),
        ({"prompt": [1, 2, 3]}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": TOO_LONG}, "prompt"),
        ({"prompt": "€uro"}, "prompt"),
        ({"prompt": "a", "max_tokens": "5"}, "max_tokens"),
        ({"prompt": "a", "max_tokens": 65}, "max_tokens"),
        ({"prompt": "a", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "a", "max_tokens": 2.5}, "max_tokens"),
        ({"prompt": "a", "temperature": -1}, "temperature"),
        ({"prompt": "a", "temperature": "hot"}, "temperature"),
        ({"prompt": "a", "top_p": 0}, "top_p"),
        ({"prompt": "a", "top_k": -2}, "top_k"),
        ({"prompt": "a", "n": 0}, "n"),
        ({"prompt": "a", "n": 17}, "n"),
        ({"prompt": "a", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"prompt": "a", "stop": [""]}, "stop"),
        ({"prompt": "a", "stop": 3}, "stop"),
        ({"prompt": "a", "stream": "yes"}, "stream"),
        ({"prompt": "a", "seed": -1}, "seed"),
        ({"prompt": "a", "logprobs": 5}, "logprobs"),
        ({"prompt": "a", "frequency_penalty": 0.5}, "frequency_penalty"),
        ({"prompt": "a", "model": "gpt-4"}, "model"),
        (["not", "an", "object"], None),
    ],
)
def test_bad_requests_get_a_4xx_openai_error(app: FastAPI, body: Any, param: str | None) -> None:
    response = post(app, body)
    assert 400 <= response.status_code < 500, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"]


def test_context_and_cap_errors_say_what_to_change(app: FastAPI) -> None:
    long = post(app, {"prompt": TOO_LONG}).json()["error"]
    assert long["code"] == "context_length_exceeded"
    assert f"{BLOCK_SIZE} tokens" in long["message"]
    cap = post(app, {"prompt": "a", "max_tokens": 65}).json()["error"]
    assert "64" in cap["message"]
    unknown_char = post(app, {"prompt": "€uro"}).json()["error"]
    assert "'€'" in unknown_char["message"]


def test_malformed_json_is_a_400(app: FastAPI) -> None:
    response = run(
        app,
        lambda client: client.post(
            "/v1/completions", content=b"{not json", headers={"content-type": "application/json"}
        ),
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_unknown_route_and_method_answer_in_the_error_shape(app: FastAPI) -> None:
    missing = run(app, lambda client: client.get("/v1/chat/nothing"))
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    wrong = run(app, lambda client: client.get("/v1/completions"))
    assert wrong.status_code == 405
    assert wrong.json()["error"]["code"] == "method_not_allowed"


def test_api_key_is_required_when_set(loaded: LoadedModel) -> None:
    app = create_app(loaded, ServeConfig(api_key="sekret"))
    body = {"prompt": "a", "max_tokens": 2}
    missing = post(app, body)
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "invalid_api_key"
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = post(app, body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert run(app, lambda client: client.get("/v1/models")).status_code == 401
    right = post(app, body, headers={"Authorization": "Bearer sekret"})
    assert right.status_code == 200
    assert run(app, lambda client: client.get("/health")).status_code == 200  # probes need no key


@pytest.mark.parametrize("max_concurrency", [1, 3])
def test_concurrent_requests_match_their_sequential_results(
    loaded: LoadedModel, max_concurrency: int
) -> None:
    app = create_app(loaded, ServeConfig(max_concurrency=max_concurrency))
    bodies = [
        {"prompt": PROMPT, "max_tokens": 16, "seed": i, "n": 1 + i % 2, "stream": i % 2 == 1}
        for i in range(8)
    ]

    def texts(response: httpx.Response, stream: bool) -> dict[int, str]:
        assert response.status_code == 200
        if stream:
            return streamed_texts(sse(response))
        body = response.json()
        assert_completion(body, len(body["choices"]))
        return {c["index"]: c["text"] for c in body["choices"]}

    async def together(client: httpx.AsyncClient) -> list[httpx.Response]:
        return list(await asyncio.gather(*(client.post("/v1/completions", json=b) for b in bodies)))

    concurrent = run(app, together)
    for body, response in zip(bodies, concurrent, strict=True):
        alone = post(app, body)
        assert texts(response, bool(body["stream"])) == texts(alone, bool(body["stream"]))


def test_generation_does_not_block_the_event_loop(loaded: LoadedModel) -> None:
    app = create_app(loaded, ServeConfig())
    finished: list[str] = []

    async def long_completion(client: httpx.AsyncClient) -> None:
        body = {"prompt": PROMPT, "max_tokens": 1024, "stream": True, "seed": 0}
        response = await client.post("/v1/completions", json=body)
        assert response.status_code == 200
        finished.append("completion")

    async def health(client: httpx.AsyncClient) -> None:
        await asyncio.sleep(0.05)
        started = time.perf_counter()
        assert (await client.get("/health")).status_code == 200
        finished.append(f"health {time.perf_counter() - started:.3f}s")

    async def both(client: httpx.AsyncClient) -> None:
        await asyncio.gather(long_completion(client), health(client))

    run(app, both)
    assert finished[0].startswith("health"), finished
