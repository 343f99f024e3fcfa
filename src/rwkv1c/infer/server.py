"""An OpenAI-compatible HTTP API over the engine (standard library only); `rwkv1c serve` runs it.

Endpoints: GET /v1/models, GET /v1/models/{id}, POST /v1/completions, POST /v1/chat/completions,
GET /health. Streaming is Server-Sent Events (`"stream": true`). One engine thread drives the engine and
runs continuous batching: every request's sequences join the next decode step, and their text flows
back to the request's HTTP thread through a queue. Errors use OpenAI's body
`{"error": {"message", "type", "param", "code"}}`; a bad request never stops the server.

Fields left out take the engine's defaults (temperature 1.0, top_p 0.3, max_tokens from
--max-tokens), not OpenAI's. Chat completions also stop at the first blank line ("\\n\\n", how RWKV
ends a chat turn); completions stop only where the request says, as in OpenAI's API.
Extensions: `top_k`, `penalty_decay`, `blank_line_stop` (completions; default false).
Not supported (400): `logprobs`, `echo`, `suffix`,
`logit_bias`, `tools`, non-text `response_format`.
"""

from __future__ import annotations

import dataclasses
import json
import queue
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rwkv1c.infer.engine import Completion, Engine, Request
    from rwkv1c.infer.sampling import SamplingParams

MAX_BODY = 16 * 2**20
MAX_N = 16
MAX_STOPS = 16
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class ApiError(Exception):
    """An error answered with an OpenAI-style body."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None,
        type: str = "invalid_request_error",
    ) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# ---------------------------------------------------------------------------------------------- engine thread


class EngineLoop(threading.Thread):
    """The one thread that drives the engine (submit, step): admits queued requests and steps while any are active.

    Request threads only tokenise through `engine.encode`, which is safe from any thread."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(name="rwkv1c-engine", daemon=True)
        self.engine = engine
        self.inbox: queue.Queue[Request] = queue.Queue()
        self.stopping = threading.Event()

    def submit(self, request: Request) -> None:
        self.inbox.put(request)

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                first = self.inbox.get(timeout=0.05) if not self.engine.busy else self.inbox.get_nowait()
            except queue.Empty:
                first = None
            incoming = [first] if first is not None else []
            while True:
                try:
                    incoming.append(self.inbox.get_nowait())
                except queue.Empty:
                    break
            for request in incoming:
                try:
                    self.engine.submit(request)
                except Exception as exc:  # a request the engine refuses fails alone
                    self._fail(request, exc)
            if not self.engine.busy:
                continue
            try:
                self.engine.step()
            except Exception as exc:  # fail what was in flight, keep serving
                print(f"rwkv1c serve: engine error: {type(exc).__name__}: {exc}", file=sys.stderr)
                for request in self.engine.abort_all():
                    self._fail(request, exc)

    @staticmethod
    def _fail(request: Request, exc: Exception) -> None:
        if request.on_error is not None:
            request.on_error(f"{type(exc).__name__}: {exc}")


# ---------------------------------------------------------------------------------------------- requests


@dataclass
class Job:
    """One API call: its choices' requests and the queue their events arrive on."""

    kind: str  # "text_completion" | "chat.completion"
    id: str
    created: int
    model: str
    prompt_tokens: list[int]  # per prompt
    requests: list[Request]
    events: queue.Queue[tuple[str, int, Any]]
    stream: bool
    include_usage: bool


def _number(body: dict[str, Any], key: str, lo: float, hi: float, *, integer: bool = False) -> Any:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and value != int(value)):
        raise ApiError(400, f"'{key}' must be {'an integer' if integer else 'a number'}, got {value!r}", param=key)
    if not lo <= value <= hi:
        raise ApiError(400, f"'{key}' must be between {lo:g} and {hi:g}, got {value}", param=key)
    return int(value) if integer else float(value)


