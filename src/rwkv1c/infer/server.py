"""An OpenAI-compatible HTTP API over the engine, on Starlette and uvicorn; `rwkv1c serve` runs it.

Endpoints: GET /v1/models, GET /v1/models/{id}, POST /v1/completions, POST /v1/chat/completions,
GET /health. Streaming is Server-Sent Events (`"stream": true`). The request formats live in `api.py`.

Threads: uvicorn runs its asyncio loop in one thread ("rwkv1c-http"); one engine thread ("rwkv1c-engine")
drives the engine (submit, step) and runs continuous batching: every request's sequences join the next
decode step. What a step produced (text, finished sequences, failures) goes back to the asyncio loop in
one batch per step, and from there to each request's queue.

What protects the server: a request body must arrive within --request-timeout (408) and be at most 16 MiB
(413); an idle keep-alive connection closes after --keep-alive seconds; max_tokens above --max-tokens-cap
is refused (400); when more than --max-queue sequences wait for a free row, a request is refused with 429
and Retry-After; a client that goes away (streaming or not) has its sequences cancelled, so the engine
drops them at its next step. Every error, the server's own routing errors included, has OpenAI's body
`{"error": {"message", "type", "param", "code"}}`; client faults (bad JSON, bad UTF-8, lone surrogates,
resets) never print a traceback. `stop()` (SIGINT / SIGTERM in `rwkv1c serve`) lets requests in flight
finish for --shutdown-timeout seconds, then cancels them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import logging
import queue
import socket
import sys
import threading
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rwkv1c.infer.api import ApiError, ChunkWriter, Job, Limits, build_job, check_text, render_chat, response

if TYPE_CHECKING:
    from starlette.requests import Request as HttpRequest
    from starlette.responses import Response

    from rwkv1c.infer.engine import Engine, Request

__all__ = ["ApiError", "EngineLoop", "Server", "ServerSettings", "model_name_for", "render_chat"]

MAX_BODY = 16 * 2**20
Event = tuple["asyncio.Queue[tuple[str, int, Any]]", str, int, Any]  # (job queue, kind, choice, payload)


@dataclass
class ServerSettings:
    """The HTTP side's limits and timeouts (seconds)."""

    api_key: str | None = None
    max_queue: int = 256  # sequences waiting for a free row before requests are refused (429)
    request_timeout: float = 30.0  # a request body must arrive within this
    keep_alive: float = 5.0  # an idle keep-alive connection is closed after this
    shutdown_timeout: float = 10.0  # on stop, requests in flight get this long to finish
    quiet: bool = False  # no access log


# ---------------------------------------------------------------------------------------------- engine thread


