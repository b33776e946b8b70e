"""A backend for any server that speaks the OpenAI chat-completions API over HTTP.

vLLM, SGLang, llama.cpp server, Ollama and TGI all serve ``POST /v1/chat/completions``, so one
client covers every way a user may already host a model, on this machine or on a GPU box.

Callers see a synchronous ``generate``: the pipeline stays simple while the requests themselves
run concurrently on an asyncio event loop (a batch of 64 rows against a vLLM server should take
the time of the slowest row, not the sum of all rows).

Failure policy, chosen so that a run never silently throws data away and never dies for one row:

* 429, 408, 5xx, timeouts and connection errors are transient: retried with exponential backoff
  and full jitter, honouring ``Retry-After``. If they persist, the server is down or overloaded
  for everyone, so :class:`~evolkit.errors.BackendError` stops the batch with one clear line.
* 401/403 (bad key) and 404/405 (wrong URL or model name) would fail every row the same way:
  they raise :class:`~evolkit.errors.BackendError` at once, naming what to fix.
* Any other 4xx (typically 400 "prompt longer than the context") belongs to that row alone: it
  comes back as a ``Generation`` with ``finish_reason="error"`` so the caller can reject the row.
  Unless the same error comes back for ``max_consecutive_errors`` requests in a row: then it is
  the request settings (a field the server refuses, a context too small for ``max_tokens``), not
  the rows, and :class:`~evolkit.errors.BackendError` stops the run with the server's message.

Only fields the server is sure to understand are sent: the OpenAI ones, plus
``repetition_penalty`` when the user set it and whatever ``extra_body`` holds.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils
import json
import os
import random
import re
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import timezone
from typing import Any, TypeVar

import httpx

from evolkit.errors import BackendError
from evolkit.models.base import Backend, ChatRequest, Generation

# Statuses worth retrying: rate limits, request timeouts and server-side failures.
_RETRY_STATUSES = frozenset({408, 429})
# Statuses that would fail every row identically: configuration, not data, is wrong.
_FATAL_STATUSES = frozenset({401, 403, 404, 405})

_MAX_ERROR_CHARS = 500


def normalize_base_url(base_url: str) -> str:
    """Return the API root that ``/chat/completions`` and ``/models`` hang off.

    Accepted forms, all meaning the same server:
    ``http://host:8000``, ``http://host:8000/``, ``http://host:8000/v1``, ``host:8000/v1/``
    and even a pasted ``http://host:8000/v1/chat/completions``.
    A URL with no path gets ``/v1`` appended (what every local server uses); a URL with any
    other path is used as given, so gateways with their own prefix (``.../api/v1``,
    ``.../v1beta/openai``) keep working.
    """
    url = base_url.strip().rstrip("/")
    if not url:
        raise BackendError("the OpenAI-compatible backend needs a base URL: pass --base-url")
    if "://" not in url:
        url = "http://" + url
    for suffix in ("/chat/completions", "/completions"):
        if url.endswith(suffix):
            url = url[: -len(suffix)].rstrip("/")
            break
    try:
        parsed = httpx.URL(url)
    except Exception as exc:  # httpx raises InvalidURL and, for odd input, ValueError/TypeError
        raise BackendError(f"invalid --base-url {base_url!r}: {exc}") from exc
    if not parsed.host:
        raise BackendError(f"invalid --base-url {base_url!r}: no host name")
    if parsed.path in ("", "/"):
        url += "/v1"
    return url


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date.

    Returns None when the header is absent or unreadable, so the caller falls back to its own
    backoff instead of trusting garbage.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        current = time.time() if now is None else now
        seconds = when.timestamp() - current
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


def _retry_after_seconds(headers: httpx.Headers) -> float | None:
    """``retry-after-ms`` (sent by OpenAI and some proxies) is more precise; prefer it."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            value = float(ms) / 1000.0
            if value == value:
                return max(0.0, value)
        except ValueError:
            pass
    return parse_retry_after(headers.get("retry-after"))


def _one_line(text: str, limit: int = _MAX_ERROR_CHARS) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _server_message(response: httpx.Response) -> str:
    """The human part of an error body, whatever dialect the server speaks.

    OpenAI, llama.cpp and Ollama: ``{"error": {"message": ...}}``; vLLM and SGLang:
    ``{"object": "error", "message": ...}``; TGI: ``{"error": "..."}``.
    """
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        return _one_line(response.text) or response.reason_phrase
    message: Any = None
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            message = err.get("message")
        elif isinstance(err, str):
            message = err
        if not message:
            message = body.get("message") or body.get("detail")
    if not message:
        message = response.text
    if not isinstance(message, str):
        message = json.dumps(message, ensure_ascii=False)
    return _one_line(message) or response.reason_phrase


