"""`evolkit serve`: any evolkit backend behind an OpenAI-compatible HTTP API.

One loaded model can then serve several evolkit jobs (or Ray workers, or any OpenAI client) at
once, instead of each job loading its own copy.

The model is not thread-safe and a forward pass over 16 prompts costs little more than over
one, so requests are not answered one by one: a single worker thread takes what has arrived
within a short window (or up to ``max_batch`` requests) and answers it with ONE
``backend.generate`` call. The web framework's event loop only parses, queues and waits.

Every failure a client can cause is a 4xx with an OpenAI-style error body
(``{"error": {"message", "type", "param", "code"}}``); a failure of the model is a 500 with a
one-line message. A traceback goes to the server's log, never to the client.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import queue
import random
import socket
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import replace
from typing import Any, Literal

from evolkit.errors import EvolkitError
from evolkit.models.base import Backend, ChatRequest, Generation, SamplingParams

try:
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, ConfigDict, Field
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise EvolkitError(
        f"evolkit serve needs FastAPI and uvicorn ({exc.name} is missing): "
        "pip install 'evolkit[serve]'"
    ) from None

log = logging.getLogger("evolkit.serve")

#: max_tokens when a request gives none (OpenAI's own default is "the rest of the context").
DEFAULT_MAX_TOKENS = 512
#: OpenAI reports impossible tokens as -9999.0; JSON has no -Infinity.
_LOGPROB_FLOOR = -9999.0


# -- the batching worker ---------------------------------------------------------------------


class BatchWorker:
    """Answers queued requests on one thread, a batch per ``backend.generate`` call.

    After the first request of a batch arrives the worker waits up to ``batch_wait_s`` for
    more (fewer if ``max_batch`` fill up sooner); requests that queued while the model was busy
    go out together at once. A request whose client went away is dropped before it is run.
    """

    def __init__(self, backend: Backend, max_batch: int = 16, batch_wait_s: float = 0.01) -> None:
        if max_batch < 1:
            raise EvolkitError(f"--max-batch must be at least 1, got {max_batch}")
        if batch_wait_s < 0:
            raise EvolkitError(f"--batch-wait-ms must be 0 or more, got {batch_wait_s * 1000:g}")
        self.backend = backend
        self.max_batch = max_batch
        self.batch_wait_s = batch_wait_s
        self._queue: queue.Queue[tuple[ChatRequest, concurrent.futures.Future[Generation]] | None]
        self._queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="evolkit-serve-model", daemon=True)
        self._thread.start()

    def submit(self, request: ChatRequest) -> concurrent.futures.Future[Generation]:
        future: concurrent.futures.Future[Generation] = concurrent.futures.Future()
        self._queue.put((request, future))
        return future

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def close(self, timeout: float = 10.0) -> None:
        """Finish the batch in flight, then stop the thread (bounded by `timeout`)."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _next_batch(self) -> tuple[list[tuple[ChatRequest, Any]], bool]:
        first = self._queue.get()
        if first is None:
            return [], True
        batch = [first]
        deadline = time.monotonic() + self.batch_wait_s
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                # Past the window, still take what is already queued (it waited for the model).
                if remaining > 0:
                    item = self._queue.get(timeout=remaining)
                else:
                    item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    def _loop(self) -> None:
        stop = False
        while not stop:
            batch, stop = self._next_batch()
            live = [(r, f) for r, f in batch if f.set_running_or_notify_cancel()]
            if not live:
                continue
            try:
                generations = self._generate([r for r, _ in live])
            except Exception:
                if len(live) == 1:
                    self._fail(live)
                    continue
                # One client's odd request must not fail its batch-mates: redo them one by
                # one, so only the culprit hears of the error.
                log.warning("a batch of %d failed; answering its requests one by one", len(live))
                for one in live:
                    try:
                        [gen] = self._generate([one[0]])
                    except Exception:
                        self._fail([one])
                    else:
                        one[1].set_result(gen)
                continue
            for (_, future), gen in zip(live, generations, strict=True):
                future.set_result(gen)

    def _generate(self, requests: list[ChatRequest]) -> list[Generation]:
        generations = self.backend.generate(requests)
        if len(generations) != len(requests):
            raise RuntimeError(
                f"the backend answered {len(generations)} of {len(requests)} requests"
            )
        return generations

    @staticmethod
    def _fail(items: list[tuple[ChatRequest, Any]]) -> None:
        """Hand the exception being handled to every waiting client; the log gets the trace."""
        log.exception("generate failed for %d request(s)", len(items))
        exc = sys.exc_info()[1]
        assert exc is not None
        for _, future in items:
            future.set_exception(exc)


