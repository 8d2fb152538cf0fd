"""The OpenAI-compatible HTTP front (FastAPI): /v1/completions, /v1/chat/completions
(plain and server-sent events), /v1/models, /health, /metrics.

The router tokenizes (the replicas get token ids), checks the request against the model's
context, routes it through the pool, and answers in OpenAI's wire format, `usage` included
(prompt, completion and total tokens, and the prompt tokens served from the prefix cache).
Every refusal is an OpenAI error object with a 4xx status; nothing a client sends yields a 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import ValidationError
from pydantic_core import to_json
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from .chat_template import ChatTemplate
from .errors import APIError, bad_request, from_validation
from .metrics import CONTENT_TYPE, RouterMetrics
from .pool import RESTART, Job, ReplicaLost, ReplicaPool
from .schemas import ChatCompletionRequest, CompletionRequest

log = logging.getLogger("pypto.router")


class Tokenizer(Protocol):
    """What the router needs of engine.tokenizer's tokenizers."""

    vocab_size: int

    def encode(self, text: str) -> list[int]: ...


@dataclass
class AppSettings:
    """The router's HTTP-side settings (from the serve config and the CLI)."""

    model: str
    max_model_len: int
    api_key: str | None = None
    max_request_bytes: int = 1 << 20
    max_concurrent_requests: int = 256


class _State:
    """Counters shared by the routes."""

    def __init__(self) -> None:
        self.active = 0
        self.draining = False


def _json(obj: Any, status: int = 200) -> Response:
    return Response(to_json(obj), status_code=status, media_type="application/json")


def _error_response(e: APIError) -> Response:
    return _json(e.body(), e.status)


def _sse(obj: Any) -> bytes:
    return b"data: " + to_json(obj) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"

Endpoint = Callable[[Request], Awaitable[Response]]