def sampling_from_body(body: dict[str, Any], default_max_tokens: int) -> tuple[SamplingParams, int]:
    """SamplingParams and n from an OpenAI request body (raises ApiError on the first bad field)."""
    from rwkv1c.infer.sampling import SamplingParams

    for key, ok in (("logprobs", (None, False, 0)), ("echo", (None, False)), ("suffix", (None, "")),
                    ("logit_bias", (None, {})), ("tools", (None, [])), ("functions", (None, [])),
                    ("top_logprobs", (None, 0)), ("best_of", (None, 1))):  # fmt: skip
        if body.get(key) not in ok:
            raise ApiError(400, f"'{key}' is not supported by this server", param=key, code="unsupported_parameter")
    fmt = body.get("response_format")
    if fmt not in (None, {"type": "text"}):
        raise ApiError(400, "only the text response_format is supported", param="response_format")
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
    if max_tokens is not None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
            raise ApiError(400, f"'max_tokens' must be an integer, got {max_tokens!r}", param="max_tokens")
        if max_tokens < 0:
            raise ApiError(400, f"'max_tokens' must be >= 0, got {max_tokens}", param="max_tokens")
    stop = body.get("stop")
    stops: tuple[str, ...] = ()
    if stop is not None:
        stops = (stop,) if isinstance(stop, str) else tuple(stop) if isinstance(stop, list) else (None,)  # type: ignore[assignment]
        if not all(isinstance(s, str) and s for s in stops) or len(stops) > MAX_STOPS:
            raise ApiError(
                400, f"'stop' must be a non-empty string or a list of up to {MAX_STOPS} of them", param="stop"
            )
    n = _number(body, "n", 1, MAX_N, integer=True) or 1
    base = SamplingParams()
    values = {
        "temperature": _number(body, "temperature", 0, 2),
        "top_p": _number(body, "top_p", 0, 1),
        "top_k": _number(body, "top_k", 0, 1 << 20, integer=True),
        "presence_penalty": _number(body, "presence_penalty", -2, 2),
        "frequency_penalty": _number(body, "frequency_penalty", -2, 2),
        "penalty_decay": _number(body, "penalty_decay", 0, 1),
        "seed": _number(body, "seed", -(2**63), 2**63 - 1, integer=True),
    }
    blank = body.get("blank_line_stop", False)
    if not isinstance(blank, bool):
        raise ApiError(400, "'blank_line_stop' must be true or false", param="blank_line_stop")
    params = dataclasses.replace(
        base,
        max_tokens=default_max_tokens if max_tokens is None else max_tokens,
        stop=stops,
        stop_at_blank_line=blank,
        **{k: v for k, v in values.items() if v is not None},
    )
    return params, n


def render_chat(messages: Any) -> tuple[list[str], str]:
    """The prompt for a chat: the messages in the rwkv1c chat format, ending with "Assistant:".

    Returns the prompt's segments (each tokenised on its own, as training data is, so a conversation's
    earlier prompt is a token prefix of its next one) and the system turn's text ("" without one),
    whose state is worth caching.
    """
    from rwkv1c.data.prompts import PREFIX, render_messages, render_system

    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list", param="messages")
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ApiError(400, f"messages[{i}] needs a role of {', '.join(ROLES)}", param=f"messages[{i}].role")
        content = m.get("content")
        if isinstance(content, list):  # content parts: only text
            if not all(
                isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content
            ):
                raise ApiError(400, f"messages[{i}]: only text content parts are supported", param=f"messages[{i}]")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise ApiError(400, f"messages[{i}].content must be a string", param=f"messages[{i}].content")
        clean.append({"role": ROLES[m["role"]], "content": content})
    if clean[-1]["role"] != "user":
        raise ApiError(400, "the last message must be the user's", param="messages")
    try:  # the format's own renderer wants a finished conversation: add an answer, then drop it
        segments = render_messages([*clean, {"role": "assistant", "content": "-"}])
    except ValueError as exc:
        raise ApiError(400, f"messages: {exc}", param="messages") from None
    parts = [text for text, _ in segments[:-1]]
    assert parts[-1].endswith(PREFIX["assistant"])
    system = ""
    if clean[0]["role"] == "system":
        system = render_system(clean[0]["content"])
    return parts, system


