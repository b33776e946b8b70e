"""The OpenAI-compatible backend against a real HTTP server on 127.0.0.1.

A threaded ``http.server`` imitates ``/v1/chat/completions`` and ``/v1/models`` the way vLLM and
llama.cpp answer them, so the tests exercise the real httpx/asyncio path: sockets, concurrency,
status codes and headers. Retry waits go through a recording ``sleep`` hook, so nothing here
waits for a backoff it does not have to.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from evolkit.errors import BackendError, EvolkitError
from evolkit.models.base import ChatRequest, SamplingParams
from evolkit.models.openai import OpenAIBackend, normalize_base_url, parse_retry_after

Reply = tuple[int, dict[str, str], Any]
Responder = Callable[["FakeServer", dict[str, Any]], Reply]


def completion(
    text: str,
    finish: str = "stop",
    prompt_tokens: int = 5,
    completion_tokens: int = 3,
    logprobs: list[tuple[str, float]] | None = None,
) -> dict[str, Any]:
    """A chat-completions body shaped like vLLM's."""
    choice: dict[str, Any] = {
        "index": 0,
        "message": {"role": "assistant", "content": text},
        "finish_reason": finish,
    }
    if logprobs is not None:
        choice["logprobs"] = {
            "content": [
                {
                    "token": tok,
                    "logprob": lp,
                    "bytes": list(tok.encode()),
                    "top_logprobs": [
                        {"token": tok, "logprob": lp},
                        {"token": tok + "!", "logprob": lp - 3.0},
                    ],
                }
                for tok, lp in logprobs
            ]
        }
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "model": "test-model",
        "choices": [choice],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def echo_last_user(server: FakeServer, body: dict[str, Any]) -> Reply:
    """Answer with the last user message, so each output names its request."""
    user = [m["content"] for m in body["messages"] if m["role"] == "user"][-1]
    return 200, {}, completion(f"re: {user}")


class QuietServer(ThreadingHTTPServer):
    """Handler failures are part of the tests (dropped and timed-out connections): no traces."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


class FakeServer:
    """An OpenAI-compatible server on an ephemeral loopback port, recording what it sees."""

    def __init__(self, responder: Responder, models: list[str] | None = None) -> None:
        self.responder = responder
        self.models = models if models is not None else ["test-model"]
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.paths: list[str] = []
        self.calls = 0  # chat-completion calls, for responders that change over time
        self.inflight = 0
        self.max_inflight = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in separate writes

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, status: int, headers: dict[str, str], payload: Any) -> None:
                raw = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self) -> None:
                with outer.lock:
                    outer.paths.append(self.path)
                if self.path == "/v1/models":
                    data = [{"id": m, "object": "model"} for m in outer.models]
                    self._send(200, {}, {"object": "list", "data": data})
                else:
                    self._send(404, {}, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                with outer.lock:
                    outer.paths.append(self.path)
                    outer.bodies.append(body)
                    outer.headers.append({k.lower(): v for k, v in self.headers.items()})
                    outer.calls += 1
                    outer.inflight += 1
                    outer.max_inflight = max(outer.max_inflight, outer.inflight)
                reply: Reply = (404, {}, {"error": {"message": "no route"}})
                try:
                    if self.path == "/v1/chat/completions":
                        reply = outer.responder(outer, body)
                finally:
                    with outer.lock:
                        outer.inflight -= 1
                self._send(*reply)

        self.httpd = QuietServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve() -> Iterator[Callable[..., FakeServer]]:
    servers: list[FakeServer] = []

    def start(responder: Responder = echo_last_user, **kwargs: Any) -> FakeServer:
        server = FakeServer(responder, **kwargs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


class SleepRecorder:
    """Stands in for asyncio.sleep: records each wait, then yields without waiting."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        await asyncio.sleep(0)


def make_backend(url: str, **kwargs: Any) -> tuple[OpenAIBackend, SleepRecorder]:
    kwargs.setdefault("api_key", "")
    backend = OpenAIBackend("test-model", url, **kwargs)
    recorder = SleepRecorder()
    backend.sleep = recorder
    backend.rng.seed(0)
    return backend, recorder


def req(text: str, prefill: str = "", **params: Any) -> ChatRequest:
    return ChatRequest.of([{"role": "user", "content": text}], SamplingParams(**params), prefill)