class RouterApp(FastAPI):
    """FastAPI with a direct path for the completion routes.

    POST /v1/completions and /v1/chat/completions are answered by their handler straight
    from `__call__`, without FastAPI's middleware stack (error middleware, telemetry, body
    limit, exception middleware, exit stack, route matching: about 90 us of CPU a request,
    measured, as much as uvicorn's own HTTP work). The handlers read and limit the body
    themselves and turn every refusal into an OpenAI error object here, so nothing that stack
    did for them is lost. Every other route (and a wrong method) goes through FastAPI."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.direct: dict[str, Endpoint] = {}
        self.on_error: Callable[[Request, Exception], Response] = _unexpected_error

    def add_direct_route(self, path: str, endpoint: Endpoint) -> None:
        """Serve `POST path` with `endpoint`, ahead of the middleware stack."""
        self.direct[path] = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            endpoint = self.direct.get(scope["path"])
            if endpoint is not None:
                request = Request(scope, receive, send)
                try:
                    response = await endpoint(request)
                except Exception as e:  # every refusal answers as an OpenAI error object
                    response = self.on_error(request, e)
                await response(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def _unexpected_error(request: Request, e: Exception) -> Response:
    log.error("unexpected error on %s", request.url.path, exc_info=e)
    return _error_response(APIError(500, f"internal error: {type(e).__name__}"))


def _request_ids(prefix: str) -> Callable[[], str]:
    """Unique response ids without a syscall per request (uuid4 reads os.urandom): a random
    per-process part once, then a counter."""
    base = os.urandom(6).hex()
    counter = itertools.count()
    return lambda: f"{prefix}{base}{next(counter):012x}"


def create_app(pool: ReplicaPool, tokenizer: Tokenizer, settings: AppSettings, *,
               chat_template: ChatTemplate | None = None) -> FastAPI:
    """The router's ASGI app over `pool` (whose replicas the caller adds and removes)."""
    app = RouterApp(title="pypto serve", docs_url=None, redoc_url=None, openapi_url=None)
    metrics = RouterMetrics(pool, settings.model)
    template = chat_template or ChatTemplate()
    state = _State()
    app.state.router = state
    app.state.metrics = metrics
    app.state.pool = pool
    api_key = settings.api_key.encode() if settings.api_key else None

    def route(path: str, method: str) -> Callable:
        """A plain Starlette route: the handlers read the request themselves, so FastAPI's
        dependency solving (a quarter of a millisecond a request) is skipped."""
        def add(endpoint: Callable) -> Callable:
            app.router.add_route(path, endpoint, methods=[method], include_in_schema=False)
            return endpoint
        return add

    def direct(path: str) -> Callable:
        """A POST route on RouterApp's direct path (the hot completion routes); also known
        to FastAPI's router, so another method there is a 405."""
        def add(endpoint: Endpoint) -> Endpoint:
            app.add_direct_route(path, endpoint)
            return route(path, "POST")(endpoint)
        return add

    def on_error(request: Request, e: Exception) -> Response:
        """What the exception handlers below answer, for the direct routes."""
        if isinstance(e, APIError):
            metrics.errors.labels(settings.model, str(e.status)).inc()
            return _error_response(e)
        return _unexpected_error(request, e)

    app.on_error = on_error
    completion_id = _request_ids("cmpl-")
    chat_id = _request_ids("chatcmpl-")

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError) -> Response:
        metrics.errors.labels(settings.model, str(e.status)).inc()
        return _error_response(e)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> Response:
        return _error_response(APIError(e.status_code, str(e.detail)))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception) -> Response:
        log.exception("unexpected error on %s", request.url.path)
        return _error_response(APIError(500, f"internal error: {type(e).__name__}"))

    def check_auth(request: Request) -> None:
        if api_key is None:
            return
        got = request.headers.get("authorization", "")
        scheme, _, token = got.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(),
                                                                 api_key):
            raise APIError(401, "missing or wrong API key: send 'Authorization: Bearer KEY'",
                           code="invalid_api_key")

    async def read_body(request: Request) -> bytes:
        """The body, read from the ASGI receive channel (refused past the size limit)."""
        limit = settings.max_request_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise APIError(413, f"the body is {declared} bytes, over the limit of {limit} "
                           "(serve.max_request_bytes)", code="request_too_large")
        receive = request.receive
        msg = await receive()
        body = msg.get("body", b"")
        if not msg.get("more_body"):  # the usual case: one message
            if len(body) > limit:
                raise APIError(413, f"the body is over the limit of {limit} bytes "
                               "(serve.max_request_bytes)", code="request_too_large")
            return body
        chunks, size = [body], len(body)
        while msg.get("more_body"):
            msg = await receive()
            if msg["type"] == "http.disconnect":
                raise APIError(499, "the client closed the request")
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise APIError(413, f"the body is over the limit of {limit} bytes "
                               "(serve.max_request_bytes)", code="request_too_large")
            chunks.append(chunk)
        return b"".join(chunks)

    def check_model(name: str) -> None:
        if name != settings.model:
            raise APIError(400, f"model: '{name}' is not served here; this server serves "
                           f"'{settings.model}' (GET /v1/models)", param="model",
                           code="model_not_found")

    def check_ids(ids: list[int]) -> None:
        if not ids:
            raise bad_request("prompt: must not be empty", param="prompt")
        vocab = tokenizer.vocab_size
        bad = next((t for t in ids if t >= vocab), None)
        if bad is not None:
            raise bad_request(f"prompt: token id {bad} is beyond the vocabulary ({vocab} "
                              "tokens)", param="prompt")

    def budget(prompt_len: int, requested: int | None, param: str) -> int:
        ctx = settings.max_model_len
        if prompt_len >= ctx:
            raise bad_request(f"prompt: {prompt_len} tokens, but the model's context is {ctx} "
                              "tokens (prompt plus output); shorten it", param="prompt",
                              code="context_length_exceeded")
        room = ctx - prompt_len
        if requested is None:
            return room
        if requested > room:
            raise bad_request(f"{param}: {requested} tokens asked, but the prompt's "
                              f"{prompt_len} tokens leave {room} of the model's {ctx}-token "
                              f"context; ask for at most {room}", param=param,
                              code="context_length_exceeded")
        return requested

    def admit() -> None:
        if state.draining:
            raise APIError(503, "the server is shutting down", code="shutting_down")
        if state.active >= settings.max_concurrent_requests:
            raise APIError(429, f"{state.active} requests in progress, the limit "
                           "(serve.max_concurrent_requests); retry later",
                           code="too_many_requests")

    async def parse(request: Request, model_cls: type) -> Any:
        check_auth(request)
        admit()
        body = await read_body(request)
        try:
            req = model_cls.model_validate_json(body)
        except ValidationError as e:
            raise from_validation(e) from None
        req.check_supported()
        check_model(req.model)
        return req

    @direct("/v1/completions")
    async def completions(request: Request) -> Response:
        req: CompletionRequest = await parse(request, CompletionRequest)
        prompt = req.single_prompt()
        ids = tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        check_ids(ids)
        max_tokens = budget(len(ids), req.max_tokens, "max_tokens")
        return await respond(request, req, ids, max_tokens, chat=False)

    @direct("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        req: ChatCompletionRequest = await parse(request, ChatCompletionRequest)
        text = template.render([{"role": m.role, "content": m.text()} for m in req.messages])
        ids = template.encode(tokenizer, text)
        check_ids(ids)
        param = "max_completion_tokens" if req.max_completion_tokens is not None \
            else "max_tokens"
        max_tokens = budget(len(ids), req.requested_max_tokens, param)
        return await respond(request, req, ids, max_tokens, chat=True)

    async def respond(request: Request, req: Any, ids: list[int], max_tokens: int, *,
                      chat: bool) -> Response:
        job = Job(ids, req.sampling(max_tokens), request.headers.get("x-session-id"),
                  resumable=not req.stream)
        meta = _Meta(chat, req.model, int(time.time()), chat_id() if chat else completion_id())
        state.active += 1
        if not req.stream:
            try:
                return await _until_disconnect(request, complete(job, meta))
            finally:
                state.active -= 1
        try:
            stream = relay(job)
            first = await anext(stream)  # refusals become a plain error response
        except BaseException:
            state.active -= 1
            raise
        return StreamingResponse(sse(stream, first, meta, req.include_usage),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    def timed(job: Job) -> Callable[[dict], None]:
        """An observer of one request's outputs taking the router's latency metrics (TTFT,
        ITL, e2e and the finish counters); a RESTART starts its clock's first token anew."""
        start = time.perf_counter()
        first_at = last_at = 0.0
        series: Any = None
        replica = None

        def see(msg: dict) -> None:
            nonlocal first_at, last_at, series, replica
            now = time.perf_counter()
            if msg is RESTART:
                metrics.retries.labels(settings.model).inc()
                first_at = 0.0
                return
            if msg["replica"] != replica:
                replica = msg["replica"]
                series = metrics.series(replica)
            if msg.get("token_ids") or msg.get("text"):
                if not first_at:
                    first_at = now
                    series.ttft.observe(now - start)
                else:
                    series.itl.observe(now - last_at)
                last_at = now
            if msg.get("finished"):
                series.finished(str(msg.get("finish_reason") or "stop"),
                                prompt=int(msg.get("prompt_tokens", len(job.prompt_token_ids))),
                                completion=int(msg.get("completion_tokens", 0)),
                                cached=int(msg.get("cached_tokens", 0)), e2e_s=now - start,
                                timings=msg.get("timings"))
        return see

    async def relay(job: Job) -> AsyncIterator[dict]:
        """The pool's outputs, observed on the way (the streamed path)."""
        see = timed(job)
        async for msg in pool.generate(job):
            see(msg)
            yield msg

    async def complete(job: Job, meta: _Meta) -> Response:
        parts: list[str] = []
        final: dict = {}
        see = timed(job)
        async for msg in pool.generate(job):
            see(msg)
            if msg is RESTART:
                parts.clear()
                continue
            parts.append(msg.get("text", ""))
            final = msg
        text = "".join(parts)
        reason = final.get("finish_reason")
        if chat := meta.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text},
                      "logprobs": None, "finish_reason": reason}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
        return _json({"id": meta.id, "object": "chat.completion" if chat else
                      "text_completion", "created": meta.created, "model": meta.model,
                      "choices": [choice], "usage": _usage(final, len(job.prompt_token_ids))})

    async def sse(stream: AsyncIterator[dict], first: dict, meta: _Meta, include_usage: bool
                  ) -> AsyncIterator[bytes]:
        obj = "chat.completion.chunk" if meta.chat else "text_completion"
        extra = {"usage": None} if include_usage else {}

        def chunk(choices: list) -> bytes:
            return _sse({"id": meta.id, "object": obj, "created": meta.created,
                         "model": meta.model, "choices": choices, **extra})

        def piece(text: str, reason: str | None) -> bytes:
            if meta.chat:
                delta = {"content": text} if text or reason is None else {}
                return chunk([{"index": 0, "delta": delta, "logprobs": None,
                               "finish_reason": reason}])
            return chunk([{"index": 0, "text": text, "logprobs": None,
                           "finish_reason": reason}])

        final: dict = {}
        try:
            if meta.chat:
                yield chunk([{"index": 0, "delta": {"role": "assistant", "content": ""},
                              "logprobs": None, "finish_reason": None}])
            msg = first
            while True:
                final = msg
                done = bool(msg.get("finished"))
                text = msg.get("text", "")
                if text or done:
                    yield piece(text, msg.get("finish_reason") if done else None)
                if done:
                    break
                msg = await anext(stream)
            if include_usage:
                yield _sse({"id": meta.id, "object": obj, "created": meta.created,
                            "model": meta.model, "choices": [],
                            "usage": _usage(final, prompt_len=0)})
        except (ReplicaLost, APIError) as e:
            err = e if isinstance(e, APIError) else APIError(
                500, f"the replica serving this request failed after streaming part of it: "
                f"{e}; send it again", code="replica_failed", type="server_error")
            metrics.errors.labels(settings.model, str(err.status)).inc()
            yield _sse(err.body())
        except StopAsyncIteration:
            pass
        finally:
            state.active -= 1
            with contextlib.suppress(Exception):
                await stream.aclose()
        yield SSE_DONE

    @route("/v1/models", "GET")
    async def models(request: Request) -> Response:
        check_auth(request)
        return _json({"object": "list", "data": [{
            "id": settings.model, "object": "model", "created": 0, "owned_by": "pypto",
            "max_model_len": settings.max_model_len}]})

    @route("/health", "GET")
    async def health(request: Request) -> Response:
        ready = pool.ready_ids
        body = {"status": "ok" if ready and not state.draining else "unavailable",
                "replicas_ready": ready, "replicas": sorted(pool.replicas)}
        return _json(body, 200 if ready and not state.draining else 503)

    # What SGLang's router asks of the workers it fronts, so a user's own sglang-router can
    # balance the per-replica ports of `data_parallel_load_balance: external`. Never a
    # model_path or tokenizer_path here: that router would try to download them.
    @route("/server_info", "GET")
    async def server_info(request: Request) -> Response:
        check_auth(request)
        return _json({"served_model_name": settings.model,
                      "max_model_len": settings.max_model_len,
                      "replicas": pool.ready_ids})

    @route("/model_info", "GET")
    async def model_info(request: Request) -> Response:
        check_auth(request)
        return _json({"model_name": settings.model, "is_generation": True})

    @route("/get_load", "GET")
    async def get_load(request: Request) -> Response:
        check_auth(request)
        loads = []
        for r in pool.ready_ids:
            c = pool.replicas[r]
            loads.append({"dp_rank": r, "num_reqs": c.pending_requests(),
                          "num_waiting_reqs": int(c.state.stats.get("waiting", 0)),
                          "num_tokens": c.pending_tokens()})
        return _json(loads)

    @route("/internal/replicas", "POST")
    async def register(request: Request) -> Response:
        """Another node's replica joining ({replica, endpoint, group}) or leaving
        ({replica, down: true}); `pypto serve --node-rank N` sends these."""
        check_auth(request)
        try:
            body = json.loads(await read_body(request))
            replica = int(body["replica"])
            if body.get("down"):
                pool.mark_down(replica, str(body.get("reason", "its node says it is down")))
            else:
                endpoint = str(body["endpoint"])
                if not endpoint.startswith("tcp://"):
                    raise ValueError(f"endpoint {endpoint!r} is not tcp://HOST:PORT")
                pool.add(replica, endpoint, group=body.get("group"))
        except (ValueError, KeyError, TypeError) as e:
            raise bad_request(f"a registration is {{replica, endpoint, group}} or {{replica, "
                              f"down: true}}: {e}") from None
        return _json({"replicas": sorted(pool.replicas)})

    @route("/metrics", "GET")
    async def metrics_route(request: Request) -> Response:
        check_auth(request)
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return app