class Api:
    """Request handling independent of HTTP plumbing: parse, validate, run, format."""

    def __init__(
        self, engine: Engine, loop: EngineLoop, model_name: str, *, api_key: str | None,
        max_prompt_tokens: int, default_max_tokens: int,
    ) -> None:  # fmt: skip
        self.engine, self.loop, self.model_name = engine, loop, model_name
        self.api_key = api_key
        self.max_prompt_tokens = max_prompt_tokens
        self.default_max_tokens = default_max_tokens
        self.created = int(time.time())

    def check_key(self, header: str | None) -> None:
        if self.api_key is None:
            return
        if header is None or not header.startswith("Bearer ") or header[len("Bearer ") :].strip() != self.api_key:
            raise ApiError(401, "invalid or missing API key (send 'Authorization: Bearer KEY')", code="invalid_api_key")

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [self.model_card()]}

    def model_card(self) -> dict[str, Any]:
        return {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "rwkv1c"}

    def start(self, path: str, body: Any) -> Job:
        """Validate a POST body and queue its sequences; the returned job delivers their events."""
        from rwkv1c.infer.engine import Request, new_id

        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str):
            raise ApiError(400, "'model' is required", param="model")
        if model != self.model_name:
            raise ApiError(404, f"the model '{model}' does not exist; this server has '{self.model_name}'",
                           param="model", code="model_not_found")  # fmt: skip
        params, n = sampling_from_body(body, self.default_max_tokens)
        chat = path == "/v1/chat/completions"
        system = ""
        if chat:
            parts, system = render_chat(body.get("messages"))
            ids = [[t for part in parts for t in self.engine.encode(part)]]
            params = params.for_chat()
        else:
            prompt = body.get("prompt")
            prompts: Any = [prompt] if isinstance(prompt, str) else prompt
            if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
                raise ApiError(400, "'prompt' must be a string or a non-empty list of strings", param="prompt")
            if len(prompts) * n > MAX_N * 4:
                raise ApiError(400, f"too many choices: {len(prompts)} prompts x n={n}", param="n")
            ids = [self.engine.encode(p) for p in prompts]
        for p in ids:
            if not p:
                raise ApiError(400, "the prompt is empty", param="prompt")
            if len(p) > self.max_prompt_tokens:
                raise ApiError(
                    400,
                    f"the prompt has {len(p)} tokens; this server takes at most {self.max_prompt_tokens}",
                    param="messages" if chat else "prompt",
                    code="context_length_exceeded",
                )
        cache_at: tuple[int, ...] = ()
        if system:
            sys_ids = self.engine.encode(system)
            if ids[0][: len(sys_ids)] == sys_ids:
                cache_at = (len(sys_ids),)
        stream = bool(body.get("stream"))
        opts = body.get("stream_options") or {}
        job = Job(
            kind="chat.completion" if chat else "text_completion",
            id=new_id("chatcmpl" if chat else "cmpl"),
            created=int(time.time()),
            model=self.model_name,
            prompt_tokens=[len(p) for p in ids],
            requests=[],
            events=queue.Queue(),
            stream=stream,
            include_usage=bool(isinstance(opts, dict) and opts.get("include_usage")),
        )
        for pi, p_ids in enumerate(ids):
            for j in range(n):
                choice = pi * n + j
                seeded = params.with_seed(params.seed + j) if params.seed is not None else params
                req = Request(list(p_ids), seeded, cache_at=cache_at)
                req.on_text = lambda d, c=choice: job.events.put(("text", c, d))
                req.on_finish = lambda comp, c=choice: job.events.put(("done", c, comp))
                req.on_error = lambda message, c=choice: job.events.put(("error", c, message))
                job.requests.append(req)
        for req in job.requests:
            self.loop.submit(req)
        return job

    def collect(self, job: Job) -> dict[str, Any]:
        """Wait for every choice and build the non-streaming response."""
        done: dict[int, Completion] = {}
        while len(done) < len(job.requests):
            kind, choice, payload = job.events.get()
            if kind == "error":
                raise ApiError(500, f"generation failed: {payload}", type="server_error")
            if kind == "done":
                done[choice] = payload
        choices = []
        for c in range(len(job.requests)):
            comp = done[c]
            reason = "stop" if comp.finish_reason == "stop" else "length"
            if job.kind == "chat.completion":
                choices.append({"index": c, "message": {"role": "assistant", "content": comp.text.strip()},
                                "finish_reason": reason, "logprobs": None})  # fmt: skip
            else:
                choices.append({"index": c, "text": comp.text, "finish_reason": reason, "logprobs": None})
        return {
            "id": job.id,
            "object": job.kind,
            "created": job.created,
            "model": job.model,
            "choices": choices,
            "usage": self.usage(job, done),
        }

    def usage(self, job: Job, done: dict[int, Completion]) -> dict[str, int]:
        prompt = sum(job.prompt_tokens)  # a prompt shared by n choices is read once
        completion = sum(len(c.token_ids) for c in done.values())
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def chunks(self, job: Job) -> Any:
        """The SSE events of a streaming response, as JSON objects (then the caller sends [DONE])."""
        head = {"id": job.id, "object": job.kind + (".chunk" if job.kind == "chat.completion" else ""),
                "created": job.created, "model": job.model}  # fmt: skip
        chat = job.kind == "chat.completion"
        started: set[int] = set()
        done: dict[int, Completion] = {}
        lead: dict[int, bool] = {}  # chat: strip the space the model puts after "Assistant:"

        def choice(c: int, text: str | None, reason: str | None) -> dict[str, Any]:
            if chat:
                delta: dict[str, Any] = {} if text is None else {"content": text}
                if c not in started:
                    started.add(c)
                    delta["role"] = "assistant"
                return {**head, "choices": [{"index": c, "delta": delta, "finish_reason": reason, "logprobs": None}]}
            return {**head, "choices": [{"index": c, "text": text or "", "finish_reason": reason, "logprobs": None}]}

        while len(done) < len(job.requests):
            kind, c, payload = job.events.get()
            if kind == "error":
                yield {"error": ApiError(500, f"generation failed: {payload}", type="server_error").body()["error"]}
                return
            if kind == "text":
                if chat and not lead.get(c):
                    payload = payload.lstrip(" ")
                    lead[c] = bool(payload)
                    if not payload:
                        continue
                yield choice(c, payload, None)
            else:
                done[c] = payload
                reason = "stop" if payload.finish_reason == "stop" else "length"
                yield choice(c, None if chat else "", reason)
        if job.include_usage:
            yield {**head, "choices": [], "usage": self.usage(job, done)}

    def cancel(self, job: Job) -> None:
        for r in job.requests:
            r.cancelled = True