# -- request bodies --------------------------------------------------------------------------


class _Common(BaseModel):
    # Unknown fields are ignored, as vLLM does: clients send many optional extras.
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    temperature: float = Field(1.0, ge=0.0)  # OpenAI's default
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    seed: int | None = None
    n: int = 1
    stop: str | list[str] | None = None
    stream: bool = False
    repetition_penalty: float | None = Field(None, gt=0.0)


class _TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str
    text: str | None = None


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[_TextPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.type != "text" or part.text is None:
                raise _ClientError(f"only text content is supported, not {part.type!r} parts")
            parts.append(part.text)
        return "".join(parts)


class ChatBody(_Common):
    messages: list[_Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    # vLLM's way to continue a final assistant message (what evolkit sends for a prefill).
    continue_final_message: bool = False


class CompletionBody(_Common):
    prompt: str | list[str]
    # The legacy API's logprobs is the number of alternatives per token (0 = only the token's).
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False
    best_of: int | None = None


class _ClientError(Exception):
    """A request the server understood but will not run; becomes a 400 (or the given status)."""

    def __init__(self, message: str, status: int = 400, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def _error(status: int, message: str, kind: str, code: str | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return JSONResponse(body, status_code=status)


# -- mapping requests and answers ------------------------------------------------------------


def _params(body: _Common, max_tokens: int | None, logprobs: bool, top: int) -> SamplingParams:
    if body.n != 1:
        raise _ClientError(
            f"n={body.n}: this server returns one choice per request; send n separate requests"
        )
    if body.stream:
        raise _ClientError("streaming is not supported: send stream=false")
    # No seed: a fresh one, so repeated sampled requests differ, as they do on OpenAI.
    seed = body.seed if body.seed is not None else random.getrandbits(63)
    return SamplingParams(
        temperature=body.temperature,
        top_p=body.top_p,
        max_new_tokens=max_tokens or DEFAULT_MAX_TOKENS,
        seed=seed,
        repetition_penalty=body.repetition_penalty,
        logprobs=logprobs,
        top_logprobs=top,
    )


def chat_request(body: ChatBody) -> ChatRequest:
    """The ChatRequest a chat-completions body asks for (a final assistant turn = prefill)."""
    if body.top_logprobs and not body.logprobs:
        raise _ClientError("top_logprobs needs logprobs=true")
    params = _params(
        body,
        body.max_completion_tokens or body.max_tokens,
        body.logprobs,
        body.top_logprobs or 0,
    )
    # Chat templates know "system", not OpenAI's newer name for it.
    messages = [
        {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
        for m in body.messages
    ]
    prefill = ""
    if body.continue_final_message:
        if messages[-1]["role"] != "assistant":
            raise _ClientError("continue_final_message needs a final assistant message")
        prefill = messages.pop()["content"]
    return ChatRequest.of(messages, params, prefill)


def completion_requests(body: CompletionBody) -> list[ChatRequest]:
    """One raw-prompt request per prompt: continued as written, with no chat template."""
    if body.echo:
        raise _ClientError("echo is not supported")
    if body.best_of not in (None, 1):
        raise _ClientError("best_of must be 1")
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if not prompts:
        raise _ClientError("prompt is empty")
    logprobs = body.logprobs is not None
    params = _params(body, body.max_tokens, logprobs, body.logprobs or 0)
    return [ChatRequest(messages=(), params=params, prompt=p) for p in prompts]


def apply_stop(gen: Generation, stops: str | list[str] | None) -> Generation:
    """Cut the text before the first stop string, and the token details with it.

    The backend cannot stop early on a string, so the tokens after it were generated anyway:
    the client gets the same text as from a server that stopped, not the same speed.
    """
    if not stops:
        return gen
    stop_list = [stops] if isinstance(stops, str) else stops
    cuts = [i for i in (gen.text.find(s) for s in stop_list if s) if i >= 0]
    if not cuts:
        return gen
    cut = min(cuts)
    out = replace(gen, text=gen.text[:cut], finish_reason="stop")
    if gen.tokens is not None:
        # Keep the tokens that start before the cut (a token straddling it stays).
        keep, offset = 0, 0
        for token in gen.tokens:
            if offset >= cut:
                break
            offset += len(token)
            keep += 1
        out.tokens = gen.tokens[:keep]
        out.completion_tokens = keep
        if gen.token_logprobs is not None:
            out.token_logprobs = gen.token_logprobs[:keep]
        if gen.top_logprobs is not None:
            out.top_logprobs = gen.top_logprobs[:keep]
    return out


def _logprob(value: float) -> float:
    return value if math.isfinite(value) else _LOGPROB_FLOOR


def _token(gen: Generation, i: int) -> str:
    # A backend that does not say which token it scored gets "" rather than a made-up text.
    return gen.tokens[i] if gen.tokens is not None and i < len(gen.tokens) else ""


def _alternatives(gen: Generation, i: int) -> list[tuple[str, float]]:
    if gen.top_logprobs is None or i >= len(gen.top_logprobs):
        return []
    return gen.top_logprobs[i]


def chat_logprobs(gen: Generation) -> dict[str, Any] | None:
    """OpenAI's chat shape: ``{"content": [{token, logprob, bytes, top_logprobs}, ...]}``."""
    if gen.token_logprobs is None:
        return None
    content = []
    for i, value in enumerate(gen.token_logprobs):
        token = _token(gen, i)
        content.append(
            {
                "token": token,
                "logprob": _logprob(value),
                "bytes": list(token.encode("utf-8")),
                "top_logprobs": [
                    {"token": t, "logprob": _logprob(v), "bytes": list(t.encode("utf-8"))}
                    for t, v in _alternatives(gen, i)
                ],
            }
        )
    return {"content": content}


def completion_logprobs(gen: Generation, prompt: str, top: int) -> dict[str, Any] | None:
    """The legacy completions shape: parallel lists, alternatives as {token: logprob} maps."""
    if gen.token_logprobs is None:
        return None
    tokens = [_token(gen, i) for i in range(len(gen.token_logprobs))]
    offsets, at = [], len(prompt)
    for token in tokens:
        offsets.append(at)
        at += len(token)
    return {
        "tokens": tokens,
        "token_logprobs": [_logprob(v) for v in gen.token_logprobs],
        "top_logprobs": (
            [
                {t: _logprob(v) for t, v in _alternatives(gen, i)}
                for i in range(len(gen.token_logprobs))
            ]
            if top > 0
            else None
        ),
        "text_offset": offsets,
    }


def _usage(gens: Iterable[Generation]) -> dict[str, int]:
    gens = list(gens)
    prompt = sum(g.prompt_tokens for g in gens)
    completion = sum(g.completion_tokens for g in gens)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _finish(gen: Generation) -> str:
    return "length" if gen.finish_reason == "length" else "stop"


# -- the application -------------------------------------------------------------------------


def create_app(
    backend: Backend,
    *,
    max_batch: int = 16,
    batch_wait_ms: float = 10.0,
    aliases: Sequence[str] = (),
) -> FastAPI:
    """The ASGI app serving `backend`; its model answers to ``backend.model_id`` and `aliases`.

    The batching worker starts here and stops when the app shuts down.
    """
    worker = BatchWorker(backend, max_batch=max_batch, batch_wait_s=batch_wait_ms / 1000.0)
    name = backend.model_id
    accepted = {name, *aliases}
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await asyncio.to_thread(worker.close)

    app = FastAPI(title="evolkit serve", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        message = str(first.get("msg", "invalid request"))
        text = f"{where}: {message}" if where else message
        return _error(400, f"invalid request: {text}", "invalid_request_error")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), "invalid_request_error")

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> JSONResponse:
        log.exception("request failed")
        return _error(500, f"internal server error ({type(exc).__name__})", "server_error")

    def check_model(model: str | None) -> None:
        if model is not None and model not in accepted:
            raise _ClientError(
                f"The model '{model}' does not exist; this server serves '{name}'",
                status=404,
                code="model_not_found",
            )

    async def run(requests: list[ChatRequest]) -> list[Generation]:
        futures = [worker.submit(r) for r in requests]
        return list(await asyncio.gather(*(asyncio.wrap_future(f) for f in futures)))

    async def answer(body: _Common, make: Any, respond: Any) -> JSONResponse:
        """Shared path: validate, queue, wait, and turn every failure into an error body."""
        try:
            check_model(body.model)
            requests = make(body)
        except _ClientError as exc:
            kind = "invalid_request_error"
            return _error(exc.status, str(exc), kind, exc.code)
        try:
            gens = await run(requests)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            detail = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
            return _error(500, f"the model failed on this request ({detail})", "server_error")
        failed = [g for g in gens if g.finish_reason == "error"]
        if failed:
            reason = failed[0].error or "no detail"
            return _error(500, f"the model failed on this request ({reason})", "server_error")
        gens = [apply_stop(g, body.stop) for g in gens]
        return JSONResponse(respond(body, requests, gens))

    def chat_response(body: ChatBody, _: list[ChatRequest], gens: list[Generation]) -> Any:
        [gen] = gens
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": gen.text},
                    "logprobs": chat_logprobs(gen) if body.logprobs else None,
                    "finish_reason": _finish(gen),
                }
            ],
            "usage": _usage(gens),
        }

    def completion_response(
        body: CompletionBody, requests: list[ChatRequest], gens: list[Generation]
    ) -> Any:
        top = body.logprobs or 0
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": name,
            "choices": [
                {
                    "index": i,
                    "text": gen.text,
                    "logprobs": (
                        completion_logprobs(gen, req.prompt or "", top)
                        if body.logprobs is not None
                        else None
                    ),
                    "finish_reason": _finish(gen),
                }
                for i, (req, gen) in enumerate(zip(requests, gens, strict=True))
            ],
            "usage": _usage(gens),
        }

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatBody) -> JSONResponse:
        return await answer(body, lambda b: [chat_request(b)], chat_response)

    @app.post("/v1/completions")
    async def completions(body: CompletionBody) -> JSONResponse:
        return await answer(body, completion_requests, completion_response)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": name, "object": "model", "created": created, "owned_by": "evolkit"}],
        }

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": name, "queued": worker.queued}

    return app