@dataclass(frozen=True)
class _Meta:
    chat: bool
    model: str
    created: int
    id: str


def _usage(final: dict, prompt_len: int) -> dict:
    prompt = int(final.get("prompt_tokens", prompt_len))
    completion = int(final.get("completion_tokens", 0))
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": int(final.get("cached_tokens", 0))}}


async def _until_disconnect(request: Request, work: Any) -> Response:
    """Await `work` (a coroutine making the response) unless the client leaves first: then
    this task is cancelled, which aborts the request on its replica. The watch is one task on
    the ASGI receive (answered once the body was read only by a disconnect)."""
    me = asyncio.current_task()
    left = False

    def on_message(done: asyncio.Future) -> None:
        nonlocal left, watcher
        if done.cancelled() or done.exception() is not None:
            return
        if done.result()["type"] == "http.disconnect":
            left = True
            me.cancel()  # type: ignore[union-attr]
        else:  # not expected after the body; keep watching
            watcher = asyncio.ensure_future(request.receive())
            watcher.add_done_callback(on_message)

    watcher = asyncio.ensure_future(request.receive())
    watcher.add_done_callback(on_message)
    try:
        return await work
    except asyncio.CancelledError:
        if not left:
            raise
        if hasattr(me, "uncancel"):  # Python 3.11+: the cancel is ours, and handled
            me.uncancel()  # type: ignore[union-attr]
        return _error_response(APIError(499, "the client closed the request"))
    finally:
        watcher.cancel()