class EngineLoop(threading.Thread):
    """The one thread that drives the engine (submit, step): admits queued requests and steps while any are active.

    Request callbacks run on this thread and append to `outbox`; after each step the batch goes to `post`
    (set by the server: hands it to the asyncio loop). Other threads only tokenise (`engine.encode` is safe
    from any thread) and set `Request.cancelled`."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(name="rwkv1c-engine", daemon=True)
        self.engine = engine
        self.inbox: queue.Queue[Request] = queue.Queue()
        self.stopping = threading.Event()
        self.outbox: list[Event] = []
        self.post: Callable[[list[Event]], None] = lambda batch: None

    def submit(self, requests: Sequence[Request]) -> None:
        for r in requests:
            self.inbox.put(r)

    def emit(self, event: Event) -> None:
        self.outbox.append(event)

    def run(self) -> None:
        while not self.stopping.is_set():
            self._admit(block=not self.engine.busy)
            if self.engine.busy:
                try:
                    self.engine.step()
                except Exception as exc:  # fail what was in flight, keep serving
                    print(f"rwkv1c serve: engine error: {type(exc).__name__}: {exc}", file=sys.stderr)
                    for request in self.engine.abort_all():
                        self._fail(request, f"{type(exc).__name__}: {exc}")
            self._flush()
        self._admit(block=False)
        for request in self.engine.abort_all():
            self._fail(request, "the server is shutting down")
        self._flush()

    def _admit(self, block: bool) -> None:
        incoming = []
        with contextlib.suppress(queue.Empty):
            incoming.append(self.inbox.get(timeout=0.05) if block else self.inbox.get_nowait())
            while True:
                incoming.append(self.inbox.get_nowait())
        for request in incoming:
            try:
                self.engine.submit(request)
            except Exception as exc:  # a request the engine refuses fails alone
                self._fail(request, f"{type(exc).__name__}: {exc}")

    def _flush(self) -> None:
        if self.outbox:
            batch, self.outbox = self.outbox, []
            self.post(batch)

    @staticmethod
    def _fail(request: Request, message: str) -> None:
        if request.on_error is not None:
            request.on_error(message)


# ---------------------------------------------------------------------------------------------- the application


class App:
    """The ASGI application: routes, errors, and the bridge between requests and the engine thread."""

    def __init__(
        self, engine: Engine, loop: EngineLoop, names: dict[str, int], listed: list[str], limits: Limits,
        settings: ServerSettings,
    ) -> None:  # fmt: skip
        import time

        self.engine, self.loop, self.names, self.listed = engine, loop, names, listed
        self.limits, self.settings = limits, settings
        self.created = int(time.time())
        self.in_flight = 0  # sequences submitted and not finished (asyncio thread only)
        self.stopping = False
        self.aio: asyncio.AbstractEventLoop | None = None

    def starlette(self) -> Any:
        from starlette.applications import Starlette
        from starlette.exceptions import HTTPException
        from starlette.routing import Route

        routes = [
            Route("/health", self.endpoint(self.health), methods=["GET"]),
            Route("/v1/models", self.endpoint(self.models), methods=["GET"]),
            Route("/v1/models/{model_id:path}", self.endpoint(self.model_card), methods=["GET"]),
            Route("/v1/completions", self.endpoint(self.completions), methods=["POST"]),
            Route("/v1/chat/completions", self.endpoint(self.chat_completions), methods=["POST"]),
        ]
        handlers = {HTTPException: self.routing_error, Exception: self.internal_error}
        return Starlette(routes=routes, exception_handlers=handlers, lifespan=self.lifespan)  # type: ignore[arg-type]

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Any) -> AsyncIterator[None]:
        self.aio = asyncio.get_running_loop()
        self.loop.post = self._post
        yield

    # ------------------------------------------------------------------ errors

    @staticmethod
    def json(status: int, obj: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
        from starlette.responses import Response

        try:
            data = json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate got in after all: escaped, it is still valid JSON
            data = json.dumps(obj).encode("ascii")
        return Response(data, status_code=status, headers=headers, media_type="application/json")

    def error(self, err: ApiError) -> Response:
        return self.json(err.status, err.body(), err.headers)

    def endpoint(
        self, fn: Callable[[HttpRequest], Awaitable[Response]]
    ) -> Callable[[HttpRequest], Awaitable[Response]]:
        """`fn` answering its ApiErrors, a client that went away, and its own bugs (500) as JSON."""
        from starlette.requests import ClientDisconnect
        from starlette.responses import Response

        async def run(request: HttpRequest) -> Response:
            try:
                return await fn(request)
            except ApiError as err:
                return self.error(err)
            except ClientDisconnect:
                return Response(status_code=400)  # nobody reads it
            except Exception as exc:
                print(f"rwkv1c serve: internal error in {request.method} {request.url.path}:", file=sys.stderr)
                traceback.print_exc()
                return self.error(ApiError(500, f"internal error: {type(exc).__name__}", type="server_error"))

        return run

    async def routing_error(self, request: HttpRequest, exc: Exception) -> Response:
        status, headers = getattr(exc, "status_code", 500), getattr(exc, "headers", None) or {}
        path = request.url.path
        if status == 404:
            message = f"no such endpoint: {request.method} {path}"
        elif status == 405:
            message = f"{request.method} is not allowed on {path}; use {headers.get('Allow', 'another method')}"
        else:
            message = str(getattr(exc, "detail", "")) or "bad request"
        return self.json(status, ApiError(status, message).body(), headers)

    async def internal_error(self, request: HttpRequest, exc: Exception) -> Response:
        return self.error(ApiError(500, f"internal error: {type(exc).__name__}", type="server_error"))

    # ------------------------------------------------------------------ GET

    def check_key(self, request: HttpRequest) -> None:
        key = self.settings.api_key
        if key is None:
            return
        header = request.headers.get("authorization", "")
        given = header[len("Bearer ") :].strip() if header.startswith("Bearer ") else ""
        if not hmac.compare_digest(given.encode(), key.encode()):
            raise ApiError(401, "invalid or missing API key (send 'Authorization: Bearer KEY')", code="invalid_api_key")

    async def health(self, request: HttpRequest) -> Response:
        return self.json(200, {"status": "ok"})

    def card(self, name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": self.created, "owned_by": "rwkv1c"}

    async def models(self, request: HttpRequest) -> Response:
        self.check_key(request)
        return self.json(200, {"object": "list", "data": [self.card(n) for n in self.listed]})

    async def model_card(self, request: HttpRequest) -> Response:
        self.check_key(request)
        name = request.path_params["model_id"]
        if name not in self.names:
            raise ApiError(404, f"the model '{name}' does not exist", param="model", code="model_not_found")
        return self.json(200, self.card(name))

    # ------------------------------------------------------------------ POST

    async def completions(self, request: HttpRequest) -> Response:
        return await self.generate(request, chat=False)

    async def chat_completions(self, request: HttpRequest) -> Response:
        return await self.generate(request, chat=True)

    async def read_json(self, request: HttpRequest) -> Any:
        """The body as JSON: at most MAX_BODY bytes, arriving within the request timeout, valid UTF-8 text."""
        close = {"Connection": "close"}
        length = request.headers.get("content-length")
        if length is not None and not length.isdigit():
            raise ApiError(400, f"bad Content-Length header: {length!r}", headers=close)
        if length is not None and int(length) > MAX_BODY:
            raise ApiError(413, f"the request body is larger than {MAX_BODY} bytes", headers=close)

        async def read() -> bytes:
            raw = bytearray()
            async for chunk in request.stream():
                raw += chunk
                if len(raw) > MAX_BODY:
                    raise ApiError(413, f"the request body is larger than {MAX_BODY} bytes", headers=close)
            return bytes(raw)

        timeout = self.settings.request_timeout
        try:
            raw = await asyncio.wait_for(read(), timeout)
        except asyncio.TimeoutError:
            raise ApiError(408, f"the request body did not arrive within {timeout:g} s", code="request_timeout",
                           headers=close) from None  # fmt: skip
        try:
            body = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise ApiError(400, f"the request body is not valid UTF-8: {exc.reason} at byte {exc.start}") from None
        except (ValueError, RecursionError) as exc:
            raise ApiError(400, f"the request body is not valid JSON: {exc}") from None
        check_text(body)
        return body

    async def generate(self, request: HttpRequest, chat: bool) -> Response:
        from starlette.responses import StreamingResponse

        self.check_key(request)
        body = await self.read_json(request)
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str):
            raise ApiError(400, "'model' is required", param="model")
        if model not in self.names:
            raise ApiError(404, f"the model '{model}' does not exist; this server has {', '.join(self.listed)}",
                           param="model", code="model_not_found")  # fmt: skip
        job = build_job(self.engine, chat, body, model, self.names[model], self.limits)
        waiting = self.in_flight + len(job.requests) - self.engine.capacity
        if waiting > self.settings.max_queue:
            raise ApiError(429, f"the server is busy: {self.in_flight} sequences in flight for "
                           f"{self.engine.capacity} rows; retry shortly", type="server_busy", code="queue_full",
                           headers={"Retry-After": "1"})  # fmt: skip
        events: asyncio.Queue[tuple[str, int, Any]] = asyncio.Queue()
        for c, req in enumerate(job.requests):
            if job.stream:  # a whole answer needs only the ends
                req.on_text = lambda d, c=c: self.loop.emit((events, "text", c, d))
            req.on_finish = lambda comp, c=c: self.loop.emit((events, "done", c, comp))
            req.on_error = lambda message, c=c: self.loop.emit((events, "error", c, message))
        self.in_flight += len(job.requests)
        self.loop.submit(job.requests)
        if job.stream:
            return StreamingResponse(self.stream(job, events), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})  # fmt: skip
        return await self.whole(request, job, events)

    def _post(self, batch: list[Event]) -> None:
        """From the engine thread: hand a step's events to the asyncio loop."""
        assert self.aio is not None
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits for them
            self.aio.call_soon_threadsafe(self._deliver, batch)

    def _deliver(self, batch: list[Event]) -> None:
        for events, kind, c, payload in batch:
            if kind != "text":
                self.in_flight -= 1
            events.put_nowait((kind, c, payload))

    @staticmethod
    def cancel(job: Job) -> None:
        for r in job.requests:
            r.cancelled = True

    async def whole(self, request: HttpRequest, job: Job, events: asyncio.Queue[tuple[str, int, Any]]) -> Response:
        """Wait for every choice, or for the client to go away (then cancel them)."""
        from starlette.responses import Response

        gone = asyncio.ensure_future(disconnected(request))
        try:
            while len(job.done) < len(job.requests):
                event = asyncio.ensure_future(events.get())
                await asyncio.wait({event, gone}, return_when=asyncio.FIRST_COMPLETED)
                if not event.done():
                    event.cancel()
                    return Response(status_code=400)  # the client left: nobody reads this
                kind, c, payload = event.result()
                if kind == "error":
                    raise ApiError(500, f"generation failed: {payload}", type="server_error")
                job.done[c] = payload
            return self.json(200, response(job))
        except asyncio.CancelledError:
            if not self.stopping:
                raise
            # the shutdown timeout ran out: answer, rather than drop the connection
            return self.error(
                ApiError(
                    503,
                    "the server is shutting down; the request was cancelled",
                    type="server_error",
                    code="shutting_down",
                    headers={"Connection": "close"},
                )
            )
        finally:
            gone.cancel()
            if len(job.done) < len(job.requests):
                self.cancel(job)

    async def stream(self, job: Job, events: asyncio.Queue[tuple[str, int, Any]]) -> AsyncIterator[bytes]:
        """The SSE events; a client that goes away cancels this generator (Starlette), and so the job."""
        writer = ChunkWriter(job)
        try:
            while len(job.done) < len(job.requests):
                kind, c, payload = await events.get()
                if kind == "error":
                    err = ApiError(500, f"generation failed: {payload}", type="server_error")
                    yield sse(err.body())
                    return
                if kind == "text":
                    chunks = list(writer.text(c, payload))
                else:
                    job.done[c] = payload
                    chunks = list(writer.finish(c, payload))
                for chunk in chunks:
                    yield sse(chunk)
            for chunk in writer.usage():
                yield sse(chunk)
            yield b"data: [DONE]\n\n"
        finally:
            if len(job.done) < len(job.requests):
                self.cancel(job)