def _describe_transport_error(exc: BaseException) -> str:
    """A short cause for a network failure, digging under httpx/anyio's generic wrappers.

    httpx reports a refused connection as "All connection attempts failed"; the useful
    ConnectionRefusedError sits a few links down the exception chain.
    """
    seen: set[int] = set()
    node: BaseException | None = exc
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        if isinstance(node, ConnectionRefusedError):
            return "connection refused"
        if isinstance(node, socket.gaierror):
            return "cannot resolve the host name"
        if isinstance(node, ConnectionResetError):
            return "connection reset by the server"
        node = node.__cause__ or node.__context__
    if isinstance(exc, httpx.ConnectTimeout):
        return "connection timed out"
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "the server closed the connection"
    text = _one_line(str(exc), 200)
    return text or type(exc).__name__


def _drop_echoed_tokens(entries: list[Any], prefill: str) -> list[Any]:
    """Drop leading logprob entries whose tokens spell exactly the echoed prefill.

    If the tokens do not line up with the prefill (a token straddles the boundary), the list is
    kept whole: wrong alignment would be worse than one extra entry.
    """
    acc = ""
    for i, entry in enumerate(entries):
        token = entry.get("token") if isinstance(entry, dict) else None
        if not isinstance(token, str):
            return entries
        acc += token
        if acc == prefill:
            return entries[i + 1 :]
        if not prefill.startswith(acc):
            return entries
    return entries


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def _parse_alternatives(entry: dict[str, Any]) -> list[tuple[str, float]] | None:
    alternatives = entry.get("top_logprobs")
    if not isinstance(alternatives, list):
        return None
    out: list[tuple[str, float]] = []
    for alt in alternatives:
        if not isinstance(alt, dict):
            return None
        token, value = alt.get("token"), _number(alt.get("logprob"))
        if not isinstance(token, str) or value is None:
            return None
        out.append((token, value))
    return out


def _parse_logprobs(
    choice: dict[str, Any], echoed_prefill: str, want_top: bool
) -> tuple[list[str] | None, list[float] | None, list[list[tuple[str, float]]] | None]:
    """Tokens, their log-probabilities and (if asked) the alternatives, from ``logprobs.content``.

    Each part is None when the server sent none or sent it malformed: a half-parsed list would
    misalign tokens and values, which is worse than having no detail at all.
    """
    logprobs = choice.get("logprobs")
    if not isinstance(logprobs, dict):
        return None, None, None
    content = logprobs.get("content")
    if not isinstance(content, list) or not all(isinstance(e, dict) for e in content):
        return None, None, None
    if echoed_prefill:
        content = _drop_echoed_tokens(content, echoed_prefill)
    values: list[float] = []
    tokens: list[str] = []
    tops: list[list[tuple[str, float]]] = []
    tokens_ok, tops_ok = True, want_top
    for entry in content:
        value = _number(entry.get("logprob"))
        if value is None:
            return None, None, None
        values.append(value)
        token = entry.get("token")
        if isinstance(token, str):
            tokens.append(token)
        else:
            tokens_ok = False
        if tops_ok:
            alternatives = _parse_alternatives(entry)
            if alternatives is None:
                tops_ok = False
            else:
                tops.append(alternatives)
    return (tokens if tokens_ok else None), values, (tops if tops_ok else None)


def _error_signature(status: int, message: str) -> tuple[int, str]:
    """Errors that differ only in numbers (token counts, request ids) are the same error."""
    return status, re.sub(r"\d+", "#", message)


class _RowError(Exception):
    """This request failed on its own (bad input); the rest of the batch carries on."""


