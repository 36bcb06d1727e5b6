"""The HTTP API: OpenAI-style `/v1/completions` and `/v1/chat/completions` (plain and
server-sent events), `/v1/models`, `/health`, and the web playground at `/`.

Chat requests go through the checkpoint tokenizer's chat template (a fine-tuned Hugging Face
model's); a checkpoint without one answers 400 and takes completions only.

Every bad request gets a 4xx with OpenAI's error body `{"error": {message, type, param, code}}`,
so existing clients show a useful message; a 500 means a bug.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from ml_playground.config.schema import ServeConfig
from ml_playground.errors import MLPlaygroundError
from ml_playground.generate.service import (
    GenerationResult,
    GenerationSettings,
    LoadedModel,
    encode_messages,
)
from ml_playground.serve.engine import CompletionJob, Delta, Engine
from ml_playground.serve.variants import VariantRouter

MAX_N = 16
MAX_STOP = 4
UNION_TAGS = {"str", "int", "float", "bool"}


class APIError(Exception):
    """A request the server refuses, rendered in OpenAI's error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = (
            status,
            message,
            param,
            code,
            kind,
        )

    def response(self) -> JSONResponse:
        body = {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(body, status_code=self.status, headers=headers)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool = False


class SamplingRequest(BaseModel):
    """What OpenAI's completion and chat requests share, minus what a small local model cannot
    do; `top_k` is ours.

    Strict types: `"max_tokens": "5"` is an error, not 5. Unknown fields are errors too.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = None
    max_tokens: int | None = Field(16, ge=1, description="New tokens per choice (default 16).")
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="0 = greedy.")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, description="Keep the k most likely tokens (0 = off).")
    stop: str | list[str] | None = Field(None, description=f"Up to {MAX_STOP} stop sequences.")
    n: int = Field(1, ge=1, le=MAX_N, description="Choices per prompt.")
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None


class CompletionRequest(SamplingRequest):
    """OpenAI's `/v1/completions` request."""

    prompt: str | list[str] = Field(..., description="Text to continue, or several texts.")
    echo: bool = Field(False, description="Prepend the prompt to each choice's text.")
    logprobs: int | None = Field(None, ge=0, le=0, description="Not supported (null or 0).")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    role: Literal["system", "user", "assistant"]
    content: str


class ChatCompletionRequest(SamplingRequest):
    """OpenAI's `/v1/chat/completions` request: the conversation goes through the checkpoint
    tokenizer's chat template, as a chat fine-tune's training pairs did."""

    messages: list[ChatMessage] = Field(..., min_length=1, description="The conversation so far.")


def _openai_message(error: dict[str, Any]) -> tuple[str, str | None]:
    """A pydantic error as (message, param) in the words OpenAI uses."""
    loc = [str(part) for part in error["loc"] if part != "body"]
    # Union members add their type name to the location (e.g. prompt.str); drop those.
    loc = [part for part in loc if part not in UNION_TAGS and not part.startswith("list[")]
    param = ".".join(loc) or None
    if error["type"] == "extra_forbidden":
        return f"Unrecognized request argument supplied: {param}", param
    if error["type"] == "missing":
        return f"Missing required parameter: '{param}'.", param
    if error["type"] == "json_invalid":
        return "The request body is not valid JSON.", None
    if error["type"] == "model_attributes_type":
        return "The request body must be a JSON object.", None
    value = json.dumps(error.get("input"), default=str)[:80]
    return f"Invalid value for '{param}' ({value}): {error['msg']}.", param


def _stop_sequences(stop: str | list[str] | None) -> tuple[str, ...]:
    sequences = [stop] if isinstance(stop, str) else list(stop or [])
    if len(sequences) > MAX_STOP:
        raise APIError(400, f"'stop' takes at most {MAX_STOP} sequences", param="stop")
    if any(not s for s in sequences):
        raise APIError(400, "'stop' sequences must not be empty strings", param="stop")
    return tuple(sequences)


def create_app(
    loaded: LoadedModel,
    settings: ServeConfig,
    model_id: str | None = None,
    router: VariantRouter | None = None,
) -> FastAPI:
    """The FastAPI app serving `loaded` (one model, shared by all requests).

    With a `router`, several checkpoints answer as variants of one model (A/B or shadow);
    `loaded` is then the router's primary variant.
    """
    checkpoint = loaded.checkpoint
    model_id = model_id or checkpoint.config.name
    block_size = loaded.model.block_size if router is None else router.block_size
    iteration = checkpoint.state.get("iter")
    created = int((checkpoint.path / "state.json").stat().st_mtime)
    engine: Engine | None = None
    if router is None:  # one model: one engine, named ""
        engine = Engine(loaded, settings.max_concurrency)
        engines = {"": engine}
    else:
        engines = dict(router.engines)
    fingerprints = {
        name: f"{e.loaded.checkpoint.path.name}@{e.loaded.checkpoint.state.get('iter')}"
        for name, e in engines.items()
    }

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        if router is not None:
            router.close()
        else:
            for each in engines.values():
                each.close()

    app = FastAPI(
        title="ml-playground",
        summary="OpenAI-style completions from an ml-playground checkpoint.",
        lifespan=lifespan,
    )
    app.state.engine = engine
    app.state.router = router

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _openai_message(exc.errors()[0])
        return APIError(400, message, param=param).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return APIError(exc.status_code, str(exc.detail), code=code).response()

    async def authorize(request: Request) -> None:
        if settings.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise APIError(
                401,
                "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'.",
                code="invalid_api_key",
            )
        if not secrets.compare_digest(token.strip().encode(), settings.api_key.encode()):
            raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")

    def model_card() -> dict[str, Any]:
        return {
            "id": model_id,
            "object": "model",
            "created": created,
            "owned_by": "ml-playground",
            "max_model_len": block_size,
            "checkpoint": str(checkpoint.path),
            "iter": iteration,
        }

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def playground() -> HTMLResponse:
        page = resources.files("ml_playground.serve").joinpath("static/index.html")
        return HTMLResponse(page.read_text("utf-8"))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": model_id,
            "checkpoint": str(checkpoint.path),
            "iter": iteration,
            "best_val_loss": checkpoint.state.get("best_val_loss"),
            "weights": settings.weights,
            "device": str(loaded.device),
            "block_size": block_size,
            "max_tokens_cap": settings.max_tokens_cap,
            "auth": settings.api_key is not None,
            **(
                {}
                if router is None
                else {
                    "strategy": router.strategy,
                    "variants": {
                        name: str(e.loaded.checkpoint.path) for name, e in router.engines.items()
                    },
                }
            ),
        }

    @app.get("/v1/models", dependencies=[Depends(authorize)])
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name}", dependencies=[Depends(authorize)])
    async def get_model(name: str) -> dict[str, Any]:
        if name != model_id:
            raise APIError(
                404, f"The model '{name}' does not exist", param="model", code="model_not_found"
            )
        return model_card()

    def check(request: SamplingRequest) -> tuple[int, tuple[str, ...], int]:
        """(max_tokens, stop sequences, seed) of a request, checked against this server."""
        if request.model is not None and request.model != model_id:
            raise APIError(
                404,
                f"The model '{request.model}' does not exist; this server serves '{model_id}'",
                param="model",
                code="model_not_found",
            )
        max_tokens = 16 if request.max_tokens is None else request.max_tokens
        if max_tokens > settings.max_tokens_cap:
            raise APIError(
                400,
                f"max_tokens={max_tokens} is over this server's cap of "
                f"{settings.max_tokens_cap} (ml-playground serve ... serve.max_tokens_cap=N)",
                param="max_tokens",
            )
        stop = _stop_sequences(request.stop)
        seed = secrets.randbits(63) if request.seed is None else request.seed
        return max_tokens, stop, seed

    def settings_for(
        request: SamplingRequest, ids: list[int], param: str, max_tokens: int,
        stop: tuple[str, ...], seed: int,
    ) -> GenerationSettings:  # fmt: skip
        if len(ids) > block_size:
            raise APIError(
                400,
                f"This model's maximum context length is {block_size} tokens; the prompt "
                f"has {len(ids)}. Shorten the prompt.",
                param=param,
                code="context_length_exceeded",
            )
        return GenerationSettings(
            max_new_tokens=max_tokens,
            temperature=request.temperature,
            top_k=request.top_k or None,
            top_p=request.top_p,
            stop=stop,
            seed=seed,
        )

    def plan(request: CompletionRequest) -> tuple[list[str], list[CompletionJob], list[int]]:
        """Check everything that depends on the model, before any work starts."""
        max_tokens, stop, seed = check(request)
        prompts = [request.prompt] if isinstance(request.prompt, str) else request.prompt
        if not prompts:
            raise APIError(400, "'prompt' must not be an empty list", param="prompt")
        jobs, lengths = [], []
        for index, prompt in enumerate(prompts):
            if not prompt:
                raise APIError(400, "'prompt' must not be empty", param="prompt")
            try:
                ids = loaded.tokenizer.encode(prompt)
            except MLPlaygroundError as exc:
                message = f"prompt: {exc}"
                raise APIError(400, message, param="prompt", code="invalid_prompt") from None
            generation = settings_for(request, ids, "prompt", max_tokens, stop, seed + index)
            jobs.append(CompletionJob(prompt, request.n, generation))
            lengths.append(len(ids))
        return prompts, jobs, lengths

    def plan_chat(request: ChatCompletionRequest) -> tuple[CompletionJob, int]:
        """The conversation rendered by the chat template, as one job; and its token count."""
        max_tokens, stop, seed = check(request)
        messages = [message.model_dump() for message in request.messages]
        try:
            ids = encode_messages(loaded, messages)
        except MLPlaygroundError as exc:
            raise APIError(400, str(exc), param="messages", code="invalid_prompt") from None
        generation = settings_for(request, ids, "messages", max_tokens, stop, seed)
        text = loaded.tokenizer.decode(ids)
        return CompletionJob(text, request.n, generation, tuple(ids)), len(ids)

    def usage(prompt_lengths: list[int], n: int, choices: list[GenerationResult]) -> dict[str, int]:
        prompt_tokens = sum(prompt_lengths) * n
        completion_tokens = sum(c.completion_tokens for c in choices)
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }

    @app.post("/v1/completions", dependencies=[Depends(authorize)], response_model=None)
    async def completions(request: CompletionRequest) -> JSONResponse | StreamingResponse:
        prompts, jobs, lengths = plan(request)
        variant = "" if router is None else await router.choose()
        answering = engines[variant]
        head = {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": model_id,
            "system_fingerprint": fingerprints[variant],
            **({} if router is None else {"variant": variant}),
        }
        headers = {} if router is None else {"X-ML-Playground-Variant": variant}
        if router is not None:
            router.shadow(str(head["id"]), prompts, jobs)

        def prompt_of(index: int) -> str:
            return prompts[index // request.n]

        if not request.stream:
            choices = await answering.complete(jobs)
            body = {
                **head,
                "choices": [
                    {
                        "text": (prompt_of(i) if request.echo else "") + choice.text,
                        "index": i,
                        "logprobs": None,
                        "finish_reason": choice.finish_reason,
                    }
                    for i, choice in enumerate(choices)
                ],
                "usage": usage(lengths, request.n, choices),
            }
            return JSONResponse(body, headers=headers)

        def event(choices: list[dict[str, Any]], **extra: Any) -> str:
            return f"data: {json.dumps({**head, 'choices': choices, **extra})}\n\n"

        async def events() -> AsyncIterator[str]:
            if request.echo:
                for i in range(len(prompts) * request.n):
                    yield event([_chunk(i, prompt_of(i), None)])
            finished: list[GenerationResult] = []
            async for item in answering.stream(jobs):
                if isinstance(item, Delta):
                    yield event([_chunk(item.index, item.text, None)])
                else:
                    finished.append(item.choice)
                    yield event([_chunk(item.index, "", item.choice.finish_reason)])
            if request.stream_options is not None and request.stream_options.include_usage:
                yield event([], usage=usage(lengths, request.n, finished))
            yield "data: [DONE]\n\n"

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **headers},
        )

    @app.post("/v1/chat/completions", dependencies=[Depends(authorize)], response_model=None)
    async def chat_completions(request: ChatCompletionRequest) -> JSONResponse | StreamingResponse:
        job, length = plan_chat(request)
        variant = "" if router is None else await router.choose()
        answering = engines[variant]
        head = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "created": int(time.time()),
            "model": model_id,
            "system_fingerprint": fingerprints[variant],
            **({} if router is None else {"variant": variant}),
        }
        headers = {} if router is None else {"X-ML-Playground-Variant": variant}
        if router is not None:
            router.shadow(str(head["id"]), [job.prompt], [job])

        if not request.stream:
            choices = await answering.complete([job])
            body = {
                **head,
                "object": "chat.completion",
                "choices": [
                    {
                        "index": i,
                        "message": {"role": "assistant", "content": choice.text},
                        "logprobs": None,
                        "finish_reason": choice.finish_reason,
                    }
                    for i, choice in enumerate(choices)
                ],
                "usage": usage([length], request.n, choices),
            }
            return JSONResponse(body, headers=headers)

        def event(choices: list[dict[str, Any]], **extra: Any) -> str:
            chunk = {**head, "object": "chat.completion.chunk", "choices": choices, **extra}
            return f"data: {json.dumps(chunk)}\n\n"

        def delta(index: int, content: dict[str, str], finish: str | None = None) -> dict[str, Any]:
            return {"index": index, "delta": content, "logprobs": None, "finish_reason": finish}

        async def events() -> AsyncIterator[str]:
            # OpenAI's stream: the role first, then content deltas, then an empty delta that
            # carries the finish reason.
            yield event([delta(i, {"role": "assistant", "content": ""}) for i in range(request.n)])
            finished: list[GenerationResult] = []
            async for item in answering.stream([job]):
                if isinstance(item, Delta):
                    yield event([delta(item.index, {"content": item.text})])
                else:
                    finished.append(item.choice)
                    yield event([delta(item.index, {}, item.choice.finish_reason)])
            if request.stream_options is not None and request.stream_options.include_usage:
                yield event([], usage=usage([length], request.n, finished))
            yield "data: [DONE]\n\n"

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **headers},
        )

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:
        # Starlette still re-raises after this, so the server logs the traceback.
        message = f"internal error: {type(exc).__name__}: {exc}"
        return APIError(500, message, kind="server_error").response()

    return app


def _chunk(index: int, text: str, finish_reason: str | None) -> dict[str, Any]:
    return {"text": text, "index": index, "logprobs": None, "finish_reason": finish_reason}