def closed_port() -> int:
    """A loopback port nothing listens on: bind, read the number, close."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- basic mapping ------------------------------------------------------------------------------


def test_sampling_params_model_and_messages_are_sent(serve: Callable[..., FakeServer]) -> None:
    server = serve()
    backend, _ = make_backend(server.url)
    request = ChatRequest.of(
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=64, seed=42),
    )
    [gen] = backend.generate([request])
    assert gen.text == "re: hi"
    assert gen.finish_reason == "stop"
    body = server.bodies[0]
    assert server.paths == ["/v1/chat/completions"]
    assert body["model"] == "test-model"
    assert body["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
    ]
    assert (body["temperature"], body["top_p"], body["max_tokens"], body["seed"]) == (
        0.7,
        0.9,
        64,
        42,
    )
    assert "logprobs" not in body
    assert "continue_final_message" not in body
    assert "authorization" not in server.headers[0]


def test_length_finish_reason_and_usage_are_counted(serve: Callable[..., FakeServer]) -> None:
    def responder(server: FakeServer, body: dict[str, Any]) -> Reply:
        user = body["messages"][-1]["content"]
        n = len(user)
        return 200, {}, completion(user, "length" if n > 3 else "eos", n * 10, n)

    server = serve(responder)
    backend, _ = make_backend(server.url)
    gens = backend.generate([req("ab"), req("abcd")])
    assert [g.finish_reason for g in gens] == ["stop", "length"]
    assert [(g.prompt_tokens, g.completion_tokens) for g in gens] == [(20, 2), (40, 4)]
    backend.generate([req("xyz")])
    assert backend.usage.requests == 3
    assert backend.usage.prompt_tokens == 20 + 40 + 30
    assert backend.usage.completion_tokens == 2 + 4 + 3
    assert backend.usage.seconds > 0


def test_api_key_from_argument_and_environment(
    serve: Callable[..., FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = serve()
    OpenAIBackend("m", server.url, api_key="sk-arg").generate([req("a")])
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    OpenAIBackend("m", server.url).generate([req("b")])
    OpenAIBackend("m", server.url, api_key="").generate([req("c")])
    monkeypatch.delenv("OPENAI_API_KEY")
    OpenAIBackend("m", server.url).generate([req("d")])
    auth = [h.get("authorization") for h in server.headers]
    assert auth == ["Bearer sk-arg", "Bearer sk-env", None, None]


@pytest.mark.parametrize(
    "given",
    [
        "http://127.0.0.1:8000",
        "http://127.0.0.1:8000/",
        "http://127.0.0.1:8000/v1",
        "http://127.0.0.1:8000/v1/",
        "127.0.0.1:8000/v1",
        "http://127.0.0.1:8000/v1/chat/completions",
    ],
)
def test_base_url_with_or_without_v1(given: str) -> None:
    assert normalize_base_url(given) == "http://127.0.0.1:8000/v1"


def test_base_url_with_own_prefix_is_kept() -> None:
    assert normalize_base_url("http://127.0.0.1:4000/api/v1/") == "http://127.0.0.1:4000/api/v1"
    assert normalize_base_url("http://127.0.0.1/v1beta/openai") == "http://127.0.0.1/v1beta/openai"
    with pytest.raises(BackendError):
        normalize_base_url("  ")


def test_server_root_without_v1_reaches_v1_route(serve: Callable[..., FakeServer]) -> None:
    server = serve()
    backend, _ = make_backend(f"http://127.0.0.1:{server.port}")
    assert backend.generate([req("x")])[0].text == "re: x"
    assert server.paths == ["/v1/chat/completions"]


def test_empty_batch_makes_no_call(serve: Callable[..., FakeServer]) -> None:
    server = serve()
    backend, _ = make_backend(server.url)
    assert backend.generate([]) == []
    assert server.paths == []


# -- concurrency -------------------------------------------------------------------------------


def test_order_kept_and_concurrency_bounded(serve: Callable[..., FakeServer]) -> None:
    rng = random.Random(1)
    delays = [rng.uniform(0.0, 0.04) for _ in range(40)]

    def responder(server: FakeServer, body: dict[str, Any]) -> Reply:
        index = int(body["messages"][-1]["content"])
        time.sleep(delays[index])
        return 200, {}, completion(f"answer {index}")

    server = serve(responder)
    backend, _ = make_backend(server.url, concurrency=4)
    gens = backend.generate([req(str(i)) for i in range(40)])
    assert [g.text for g in gens] == [f"answer {i}" for i in range(40)]
    assert 1 < server.max_inflight <= 4
    assert backend.usage.requests == 40


def test_concurrency_one_is_sequential(serve: Callable[..., FakeServer]) -> None:
    def responder(server: FakeServer, body: dict[str, Any]) -> Reply:
        time.sleep(0.005)
        return echo_last_user(server, body)

    server = serve(responder)
    backend, _ = make_backend(server.url, concurrency=1)
    gens = backend.generate([req(str(i)) for i in range(6)])
    assert [g.text for g in gens] == [f"re: {i}" for i in range(6)]
    assert server.max_inflight == 1


def test_generate_works_inside_a_running_event_loop(serve: Callable[..., FakeServer]) -> None:
    server = serve()
    backend, _ = make_backend(server.url)

    async def caller() -> list[str]:
        return [g.text for g in backend.generate([req("a"), req("b")])]

    assert asyncio.run(caller()) == ["re: a", "re: b"]


# -- retries -------------------------------------------------------------------------------------


def fail_first(n: int, status: int, headers: dict[str, str] | None = None) -> Responder:
    """A responder that answers `status` to the first n calls, then succeeds."""

    def responder(server: FakeServer, body: dict[str, Any]) -> Reply:
        if server.calls <= n:
            return status, headers or {}, {"error": {"message": f"busy ({status})"}}
        return echo_last_user(server, body)

    return responder


def test_429_with_retry_after_is_honoured(serve: Callable[..., FakeServer]) -> None:
    server = serve(fail_first(1, 429, {"Retry-After": "0.2"}))
    backend, recorder = make_backend(server.url)
    [gen] = backend.generate([req("q")])
    assert gen.text == "re: q"
    assert recorder.waits == [0.2]
    assert server.calls == 2


def test_retry_after_really_waits(serve: Callable[..., FakeServer]) -> None:
    server = serve(fail_first(1, 429, {"Retry-After": "0.2"}))
    backend = OpenAIBackend("test-model", server.url, api_key="")
    start = time.perf_counter()
    assert backend.generate([req("q")])[0].text == "re: q"
    assert time.perf_counter() - start >= 0.18


def test_retry_after_is_capped_by_backoff_max(serve: Callable[..., FakeServer]) -> None:
    server = serve(fail_first(1, 429, {"Retry-After": "3600"}))
    backend, recorder = make_backend(server.url, backoff_max=0.05)
    assert backend.generate([req("q")])[0].text == "re: q"
    assert recorder.waits == [0.05]


def test_retry_after_as_http_date(serve: Callable[..., FakeServer]) -> None:
    server = serve(fail_first(1, 429, {"Retry-After": formatdate(time.time() + 5, usegmt=True)}))
    backend, recorder = make_backend(server.url, backoff_max=30)
    assert backend.generate([req("q")])[0].text == "re: q"
    [wait] = recorder.waits
    assert 3.0 <= wait <= 5.0


def test_parse_retry_after_forms() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("0.25") == 0.25
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after(formatdate(now + 7, usegmt=True), now=now) == pytest.approx(7, abs=1)
    assert parse_retry_after(formatdate(now - 60, usegmt=True), now=now) == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None


def test_503_is_retried_with_jittered_backoff(serve: Callable[..., FakeServer]) -> None:
    server = serve(fail_first(3, 503))
    backend, recorder = make_backend(server.url, backoff_base=0.1, backoff_max=0.3)
    assert backend.generate([req("q")])[0].text == "re: q"
    assert server.calls == 4
    assert len(recorder.waits) == 3
    for retry, wait in enumerate(recorder.waits):
        assert 0.0 <= wait <= min(0.3, 0.1 * 2**retry)


def test_persistent_503_raises_one_line(serve: Callable[..., FakeServer]) -> None:
    server = serve(fail_first(10**6, 503))
    backend, recorder = make_backend(server.url, max_retries=2)
    with pytest.raises(BackendError) as info:
        backend.generate([req("q")])
    message = str(info.value)
    assert "\n" not in message
    assert "after 3 tries" in message and "HTTP 503" in message and server.url in message
    assert server.calls == 3
    assert len(recorder.waits) == 2


def test_timeout_is_retried_then_reported(serve: Callable[..., FakeServer]) -> None:
    def responder(server: FakeServer, body: dict[str, Any]) -> Reply:
        if server.calls == 1:
            time.sleep(0.6)
        return echo_last_user(server, body)

    server = serve(responder)
    backend, recorder = make_backend(server.url, timeout=0.2)
    assert backend.generate([req("slow")])[0].text == "re: slow"
    assert server.calls == 2 and len(recorder.waits) == 1

    def always_slow(server: FakeServer, body: dict[str, Any]) -> Reply:
        time.sleep(0.6)
        return echo_last_user(server, body)

    slow = serve(always_slow)
    backend, _ = make_backend(slow.url, timeout=0.2, max_retries=1)
    with pytest.raises(BackendError, match=r"did not answer within 0\.2 s, 2 tries"):
        backend.generate([req("q")])


def test_dropped_connection_is_retried(serve: Callable[..., FakeServer]) -> None:
    def responder(server: FakeServer, body: dict[str, Any]) -> Reply:
        if server.calls == 1:
            raise ConnectionAbortedError("the handler dies: the socket closes with no answer")
        return echo_last_user(server, body)

    server = serve(responder)
    backend, recorder = make_backend(server.url)
    assert backend.generate([req("q")])[0].text == "re: q"
    assert server.calls == 2 and len(recorder.waits) == 1


def test_unreachable_server_raises_one_clear_line() -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    backend, recorder = make_backend(url, max_retries=2, backoff_base=0.001)
    with pytest.raises(BackendError) as info:
        backend.generate([req("a"), req("b"), req("c")])
    message = str(info.value)
    assert message == (
        f"cannot reach the OpenAI-compatible server at {url} after 3 tries "
        "(connection refused): is it running? check --base-url"
    )
    assert len(recorder.waits) >= 2


# -- errors that belong to one row ---------------------------------------------------------------


def test_400_becomes_an_error_row_without_retry(serve: Callable[..., FakeServer]) -> None:
    too_long = "This model's maximum context length is 2048 tokens."

    def responder(server: FakeServer, body: dict[str, Any]) -> Reply:
        if body["messages"][-1]["content"] == "huge":
            # vLLM's error dialect: the message at the top level.
            return 400, {}, {"object": "error", "message": too_long, "code": 400}
        return echo_last_user(server, body)

    server = serve(responder)
    backend, recorder = make_backend(server.url)
    gens = backend.generate([req("a"), req("huge"), req("b")])
    assert [g.text for g in gens] == ["re: a", "", "re: b"]
    assert gens[1].finish_reason == "error"
    assert gens[1].error == f"HTTP 400: {too_long}"
    assert server.calls == 3
    assert recorder.waits == []
    assert backend.usage.requests == 3


def test_error_body_in_openai_dialect(serve: Callable[..., FakeServer]) -> None:
    def responder(server: FakeServer, body: dict[str, Any]) -> Reply:
        return 422, {}, {"error": {"message": "bad top_p", "type": "invalid_request_error"}}

    server = serve(responder)
    backend, _ = make_backend(server.url)
    [gen] = backend.generate([req("a")])
    assert (gen.finish_reason, gen.error) == ("error", "HTTP 422: bad top_p")


def test_unknown_model_raises_with_served_list(serve: Callable[..., FakeServer]) -> None:
    def responder(server: FakeServer, body: dict[str, Any]) -> Reply:
        return (
            404,
            {},
            {"object": "error", "message": f"The model `{body['model']}` does not exist."},
        )

    server = serve(responder, models=["qwen2.5-7b", "llama-3-8b"])
    backend, _ = make_backend(server.url)
    with pytest.raises(BackendError) as info:
        backend.generate([req("a"), req("b")])
    message = str(info.value)
    assert "\n" not in message
    assert "model 'test-model' is not served" in message
    assert "served: qwen2.5-7b, llama-3-8b" in message


def test_unauthorized_raises_asking_for_a_key(serve: Callable[..., FakeServer]) -> None:
    server = serve(lambda s, b: (401, {}, {"error": {"message": "Unauthorized"}}))
    backend, recorder = make_backend(server.url)
    with pytest.raises(BackendError, match="OPENAI_API_KEY"):
        backend.generate([req("a")])
    assert recorder.waits == []


def test_list_models(serve: Callable[..., FakeServer]) -> None:
    server = serve(models=["a", "b"])
    backend, _ = make_backend(server.url)
    assert backend.list_models() == ["a", "b"]
    dead, _ = make_backend(f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(BackendError, match="connection refused"):
        dead.list_models()


# -- logprobs and prefill ------------------------------------------------------------------------


def test_logprobs_requested_and_parsed(serve: Callable[..., FakeServer]) -> None:
    tokens = [("Hello", -0.1), (",", -0.5), (" world", -1.25)]
    server = serve(lambda s, b: (200, {}, completion("Hello, world", logprobs=tokens)))
    backend, _ = make_backend(server.url)
    [gen] = backend.generate([req("a", logprobs=True, top_logprobs=2)])
    assert gen.tokens == ["Hello", ",", " world"]
    assert gen.token_logprobs == [-0.1, -0.5, -1.25]
    # The fake server lists the chosen token first, then one made-up runner-up per position.
    assert gen.top_logprobs == [
        [("Hello", -0.1), ("Hello!", -3.1)],
        [(",", -0.5), (",!", -3.5)],
        [(" world", -1.25), (" world!", -4.25)],
    ]
    assert server.bodies[0]["logprobs"] is True
    assert server.bodies[0]["top_logprobs"] == 2


def test_logprobs_without_alternatives_leave_top_logprobs_unset(
    serve: Callable[..., FakeServer],
) -> None:
    tokens = [("Hi", -0.2)]
    server = serve(lambda s, b: (200, {}, completion("Hi", logprobs=tokens)))
    backend, _ = make_backend(server.url)
    [gen] = backend.generate([req("a", logprobs=True)])
    assert server.bodies[0]["top_logprobs"] == 0
    assert (gen.tokens, gen.token_logprobs, gen.top_logprobs) == (["Hi"], [-0.2], None)


def test_logprobs_absent_when_not_requested_or_not_sent(serve: Callable[..., FakeServer]) -> None:
    server = serve()
    backend, _ = make_backend(server.url)
    plain, missing = backend.generate([req("a"), req("b", logprobs=True)])
    assert plain.token_logprobs is None
    assert missing.token_logprobs is None


def test_prefill_is_sent_as_final_assistant_message(serve: Callable[..., FakeServer]) -> None:
    server = serve(lambda s, b: (200, {}, completion(" a harder question.")))
    backend, _ = make_backend(server.url)
    [gen] = backend.generate([req("rewrite it", prefill="Rewritten:")])
    assert gen.text == " a harder question."
    body = server.bodies[0]
    assert body["messages"] == [
        {"role": "user", "content": "rewrite it"},
        {"role": "assistant", "content": "Rewritten:"},
    ]
    assert body["continue_final_message"] is True
    assert body["add_generation_prompt"] is False


def test_echoed_prefill_is_stripped_with_its_logprobs(serve: Callable[..., FakeServer]) -> None:
    tokens = [("Re", -0.01), ("written:", -0.02), (" harder", -0.7), ("!", -0.3)]
    server = serve(lambda s, b: (200, {}, completion("Rewritten: harder!", logprobs=tokens)))
    backend, _ = make_backend(server.url)
    [gen] = backend.generate([req("rewrite it", prefill="Rewritten:", logprobs=True)])
    assert gen.text == " harder!"
    assert gen.token_logprobs == [-0.7, -0.3]
    assert gen.tokens == [" harder", "!"]


# -- what is sent (issue 7, item 3) ------------------------------------------------------------


def test_repetition_penalty_is_sent_only_when_set(serve: Callable[..., FakeServer]) -> None:
    server = serve()
    backend, _ = make_backend(server.url)
    backend.generate([req("unset")])
    backend.generate([req("set", repetition_penalty=1.15)])
    backend.generate([req("neutral", repetition_penalty=1.0)])
    unset, penalised, neutral = server.bodies
    # The official API rejects the field, so an unset penalty must not appear at all.
    assert "repetition_penalty" not in unset
    assert penalised["repetition_penalty"] == 1.15
    assert neutral["repetition_penalty"] == 1.0


def test_extra_body_is_merged_into_every_request(serve: Callable[..., FakeServer]) -> None:
    server = serve()
    extra = {"top_k": 20, "min_p": 0.05, "temperature": 0.3}
    backend, _ = make_backend(server.url, extra_body=extra, concurrency=2)
    backend.generate([req("a", temperature=0.9), req("b"), req("c", prefill="P:")])
    assert len(server.bodies) == 3
    for body in server.bodies:
        assert (body["top_k"], body["min_p"], body["temperature"]) == (20, 0.05, 0.3)
        assert body["model"] == "test-model"
    plain, _ = make_backend(server.url)
    assert "top_k" not in plain.payload(req("d"))
    # Fields like top_k change what the model writes: no cache sharing with the plain backend.
    assert backend.cache_id != plain.cache_id


def test_extra_body_must_be_json(serve: Callable[..., FakeServer]) -> None:
    server = serve()
    with pytest.raises(BackendError, match="extra_body"):
        OpenAIBackend("m", server.url, extra_body={"x": object()})


# -- retries counted (issue 7, item 8) -----------------------------------------------------------


def test_retries_are_counted_by_cause(serve: Callable[..., FakeServer]) -> None:
    # Per request (sent one at a time): the faults its first tries meet, then success.
    plan = {"a": [429, 503, 408], "b": ["slow"], "c": ["drop", 500]}
    seen: dict[str, int] = {}

    def responder(server: FakeServer, body: dict[str, Any]) -> Reply:
        user = body["messages"][-1]["content"]
        n = seen.get(user, 0)
        seen[user] = n + 1
        faults = plan[user]
        if n < len(faults):
            fault = faults[n]
            if fault == "slow":
                time.sleep(0.6)
            elif fault == "drop":
                raise ConnectionAbortedError("the handler dies: no answer")
            else:
                assert isinstance(fault, int)
                return fault, {}, {"error": {"message": f"fault {fault}"}}
        return echo_last_user(server, body)

    server = serve(responder)
    backend, recorder = make_backend(server.url, concurrency=1, timeout=0.3)
    gens = backend.generate([req("a"), req("b"), req("c")])
    assert [g.text for g in gens] == ["re: a", "re: b", "re: c"]
    assert backend.usage.retries == {"429": 1, "5xx": 2, "408": 1, "timeout": 1, "connection": 1}
    assert len(recorder.waits) == 6


def test_refused_connections_are_counted_and_the_last_try_is_not() -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    backend, _ = make_backend(url, max_retries=2, backoff_base=0.001)
    with pytest.raises(BackendError, match="connection refused"):
        backend.generate([req("a")])
    assert backend.usage.retries == {"connection": 2}


# -- a failure that hits every row (issue 7, item 2) ---------------------------------------------


def test_identical_400s_in_a_row_stop_the_run(serve: Callable[..., FakeServer]) -> None:
    # The request id differs each time; digits are ignored when comparing messages.
    def responder(server: FakeServer, body: dict[str, Any]) -> Reply:
        message = f"Unrecognized request argument supplied: repetition_penalty (id {server.calls})"
        return 400, {}, {"error": {"message": message, "type": "invalid_request_error"}}

    server = serve(responder)
    backend, recorder = make_backend(server.url, concurrency=1)
    with pytest.raises(BackendError) as info:
        backend.generate([req(str(i)) for i in range(10)])
    message = str(info.value)
    assert "\n" not in message
    assert "HTTP 400 to 3 requests in a row" in message
    assert "Unrecognized request argument supplied: repetition_penalty (id 3)" in message
    assert server.calls == 3
    assert recorder.waits == []


def test_the_limit_is_a_setting(serve: Callable[..., FakeServer]) -> None:
    server = serve(lambda s, b: (400, {}, {"error": {"message": "no"}}))
    backend, _ = make_backend(server.url, concurrency=1, max_consecutive_errors=5)
    with pytest.raises(BackendError, match="5 requests in a row"):
        backend.generate([req(str(i)) for i in range(10)])
    assert server.calls == 5
    never, _ = make_backend(server.url, concurrency=1, max_consecutive_errors=0)
    gens = never.generate([req(str(i)) for i in range(6)])
    assert [g.error for g in gens] == ["HTTP 400: no"] * 6


def test_mixed_errors_or_a_success_between_do_not_stop(serve: Callable[..., FakeServer]) -> None:
    replies: dict[str, Reply] = {
        "long": (400, {}, {"object": "error", "message": "prompt is too long"}),
        "top_p": (422, {}, {"error": {"message": "bad top_p"}}),
        "other": (400, {}, {"object": "error", "message": "bad input"}),
    }

    def responder(server: FakeServer, body: dict[str, Any]) -> Reply:
        user = body["messages"][-1]["content"]
        return replies[user] if user in replies else echo_last_user(server, body)

    server = serve(responder)
    backend, _ = make_backend(server.url, concurrency=1)
    mixed = ["long", "top_p", "long", "other", "long", "top_p"]
    gens = backend.generate([req(x) for x in mixed])
    assert [g.finish_reason for g in gens] == ["error"] * 6
    assert gens[0].error == "HTTP 400: prompt is too long"
    # Two identical errors, a success, two more: the success resets the count.
    gens = backend.generate([req(x) for x in ["long", "long", "ok", "long", "long"]])
    assert [g.finish_reason for g in gens] == ["error", "error", "stop", "error", "error"]


# -- environment and identity (issue 11, item 5; issue 7, item 4) -------------------------------


def test_base_url_and_key_from_the_environment(
    serve: Callable[..., FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = serve()
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{server.port}")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    backend = OpenAIBackend("test-model")
    assert backend.base_url == server.url
    assert backend.generate([req("a")])[0].text == "re: a"
    assert server.headers[0]["authorization"] == "Bearer sk-env"
    # An explicit argument wins over the variable, as with the official client.
    other = OpenAIBackend("test-model", "http://127.0.0.1:9/v1")
    assert other.base_url == "http://127.0.0.1:9/v1"


def test_no_base_url_anywhere_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from evolkit.models import BackendFactory, ModelSpec

    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(BackendError) as info:
        OpenAIBackend("m")
    message = str(info.value)
    assert "--base-url" in message and "OPENAI_BASE_URL" in message and "\n" not in message
    # The factory leaves the decision to the backend, so the environment works from the CLI.
    with pytest.raises(BackendError, match="OPENAI_BASE_URL"):
        BackendFactory(None).get(ModelSpec(model="m", backend="openai"))
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:8000/v1")
    built = BackendFactory(None).get(ModelSpec(model="m", backend="openai"))
    assert isinstance(built, OpenAIBackend) and built.base_url == "http://127.0.0.1:8000/v1"


def test_cache_id_is_server_and_model() -> None:
    a = OpenAIBackend("llama", "http://127.0.0.1:8000", api_key="")
    b = OpenAIBackend("llama", "127.0.0.1:8000/v1/", api_key="")
    c = OpenAIBackend("llama", "http://127.0.0.1:8001/v1", api_key="")
    assert a.cache_id == b.cache_id == "http://127.0.0.1:8000/v1|llama"
    assert c.cache_id != a.cache_id
    request = req("same prompt")
    assert request.key(a.cache_id) != request.key(c.cache_id)


def test_model_spec_carries_timeout_and_concurrency(serve: Callable[..., FakeServer]) -> None:
    from evolkit.models import BackendFactory, ModelSpec

    server = serve()
    spec = ModelSpec(
        model="m",
        backend="openai",
        base_url=server.url,
        timeout=0.5,
        concurrency=3,
        max_consecutive_errors=7,
    )
    backend = BackendFactory(None).get(spec)
    assert isinstance(backend, OpenAIBackend)
    assert (backend.timeout, backend.concurrency, backend.max_consecutive_errors) == (0.5, 3, 7)
    default = BackendFactory(None).get(ModelSpec(model="m", backend="openai", base_url=server.url))
    assert isinstance(default, OpenAIBackend)
    assert (default.timeout, default.concurrency, default.max_consecutive_errors) == (120.0, 16, 3)


def test_max_consecutive_errors_is_a_run_setting() -> None:
    from evolkit.scenarios.evol_instruct import EvolConfig

    cfg = EvolConfig(backend="openai", max_consecutive_errors=0)
    assert cfg.model_spec("m").max_consecutive_errors == 0
    assert EvolConfig().model_spec("m").max_consecutive_errors == 3
    with pytest.raises(EvolkitError, match="max_consecutive_errors"):
        EvolConfig(max_consecutive_errors=-1).check()


def test_factory_usage_reports_retries(serve: Callable[..., FakeServer]) -> None:
    from evolkit.models import BackendFactory, ModelSpec

    server = serve(fail_first(1, 429, {"Retry-After": "0"}))
    factory = BackendFactory(None)
    backend = factory.get(ModelSpec(model="m", backend="openai", base_url=server.url))
    backend.generate([req("a")])
    assert factory.usage()["m"]["retries"] == {"429": 1}