def sse(obj: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()


async def disconnected(request: HttpRequest) -> None:
    """Returns when the client has gone away (the body was read: the next ASGI message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


# ---------------------------------------------------------------------------------------------- the server


class Server:
    """The HTTP server (uvicorn, in its own thread) and the engine thread; `start()` returns (host, port).

    model_name is the base model's id; the engine's adapters are served under their own names. aliases are
    ids accepted for the base as well (not listed in /v1/models).
    """

    def __init__(
        self, engine: Engine, model_name: str, *, host: str = "127.0.0.1", port: int = 8000,
        api_key: str | None = None, max_prompt_tokens: int = 16384, default_max_tokens: int = 256,
        max_tokens_cap: int = 8192, aliases: Sequence[str] = (), settings: ServerSettings | None = None,
        quiet: bool = False,
    ) -> None:  # fmt: skip
        import uvicorn

        base = settings or ServerSettings()
        settings = dataclasses.replace(base, api_key=base.api_key if api_key is None else api_key,
                                       quiet=base.quiet or quiet)  # fmt: skip
        self.loop = EngineLoop(engine)
        listed = [model_name, *engine.adapter_names]
        names = {n: i for i, n in enumerate(listed)}
        for alias in aliases:
            names.setdefault(alias, 0)
        limits = Limits(max_prompt_tokens, default_max_tokens, max_tokens_cap)
        self.app = App(engine, self.loop, names, listed, limits, settings)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.create_server((host, port), family=family)  # OSError: the caller says why
        if not settings.quiet:
            log_to_stderr()
        config = uvicorn.Config(
            self.app.starlette(), log_config=None, access_log=not settings.quiet, http="h11", ws="none",
            loop="asyncio", lifespan="on", timeout_keep_alive=max(1, round(settings.keep_alive)),
            timeout_graceful_shutdown=max(1, round(settings.shutdown_timeout)), server_header=False,
        )  # fmt: skip
        self.http = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()[:2]
        return str(host), int(port)

    def start(self, timeout: float = 60) -> tuple[str, int]:
        import time

        self.loop.start()
        self._thread = threading.Thread(target=self.http.run, kwargs={"sockets": [self.sock]}, name="rwkv1c-http",
                                        daemon=True)  # fmt: skip
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.http.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self.http.started:
            raise RuntimeError("the HTTP server did not start")
        return self.address

    def request_stop(self, force: bool = False) -> None:
        """Stop accepting, let requests in flight finish (`force`: cancel them now); returns at once."""
        self.app.stopping = True
        if self.http.should_exit or force:
            self.http.force_exit = True
        self.http.should_exit = True

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the HTTP thread to end (after request_stop), then stop the engine thread."""
        if self._thread is not None:
            self._thread.join(timeout)
        if not self.running:
            self.loop.stopping.set()
            self.loop.join(timeout=30)
            self.sock.close()

    def stop(self) -> None:
        self.request_stop()
        self.wait()


def log_to_stderr() -> None:
    """uvicorn's access log and warnings as one `rwkv1c serve: ...` line each, on stderr."""
    formatter = logging.Formatter("rwkv1c serve: %(message)s")
    for name, level in (("uvicorn.error", logging.WARNING), ("uvicorn.access", logging.INFO)):
        logger = logging.getLogger(name)
        if not any(getattr(h, "rwkv1c", False) for h in logger.handlers):
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(formatter)
            handler.rwkv1c = True  # type: ignore[attr-defined]
            logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False


def model_name_for(model: Path, adapter: Path | None = None) -> str:
    """The id clients pass as "model": an adapter folder's run name, else the checkpoint's file stem, except
    that a `merged.pth` is named after its run folder (runs/bsl-v1/merged.pth -> "bsl-v1")."""
    if adapter is not None:
        a = Path(adapter).resolve()
        return a.parent.name if a.name in ("adapter", "final") else a.name
    m = Path(model).resolve()
    return m.parent.name if m.stem == "merged" and m.parent.name else m.stem