# -- running it ------------------------------------------------------------------------------


def listen(host: str, port: int) -> socket.socket:
    """Bind before loading a model, so a busy port is one clear line, at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise EvolkitError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}): "
            "is another server using it? pass another --port"
        ) from None
    sock.set_inheritable(True)
    return sock


def _config(app: FastAPI) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="on",
        # A stalled client must not hold shutdown forever.
        timeout_graceful_shutdown=5,
    )


def run_server(app: FastAPI, sock: socket.socket) -> None:
    """Serve on a socket from :func:`listen` until Ctrl-C (uvicorn shuts down cleanly)."""
    try:
        uvicorn.Server(_config(app)).run(sockets=[sock])
    finally:
        sock.close()


class ServerThread:
    """The server in a background thread on a loopback port, for notebooks and tests.

    ``port=0`` picks a free port; ``url`` is then the address to give ``--base-url``.
    """

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self._sock = listen(host, port)
        self.port = int(self._sock.getsockname()[1])
        self._server = uvicorn.Server(_config(app))
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self, timeout: float = 30.0) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise EvolkitError(f"the server on {self.host}:{self.port} did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 15.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = [
    "DEFAULT_MAX_TOKENS",
    "BatchWorker",
    "ChatBody",
    "CompletionBody",
    "ServerThread",
    "apply_stop",
    "chat_request",
    "create_app",
    "listen",
    "run_server",
]