class OpenAIBackend(Backend):
    """Chat generation against an OpenAI-compatible HTTP server.

    ``max_retries`` counts retries after the first attempt: a request is tried at most
    ``max_retries + 1`` times. Waits between tries are drawn uniformly from
    ``[0, min(backoff_max, backoff_base * 2**retry)]`` (full jitter, so many clients hitting
    one overloaded server spread out) unless the server says when to come back via
    ``Retry-After``, which is honoured up to ``backoff_max``. A request waiting to retry keeps
    its concurrency slot, so a rate-limited server is not flooded by the other rows meanwhile.

    ``base_url`` and ``api_key`` fall back to ``$OPENAI_BASE_URL`` and ``$OPENAI_API_KEY``, as
    the official client's do; pass ``api_key=""`` to send no key even if the variable is set
    (local servers usually need none).

    ``extra_body`` is merged into every request body last, so it can add server-specific
    fields (vLLM's ``top_k``, ``min_p``) or override a standard one. ``max_consecutive_errors``
    identical non-retryable errors in a row stop the run (0: never stop, every row fails alone).
    """

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        concurrency: int = 8,
        timeout: float = 120.0,
        max_retries: int = 6,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        extra_body: dict[str, Any] | None = None,
        max_consecutive_errors: int = 3,
    ) -> None:
        super().__init__()
        if not model:
            raise BackendError("the OpenAI-compatible backend needs a model name: pass --model")
        if concurrency < 1:
            raise BackendError(f"concurrency must be at least 1, got {concurrency}")
        if not timeout > 0:
            raise BackendError(f"timeout must be positive, got {timeout}")
        if max_retries < 0:
            raise BackendError(f"max_retries must be 0 or more, got {max_retries}")
        if max_consecutive_errors < 0:
            raise BackendError(
                f"max_consecutive_errors must be 0 or more, got {max_consecutive_errors}"
            )
        if extra_body is not None and not isinstance(extra_body, dict):
            raise BackendError(f"extra_body must be a JSON object, got {type(extra_body).__name__}")
        if base_url is None:
            base_url = os.environ.get("OPENAI_BASE_URL")
        if not base_url or not base_url.strip():
            raise BackendError(
                "the OpenAI-compatible backend needs a server address: "
                "pass --base-url (e.g. http://127.0.0.1:8000/v1) or set OPENAI_BASE_URL"
            )
        self.model = model
        self.model_id = model
        self.base_url = normalize_base_url(base_url)
        self.api_key = os.environ.get("OPENAI_API_KEY") if api_key is None else api_key
        self.concurrency = concurrency
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.backoff_base = max(0.0, backoff_base)
        self.backoff_max = max(0.0, backoff_max)
        self.extra_body: dict[str, Any] = dict(extra_body or {})
        try:
            self._extra_json = json.dumps(self.extra_body, sort_keys=True, ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise BackendError(f"extra_body cannot be sent as JSON: {exc}") from None
        self.max_consecutive_errors = max_consecutive_errors
        # The run of identical non-retryable errors so far: (signature, count). Shared by
        # concurrent requests; a lock because generate() may be called from several threads.
        self._streak: tuple[tuple[int, str] | None, int] = (None, 0)
        self._streak_lock = threading.Lock()
        # Hooks, so tests (and callers who need reproducible waits) can observe or replace them.
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
        self.rng = random.Random()

    # -- public API ------------------------------------------------------------------------

    @property
    def chat_url(self) -> str:
        return f"{self.base_url}/chat/completions"

    @property
    def cache_id(self) -> str:
        """Server and model name: two servers may serve different weights under one name.

        ``extra_body`` joins it when set, since fields like ``top_k`` change what is written.
        """
        ident = f"{self.base_url}|{self.model}"
        if self.extra_body:
            ident += "|" + self._extra_json
        return ident

    def generate(self, requests: Sequence[ChatRequest]) -> list[Generation]:
        """Answer every request, in order; rows the server rejects come back as errors."""
        if not requests:
            return []
        start = time.perf_counter()
        try:
            generations = _run_sync(lambda: self._generate_all(list(requests)))
        finally:
            self.usage.seconds += time.perf_counter() - start
        for gen in generations:
            self.usage.add(gen)
        return generations

    def list_models(self) -> list[str]:
        """Model ids the server says it serves (``GET {base_url}/models``).

        A single-model llama.cpp server answers any model name, so this list is advice for
        error messages, never a gate before the first request.
        """

        async def fetch() -> list[str]:
            async with httpx.AsyncClient(timeout=self._timeouts(), headers=self._headers()) as c:
                return await self._fetch_models(c)

        return _run_sync(fetch)

    async def _fetch_models(self, client: httpx.AsyncClient) -> list[str]:
        try:
            response = await client.get(f"{self.base_url}/models")
        except httpx.TransportError as exc:
            raise BackendError(
                f"cannot reach the OpenAI-compatible server at {self.base_url} "
                f"({_describe_transport_error(exc)}): is it running? check --base-url"
            ) from None
        if response.status_code >= 400:
            raise BackendError(
                f"the server at {self.base_url} answered HTTP {response.status_code} to "
                f"GET /models: {_server_message(response)}"
            )
        try:
            data = response.json().get("data", [])
            return [str(m["id"]) for m in data if isinstance(m, dict) and "id" in m]
        except (ValueError, AttributeError, TypeError) as exc:
            raise BackendError(
                f"the server at {self.base_url} sent an unreadable model list: {exc}"
            ) from None

    # -- request building and parsing --------------------------------------------------------

    def payload(self, request: ChatRequest) -> dict[str, Any]:
        """The JSON body for one request.

        A prefill goes last as an assistant message. vLLM and SGLang only continue it when told
        (``continue_final_message``, and no fresh generation prompt); llama.cpp server and
        Ollama continue a final assistant message on their own and ignore the extra fields.
        """
        params = request.params
        messages: list[dict[str, str]] = request.message_dicts()
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_new_tokens,
            "seed": params.seed,
            "stream": False,
        }
        if request.prefill:
            messages.append({"role": "assistant", "content": request.prefill})
            body["continue_final_message"] = True
            body["add_generation_prompt"] = False
        if params.repetition_penalty is not None:
            # Not part of the OpenAI API (which rejects it): sent only when the user set it, for
            # vLLM, SGLang, llama.cpp server and TGI, which accept it.
            body["repetition_penalty"] = params.repetition_penalty
        if params.logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = params.top_logprobs
        body.update(self.extra_body)
        return body

    def parse(self, request: ChatRequest, data: Any) -> Generation:
        """Turn a chat-completions answer into a Generation holding only the new text."""
        if not isinstance(data, dict):
            raise _RowError("the server sent a response that is not a JSON object")
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise _RowError(f"the server sent no choices: {_one_line(json.dumps(data), 200)}")
        choice = choices[0]
        message = choice.get("message")
        text = message.get("content") if isinstance(message, dict) else None
        if not isinstance(text, str):
            text = ""
        echoed = ""
        # Servers that continue the prefill may echo it back; the caller wants only what is new.
        if request.prefill and text.startswith(request.prefill):
            text = text[len(request.prefill) :]
            echoed = request.prefill
        finish = "length" if choice.get("finish_reason") == "length" else "stop"
        usage = data.get("usage")
        if not isinstance(usage, dict):
            usage = {}
        tokens = token_logprobs = top_logprobs = None
        if request.params.logprobs:
            tokens, token_logprobs, top_logprobs = _parse_logprobs(
                choice, echoed, request.params.top_logprobs > 0
            )
        return Generation(
            text=text,
            finish_reason=finish,
            prompt_tokens=_as_int(usage.get("prompt_tokens")),
            completion_tokens=_as_int(usage.get("completion_tokens")),
            tokens=tokens,
            token_logprobs=token_logprobs,
            top_logprobs=top_logprobs,
        )

    # -- the async machinery ---------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "User-Agent": "evolkit"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _timeouts(self) -> httpx.Timeout:
        # A dead host should fail fast; a long generation may legitimately take the full timeout.
        return httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0))

    async def _generate_all(self, requests: list[ChatRequest]) -> list[Generation]:
        """Run at most ``concurrency`` requests at a time; results land at their own index.

        A fixed pool of workers pulling indices is a semaphore without a task per row, so a
        batch of 100k rows costs ``concurrency`` tasks. The first BackendError cancels the rest.
        """
        results: list[Generation | None] = [None] * len(requests)
        pending = iter(range(len(requests)))
        limits = httpx.Limits(
            max_connections=self.concurrency, max_keepalive_connections=self.concurrency
        )
        async with httpx.AsyncClient(
            timeout=self._timeouts(), headers=self._headers(), limits=limits
        ) as client:

            async def worker() -> None:
                for index in pending:
                    results[index] = await self._one(client, requests[index])

            tasks = [
                asyncio.ensure_future(worker()) for _ in range(min(self.concurrency, len(requests)))
            ]
            try:
                await asyncio.gather(*tasks)
            except BaseException:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
        return [r if r is not None else Generation("", "error", error="not run") for r in results]

    def _backoff(self, retry: int) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**retry)]."""
        ceiling = min(self.backoff_max, self.backoff_base * (2.0**retry))
        return self.rng.uniform(0.0, ceiling)

    async def _one(self, client: httpx.AsyncClient, request: ChatRequest) -> Generation:
        """One request with retries. Returns a row error or raises BackendError."""
        body = self.payload(request)
        tries = self.max_retries + 1
        last_cause = ""
        last_kind = ""
        for attempt in range(tries):
            wait: float | None = None
            try:
                response = await client.post(self.chat_url, json=body)
            except httpx.ConnectTimeout as exc:
                last_kind, retry_as = "connect", "timeout"
                last_cause = _describe_transport_error(exc)
            except httpx.ConnectError as exc:
                last_kind, retry_as = "connect", "connection"
                last_cause = _describe_transport_error(exc)
            except httpx.TimeoutException as exc:
                last_kind, retry_as = "timeout", "timeout"
                last_cause = _describe_transport_error(exc)
            except httpx.TransportError as exc:  # dropped mid-answer, reset, protocol errors
                last_kind, retry_as = "transport", "connection"
                last_cause = _describe_transport_error(exc)
            else:
                status = response.status_code
                if status < 400:
                    self._note_outcome(None)
                    try:
                        return self.parse(request, response.json())
                    except _RowError as exc:
                        return Generation("", "error", error=str(exc))
                    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
                        return Generation(
                            "",
                            "error",
                            error=f"the server sent invalid JSON: {_one_line(response.text, 200)}",
                        )
                message = _server_message(response)
                if status in _RETRY_STATUSES or status >= 500:
                    last_kind = "status"
                    last_cause = f"HTTP {status}: {message}"
                    retry_as = "5xx" if status >= 500 else str(status)
                    wait = _retry_after_seconds(response.headers)
                elif status in _FATAL_STATUSES:
                    served = await self._served_models_hint(client) if status == 404 else None
                    raise BackendError(self._fatal_message(status, message, served)) from None
                else:
                    self._note_outcome((status, message))
                    return Generation("", "error", error=f"HTTP {status}: {message}")
            if attempt + 1 < tries:
                self.usage.retries[retry_as] = self.usage.retries.get(retry_as, 0) + 1
                delay = self._backoff(attempt) if wait is None else min(wait, self.backoff_max)
                await self.sleep(delay)
        raise BackendError(self._exhausted_message(tries, last_kind, last_cause))

    def _note_outcome(self, error: tuple[int, str] | None) -> None:
        """Track identical non-retryable errors in a row; raise once there are too many.

        One row's 400 is that row's problem. The same 400 for request after request means
        every row would fail the same way (a field the server refuses, a context too short for
        ``max_tokens``), and committing each as a rejected row would throw the dataset away.
        """
        with self._streak_lock:
            if error is None:
                self._streak = (None, 0)
                return
            status, message = error
            signature = _error_signature(status, message)
            previous, count = self._streak
            count = count + 1 if previous == signature else 1
            self._streak = (signature, count)
        if self.max_consecutive_errors and count >= self.max_consecutive_errors:
            raise BackendError(
                f"the OpenAI-compatible server at {self.base_url} answered HTTP {status} to "
                f'{count} requests in a row: "{message}"; this is not one bad row but the '
                "request settings or the server: fix them (see docs/backends.md, 'What is "
                "sent') and run the same command again"
            )

    def _exhausted_message(self, tries: int, kind: str, cause: str) -> str:
        where = f"the OpenAI-compatible server at {self.base_url}"
        plural = "try" if tries == 1 else "tries"
        if kind == "connect":
            return (
                f"cannot reach {where} after {tries} {plural} ({cause}): "
                "is it running? check --base-url"
            )
        if kind == "timeout":
            return (
                f"{where} did not answer within {self.timeout:g} s, {tries} {plural} ({cause}): "
                "it may be overloaded; lower the concurrency or raise the timeout"
            )
        return f"{where} kept failing after {tries} {plural} ({cause})"

    def _fatal_message(self, status: int, message: str, served: str | None = None) -> str:
        where = f"the OpenAI-compatible server at {self.base_url}"
        if status in (401, 403):
            hint = (
                "the API key was refused"
                if self.api_key
                else "it wants an API key: set OPENAI_API_KEY or pass --api-key"
            )
            return f"{where} answered HTTP {status} ({message}): {hint}"
        if status == 404:
            if served is not None:
                return f"model {self.model!r} is not served by {where} ({message}); {served}"
            return (
                f"{where} answered HTTP 404 for {self.chat_url} ({message}): "
                "check --base-url and --model"
            )
        return f"{where} answered HTTP {status} for {self.chat_url} ({message}): check --base-url"

    async def _served_models_hint(self, client: httpx.AsyncClient) -> str | None:
        """'served: a, b' when /models works and does not list our model; None otherwise."""
        try:
            models = await self._fetch_models(client)
        except BackendError:
            return None
        if self.model in models:
            return None
        return "served: " + (", ".join(models) if models else "(none)")


def _as_int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


_T = TypeVar("_T")


def _run_sync(make: Callable[[], Awaitable[_T]]) -> _T:
    """Run a coroutine to completion from synchronous code.

    ``asyncio.run`` refuses to start inside a running loop (Jupyter, an async caller), so in
    that case the work runs on a fresh loop in a helper thread and this thread waits for it.
    """

    async def main() -> _T:
        return await make()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(main())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, main()).result()


__all__ = ["OpenAIBackend", "normalize_base_url", "parse_retry_after"]
