"""A fault-injecting HTTP proxy for tests: a flaky server in front of a real one.

It listens on a loopback port and, for each POST, draws from a seeded RNG whether to pass the
request on or to fail it the ways real servers and networks fail:

* ``"429"``: HTTP 429 with ``Retry-After`` (a rate limit);
* ``"500"``: HTTP 500 (a crashed worker);
* ``"stall"``: read the request, then answer nothing until the client gives up (its timeout)
  or ``stall_cap`` seconds pass;
* ``"drop"``: read the request, then close the connection without a byte of answer.

Every response carries ``Connection: close``, so each request is one connection and a fault
never poisons the next request. ``go_down()`` stops listening (clients get "connection
refused") and ``come_back()`` listens again on the same port: a server that died and restarted.
The proxy runs its own event loop in a daemon thread; every wait in it is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import threading
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

import httpx

FAULTS = ("429", "500", "stall", "drop")
_HOP_HEADERS = {"host", "connection", "content-length", "keep-alive", "transfer-encoding"}


class FaultProxy:
    def __init__(
        self,
        upstream: str,
        rate: float = 0.3,
        seed: int = 0,
        faults: Sequence[str] = FAULTS,
        retry_after: str = "1",
        stall_cap: float = 30.0,
    ) -> None:
        """`upstream` is the real server's root, e.g. ``http://127.0.0.1:8000``."""
        unknown = set(faults) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}")
        self.upstream = upstream.rstrip("/")
        self.rate = rate
        self.faults = tuple(faults)
        self.retry_after = retry_after
        self.stall_cap = stall_cap
        self.rng = random.Random(seed)
        # What happened to each POST: "ok" or the fault's name. Written by the proxy's thread
        # only; read by the test once the client side is done.
        self.outcomes: Counter[str] = Counter()
        # Hold the port for the proxy's whole life, so come_back() gets the same one.
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        probe.bind(("127.0.0.1", 0))
        self.port = int(probe.getsockname()[1])
        probe.close()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._client: httpx.AsyncClient | None = None
        self._open: set[asyncio.StreamWriter] = set()

    # -- control, from the test's thread -------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def injected(self) -> Counter[str]:
        return Counter({k: v for k, v in self.outcomes.items() if k != "ok"})

    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def go_down(self) -> None:
        """Stop listening and cut open connections: new requests are refused."""
        self._call(self._stop_listening())

    def come_back(self) -> None:
        self._call(self._listen())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, coro: Any, timeout: float = 15.0) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout)

    # -- the proxy, on its own loop ------------------------------------------------------------

    async def _listen(self) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=120)
        if self._server is None:
            self._server = await asyncio.start_server(
                self._handle, "127.0.0.1", self.port, reuse_address=True
            )

    async def _stop_listening(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for writer in list(self._open):
            writer.transport.abort()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 5)

    async def _shutdown(self) -> None:
        await self._stop_listening()
        if self._client is not None:
            await self._client.aclose()

    def _draw(self) -> str:
        if self.rng.random() < self.rate:
            return self.rng.choice(self.faults)
        return "ok"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open.add(writer)
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    key, value = line.split(":", 1)
                    headers[key.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            body = await asyncio.wait_for(reader.readexactly(length), 30) if length else b""
            outcome = self._draw() if method == "POST" else "ok"
            if method == "POST":
                self.outcomes[outcome] += 1
            if outcome == "drop":
                writer.transport.abort()
                return
            if outcome == "stall":
                # Nothing is sent; the client's timeout ends it (or the cap does).
                with contextlib.suppress(asyncio.TimeoutError, ConnectionError):
                    await asyncio.wait_for(reader.read(), self.stall_cap)
                return
            if outcome in ("429", "500"):
                status = int(outcome)
                extra = {"Retry-After": self.retry_after} if status == 429 else {}
                message = b'{"error": {"message": "injected fault %d", "type": "fault"}}' % status
                await self._respond(writer, status, message, extra)
                return
            await self._forward(writer, method, path, headers, body)
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError, ValueError):
            pass
        finally:
            self._open.discard(writer)
            writer.close()

    async def _forward(
        self,
        writer: asyncio.StreamWriter,
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes,
    ) -> None:
        assert self._client is not None
        sent = {k: v for k, v in headers.items() if k not in _HOP_HEADERS}
        try:
            answer = await self._client.request(
                method, self.upstream + path, headers=sent, content=body
            )
        except httpx.HTTPError:
            await self._respond(writer, 502, b'{"error": {"message": "upstream unreachable"}}')
            return
        content_type = answer.headers.get("content-type", "application/json")
        await self._respond(writer, answer.status_code, answer.content, {}, content_type)

    async def _respond(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes,
        extra: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        lines = [
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}",
            "Connection: close",
            *(f"{k}: {v}" for k, v in (extra or {}).items()),
        ]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        await writer.drain()


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
}
