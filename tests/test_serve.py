"""`evolkit serve` for real: uvicorn on a loopback port, spoken to over sockets.

Mechanics (batching, error bodies, the request mapping) run against a fake backend that records
every generate call; the official `openai` client and evolkit's own OpenAIBackend run against
the tiny random model, so tokenizer, chat template, logprobs and batching are all real.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from evolkit.models.base import Backend, ChatRequest, Generation, SamplingParams
from evolkit.serve import ServerThread, apply_stop, create_app


class RecordingBackend(Backend):
    """Answers each request with its own last user message (or prompt); records each call."""

    def __init__(self, fail: Exception | None = None) -> None:
        super().__init__()
        self.model_id = "fake-model"
        self.calls: list[list[ChatRequest]] = []
        self.fail = fail
        self.threads: set[str] = set()

    def generate(self, requests: Sequence[ChatRequest]) -> list[Generation]:
        self.calls.append(list(requests))
        self.threads.add(threading.current_thread().name)
        if self.fail is not None:
            raise self.fail
        if any(r.messages and r.messages[-1][1] == "poison" for r in requests):
            raise ValueError("this request breaks the chat template")
        out = []
        for r in requests:
            text = r.prompt if r.prompt is not None else f"re: {r.messages[-1][1]}"
            tokens = text.split(" ")
            tokens = [t if i == 0 else " " + t for i, t in enumerate(tokens)]
            lps = [-0.5 - i for i in range(len(tokens))] if r.params.logprobs else None
            tops = (
                [
                    [(t, lp), ("x", lp - 1.0)][: r.params.top_logprobs]
                    for t, lp in zip(tokens, lps, strict=True)
                ]
                if lps is not None and r.params.top_logprobs > 0
                else None
            )
            out.append(
                Generation(
                    text=text,
                    finish_reason="length",
                    prompt_tokens=7,
                    completion_tokens=len(tokens),
                    tokens=tokens if lps is not None else None,
                    token_logprobs=lps,
                    top_logprobs=tops,
                )
            )
        return out


@pytest.fixture
def serving() -> Iterator[Callable[..., ServerThread]]:
    servers: list[ServerThread] = []

    def start(backend: Backend, **kwargs: Any) -> ServerThread:
        server = ServerThread(create_app(backend, **kwargs)).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "fake-model", "messages": [{"role": "user", "content": text}], **extra}


# -- batching ------------------------------------------------------------------------------------


def test_concurrent_requests_share_generate_calls(serving: Callable[..., ServerThread]) -> None:
    backend = RecordingBackend()
    # A long window, closed early once max_batch requests are in: the batch size, not the
    # clock, decides, so a slow machine cannot make this flaky.
    server = serving(backend, max_batch=8, batch_wait_ms=5000)

    async def send_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            return await asyncio.gather(
                *(
                    client.post(f"{server.url}/chat/completions", json=chat(f"q{i}"))
                    for i in range(8)
                )
            )

    responses = asyncio.run(send_all())
    assert [r.status_code for r in responses] == [200] * 8
    answers = [r.json()["choices"][0]["message"]["content"] for r in responses]
    assert answers == [f"re: q{i}" for i in range(8)]
    assert len(backend.calls) < 8
    assert sum(len(c) for c in backend.calls) == 8
    # The model is only ever touched by the one worker thread.
    assert backend.threads == {"evolkit-serve-model"}


def test_a_bad_request_does_not_fail_its_batch_mates(
    serving: Callable[..., ServerThread],
) -> None:
    backend = RecordingBackend()
    server = serving(backend, max_batch=4, batch_wait_ms=5000)

    async def send_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            texts = ["a", "poison", "b", "c"]
            return await asyncio.gather(
                *(client.post(f"{server.url}/chat/completions", json=chat(t)) for t in texts)
            )

    ok_a, bad, ok_b, ok_c = asyncio.run(send_all())
    assert [r.status_code for r in (ok_a, bad, ok_b, ok_c)] == [200, 500, 200, 200]
    assert ok_b.json()["choices"][0]["message"]["content"] == "re: b"
    assert "breaks the chat template" in bad.json()["error"]["message"]
    # One batch call that failed, then one call per request.
    assert [len(c) for c in backend.calls] == [4, 1, 1, 1, 1]


def test_a_lone_request_does_not_wait_for_a_full_batch(
    serving: Callable[..., ServerThread],
) -> None:
    backend = RecordingBackend()
    server = serving(backend, max_batch=64, batch_wait_ms=1)
    response = httpx.post(f"{server.url}/chat/completions", json=chat("alone"), timeout=30)
    assert response.json()["choices"][0]["message"]["content"] == "re: alone"
    assert [len(c) for c in backend.calls] == [1]


# -- the request mapping ------------------------------------------------------------------------


def test_sampling_fields_reach_the_backend(serving: Callable[..., ServerThread]) -> None:
    backend = RecordingBackend()
    server = serving(backend, batch_wait_ms=0)
    body = chat(
        "hi",
        temperature=0.3,
        top_p=0.8,
        max_completion_tokens=9,
        seed=5,
        repetition_penalty=1.1,
        logprobs=True,
        top_logprobs=2,
    )
    body["messages"].insert(0, {"role": "developer", "content": "be brief"})
    body["messages"].append({"role": "assistant", "content": "Sure:"})
    body["continue_final_message"] = True
    assert httpx.post(f"{server.url}/chat/completions", json=body, timeout=30).status_code == 200
    [[request]] = backend.calls
    assert request.params == SamplingParams(
        temperature=0.3,
        top_p=0.8,
        max_new_tokens=9,
        seed=5,
        repetition_penalty=1.1,
        logprobs=True,
        top_logprobs=2,
    )
    assert request.messages == (("system", "be brief"), ("user", "hi"))
    assert request.prefill == "Sure:"


def test_chat_response_shape_with_logprobs(serving: Callable[..., ServerThread]) -> None:
    server = serving(RecordingBackend(), batch_wait_ms=0)
    body = chat("a b", logprobs=True, top_logprobs=2)
    data = httpx.post(f"{server.url}/chat/completions", json=body, timeout=30).json()
    [choice] = data["choices"]
    assert data["object"] == "chat.completion" and data["model"] == "fake-model"
    assert choice["finish_reason"] == "length"
    assert data["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    content = choice["logprobs"]["content"]
    assert [c["token"] for c in content] == ["re:", " a", " b"]
    assert [c["logprob"] for c in content] == [-0.5, -1.5, -2.5]
    assert content[1]["bytes"] == list(b" a")
    assert content[1]["top_logprobs"] == [
        {"token": " a", "logprob": -1.5, "bytes": list(b" a")},
        {"token": "x", "logprob": -2.5, "bytes": list(b"x")},
    ]
    plain = httpx.post(f"{server.url}/chat/completions", json=chat("a"), timeout=30).json()
    assert plain["choices"][0]["logprobs"] is None


def test_completions_take_raw_prompts(serving: Callable[..., ServerThread]) -> None:
    backend = RecordingBackend()
    server = serving(backend, batch_wait_ms=0)
    body = {"model": "fake-model", "prompt": "Once upon", "max_tokens": 4, "logprobs": 1}
    data = httpx.post(f"{server.url}/completions", json=body, timeout=30).json()
    [[request]] = backend.calls
    assert request.prompt == "Once upon" and request.params.max_new_tokens == 4
    [choice] = data["choices"]
    assert data["object"] == "text_completion"
    assert choice["text"] == "Once upon"
    assert choice["logprobs"]["tokens"] == ["Once", " upon"]
    assert choice["logprobs"]["text_offset"] == [9, 13]
    assert choice["logprobs"]["top_logprobs"] == [{"Once": -0.5}, {" upon": -1.5}]
    many = {"model": "fake-model", "prompt": ["one", "two"]}
    data = httpx.post(f"{server.url}/completions", json=many, timeout=30).json()
    assert [c["text"] for c in data["choices"]] == ["one", "two"]
    assert [c["index"] for c in data["choices"]] == [0, 1]


def test_stop_strings_cut_text_and_token_details() -> None:
    gen = Generation(
        "one two. three",
        "length",
        completion_tokens=4,
        tokens=["one", " two", ".", " three"],
        token_logprobs=[-1.0, -2.0, -3.0, -4.0],
    )
    cut = apply_stop(gen, [".", "zzz"])
    assert (cut.text, cut.finish_reason) == ("one two", "stop")
    assert cut.tokens == ["one", " two"] and cut.token_logprobs == [-1.0, -2.0]
    assert cut.completion_tokens == 2
    assert apply_stop(gen, "absent") is gen


def test_models_and_health(serving: Callable[..., ServerThread]) -> None:
    server = serving(RecordingBackend())
    models = httpx.get(f"{server.url}/models", timeout=30).json()
    assert [m["id"] for m in models["data"]] == ["fake-model"]
    health = httpx.get(f"http://127.0.0.1:{server.port}/health", timeout=30)
    assert health.status_code == 200 and health.json()["status"] == "ok"


# -- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"{not json", 400, "invalid request"),
        ({"model": "fake-model"}, 400, "messages"),
        ({"model": "fake-model", "messages": []}, 400, "messages"),
        (chat("x", n=2), 400, "n=2"),
        (chat("x", stream=True), 400, "streaming"),
        (chat("x", temperature=-1), 400, "temperature"),
        (chat("x", top_logprobs=3), 400, "logprobs=true"),
        (chat("x", top_logprobs=50, logprobs=True), 400, "top_logprobs"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, 400, "role"),
        ({"messages": [{"role": "tool", "content": "x"}]}, 400, "role"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            400,
            "only text",
        ),
        (chat("x", model="gpt-9"), 404, "does not exist"),
    ],
)
def test_bad_requests_get_an_openai_error(
    serving: Callable[..., ServerThread], body: Any, status: int, needle: str
) -> None:
    backend = RecordingBackend()
    server = serving(backend)
    url = f"{server.url}/chat/completions"
    if isinstance(body, bytes):
        response = httpx.post(url, content=body, timeout=30)
    else:
        response = httpx.post(url, json=body, timeout=30)
    assert response.status_code == status
    error = response.json()["error"]
    assert needle in error["message"]
    assert error["type"] == "invalid_request_error"
    assert backend.calls == []


def test_unknown_route_is_a_json_404(serving: Callable[..., ServerThread]) -> None:
    server = serving(RecordingBackend())
    response = httpx.get(f"{server.url}/nothing", timeout=30)
    assert response.status_code == 404
    assert "message" in response.json()["error"]


def test_a_failing_model_is_a_500_without_traceback(serving: Callable[..., ServerThread]) -> None:
    server = serving(RecordingBackend(fail=RuntimeError("CUDA out of memory\n  more lines")))
    response = httpx.post(f"{server.url}/chat/completions", json=chat("x"), timeout=30)
    assert response.status_code == 500
    message = response.json()["error"]["message"]
    assert message == "the model failed on this request (RuntimeError: CUDA out of memory)"
    assert "Traceback" not in response.text
    # The worker survives a failed batch.
    server_ok = httpx.get(f"{server.url}/models", timeout=30)
    assert server_ok.status_code == 200


# -- the real thing: tiny model, official client, evolkit's own backend --------------------------


@pytest.fixture(scope="module")
def tiny_server(tiny_model_dir: Path) -> Iterator[tuple[ServerThread, Backend]]:
    from evolkit.models.local import LocalBackend

    backend = LocalBackend(str(tiny_model_dir), batch_size=8)
    with ServerThread(create_app(backend, max_batch=8, batch_wait_ms=20)) as server:
        yield server, backend


def test_official_openai_client_works(tiny_server: tuple[ServerThread, Backend]) -> None:
    openai = pytest.importorskip("openai")
    server, backend = tiny_server
    client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=60)
    assert [m.id for m in client.models.list().data] == [backend.model_id]
    answer = client.chat.completions.create(
        model=backend.model_id,
        messages=[{"role": "user", "content": "Name a colour."}],
        max_tokens=6,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    choice = answer.choices[0]
    assert isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert answer.usage is not None and answer.usage.completion_tokens > 0
    assert choice.logprobs is not None and choice.logprobs.content
    assert all(entry.logprob <= 0.0 for entry in choice.logprobs.content)
    text = client.completions.create(
        model=backend.model_id, prompt="The sky is", max_tokens=5, temperature=0, logprobs=0
    )
    assert isinstance(text.choices[0].text, str)
    assert text.choices[0].logprobs is not None
    assert all(v <= 0.0 for v in text.choices[0].logprobs.token_logprobs or [])
    with pytest.raises(openai.BadRequestError, match="n=3"):
        client.chat.completions.create(
            model=backend.model_id, messages=[{"role": "user", "content": "x"}], n=3
        )


def test_evolkit_openai_backend_matches_the_local_backend(
    tiny_server: tuple[ServerThread, Backend],
) -> None:
    from evolkit.models.openai import OpenAIBackend

    server, local = tiny_server
    params = SamplingParams(temperature=0.0, max_new_tokens=6, logprobs=True)
    requests = [
        ChatRequest.of([{"role": "user", "content": "Write a haiku."}], params),
        ChatRequest.of([{"role": "user", "content": "Rewrite it."}], params, prefill="Sure:"),
        ChatRequest(messages=(), params=params, prompt="Plain text, no template"),
    ]
    # One request at a time on both sides, so batch padding cannot make them differ.
    remote = OpenAIBackend(local.model_id, server.url, api_key="", concurrency=1, timeout=60)
    over_http = remote.generate(requests[:2])
    direct = [local.generate([r])[0] for r in requests]
    assert [g.text for g in over_http] == [g.text for g in direct[:2]]
    assert [g.finish_reason for g in over_http] == [g.finish_reason for g in direct[:2]]
    for got, want in zip(over_http, direct, strict=False):
        assert got.token_logprobs == pytest.approx(want.token_logprobs, abs=1e-5)
    assert remote.usage.completion_tokens == sum(g.completion_tokens for g in direct[:2])
    # A raw prompt goes through /v1/completions, untouched by the chat template.
    raw = httpx.post(
        f"{server.url}/completions",
        json={"prompt": requests[2].prompt, "max_tokens": 6, "temperature": 0},
        timeout=60,
    ).json()
    assert raw["choices"][0]["text"] == direct[2].text