# ---------------------------------------------------------------------------------------------- HTTP


class Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive; JSON responses carry Content-Length, streams use chunked encoding."""

    protocol_version = "HTTP/1.1"
    server_version = "rwkv1c"
    api: Api  # set on the subclass made by `make_server`
    quiet = False

    def log_message(self, format: str, *args: Any) -> None:
        if not self.quiet:
            sys.stderr.write(f"rwkv1c serve: {self.address_string()} {format % args}\n")

    def _send_json(self, status: int, obj: dict[str, Any]) -> None:
        data = json.dumps(obj, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, err: ApiError) -> None:
        self._send_json(err.status, err.body())

    def _read_body(self) -> Any:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise ApiError(411 if length is None else 400, "a Content-Length header is required")
        if int(length) > MAX_BODY:
            self.close_connection = True
            raise ApiError(413, f"the request body is larger than {MAX_BODY} bytes")
        raw = self.rfile.read(int(length))
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ApiError(400, f"the request body is not valid JSON: {exc}") from None

    def do_GET(self) -> None:
        try:
            if self.path == "/health":
                return self._send_json(200, {"status": "ok"})
            self.api.check_key(self.headers.get("Authorization"))
            if self.path == "/v1/models":
                return self._send_json(200, self.api.models())
            if self.path == f"/v1/models/{self.api.model_name}":
                return self._send_json(200, self.api.model_card())
            if self.path.startswith("/v1/models/"):
                raise ApiError(
                    404, f"the model '{self.path[len('/v1/models/') :]}' does not exist", code="model_not_found"
                )
            raise ApiError(404, f"no such endpoint: GET {self.path}")
        except ApiError as err:
            self._error(err)

    def do_POST(self) -> None:
        job = None
        try:
            if self.path not in ("/v1/completions", "/v1/chat/completions"):
                self._read_body_quietly()
                raise ApiError(404, f"no such endpoint: POST {self.path}")
            try:
                self.api.check_key(self.headers.get("Authorization"))
            except ApiError:
                self._read_body_quietly()
                raise
            body = self._read_body()
            job = self.api.start(self.path, body)
            if not job.stream:
                return self._send_json(200, self.api.collect(job))
            self._stream(job)
        except ApiError as err:
            if job is not None:
                self.api.cancel(job)
            self._error(err)
        except (BrokenPipeError, ConnectionResetError):
            if job is not None:
                self.api.cancel(job)
            self.close_connection = True
        except Exception as exc:  # a bug answers 500; the server keeps running
            if job is not None:
                self.api.cancel(job)
            print(f"rwkv1c serve: {type(exc).__name__}: {exc}", file=sys.stderr)
            self._error(ApiError(500, f"internal error: {type(exc).__name__}", type="server_error"))

    def _read_body_quietly(self) -> None:
        length = self.headers.get("Content-Length")
        if length and length.isdigit() and int(length) <= MAX_BODY:
            self.rfile.read(int(length))
        else:
            self.close_connection = True

    def _stream(self, job: Job) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def send(data: str) -> None:
            raw = data.encode("utf-8")
            self.wfile.write(f"{len(raw):x}\r\n".encode() + raw + b"\r\n")
            self.wfile.flush()

        for event in self.api.chunks(job):
            send(f"data: {json.dumps(event, ensure_ascii=False)}\n\n")
        send("data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


class Server:
    """The HTTP server and the engine thread; `start()` returns the bound (host, port)."""

    def __init__(
        self, engine: Engine, model_name: str, *, host: str = "127.0.0.1", port: int = 8000,
        api_key: str | None = None, max_prompt_tokens: int = 16384, default_max_tokens: int = 256,
        quiet: bool = False,
    ) -> None:  # fmt: skip
        self.loop = EngineLoop(engine)
        self.api = Api(engine, self.loop, model_name, api_key=api_key, max_prompt_tokens=max_prompt_tokens,
                       default_max_tokens=default_max_tokens)  # fmt: skip
        handler = type("BoundHandler", (Handler,), {"api": self.api, "quiet": quiet})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.httpd.server_address[:2]
        return str(host), int(port)

    def start(self) -> tuple[str, int]:
        self.loop.start()
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="rwkv1c-http", daemon=True)
        self._thread.start()
        return self.address

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.loop.stopping.set()
        self.loop.join(timeout=10)


def model_name_for(model: Path, adapter: Path | None) -> str:
    """The id clients pass as "model": the adapter folder's run name, else the checkpoint's file stem."""
    if adapter is not None:
        a = Path(adapter).resolve()
        return a.parent.name if a.name in ("adapter", "final") else a.name
    return Path(model).stem
