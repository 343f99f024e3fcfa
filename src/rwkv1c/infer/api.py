"""The OpenAI request and response formats, apart from HTTP: validate a body, build the engine's requests,
shape the answers (whole or as stream chunks). `server.py` carries them over HTTP.

Fields left out take the engine's defaults (temperature 1.0, top_p 0.3, max_tokens from --max-tokens), not
OpenAI's. Chat completions also stop at the first blank line ("\\n\\n", how RWKV ends a chat turn);
completions stop only where the request says, as in OpenAI's API. Extensions: `top_k`, `penalty_decay`,
`blank_line_stop` (completions; default false). Not supported (400): `logprobs`, `echo`, `suffix`,
`logit_bias`, `tools`, non-text `response_format`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rwkv1c.infer.engine import Completion, Request
    from rwkv1c.infer.sampling import SamplingParams

MAX_N = 16
MAX_CHOICES = 64  # prompts x n in one request
MAX_STOPS = 16
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class ApiError(Exception):
    """An error answered with OpenAI's body `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None,
        type: str = "invalid_request_error", headers: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class Limits:
    """What the server accepts: prompt length, default and largest max_tokens."""

    max_prompt_tokens: int = 16384
    default_max_tokens: int = 256
    max_tokens_cap: int = 8192


@dataclass
class Job:
    """One API call: its choices' engine requests, and what its answer needs."""

    kind: str  # "text_completion" | "chat.completion"
    id: str
    created: int
    model: str
    prompt_tokens: list[int]  # per prompt
    requests: list[Request]
    stream: bool
    include_usage: bool
    done: dict[int, Completion] = field(default_factory=dict)  # choice -> completion, as they finish

    @property
    def chat(self) -> bool:
        return self.kind == "chat.completion"


# ---------------------------------------------------------------------------------------------- validation


def check_text(body: Any) -> None:
    """Refuse strings that are not Unicode text: a lone UTF-16 surrogate ("\\ud800") parses as JSON but
    cannot be encoded, tokenised or echoed back."""
    stack: list[tuple[str, Any]] = [("", body)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, str):
            if not value.isascii():
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    where = where.encode("utf-8", "backslashreplace").decode("utf-8")  # a key may hold one too
                    raise ApiError(
                        400, f"'{where or 'the body'}' holds a lone UTF-16 surrogate, which is not text",
                        param=where or None, code="invalid_text",
                    ) from None  # fmt: skip
        elif isinstance(value, dict):
            for k, v in value.items():
                stack.append((f"{where}.{k}" if where else str(k), k))
                stack.append((f"{where}.{k}" if where else str(k), v))
        elif isinstance(value, list):
            stack.extend((f"{where}[{i}]", v) for i, v in enumerate(value))


def _number(body: dict[str, Any], key: str, lo: float, hi: float, *, integer: bool = False) -> Any:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and value != int(value)):
        raise ApiError(400, f"'{key}' must be {'an integer' if integer else 'a number'}, got {value!r}", param=key)
    if not lo <= value <= hi:
        raise ApiError(400, f"'{key}' must be between {lo:g} and {hi:g}, got {value}", param=key)
    return int(value) if integer else float(value)


def _max_tokens(body: dict[str, Any], limits: Limits) -> int:
    key = "max_tokens" if "max_tokens" in body else "max_completion_tokens"
    value = body.get(key)
    if value is None:
        return limits.default_max_tokens
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"'{key}' must be an integer, got {value!r}", param=key)
    if value < 0:
        raise ApiError(400, f"'{key}' must be >= 0, got {value}", param=key)
    if value > limits.max_tokens_cap:
        raise ApiError(400, f"'{key}' is {value}; this server generates at most {limits.max_tokens_cap} tokens "
                       "(its --max-tokens-cap)", param=key, code="max_tokens_exceeded")  # fmt: skip
    return value


def sampling_from_body(body: dict[str, Any], limits: Limits) -> tuple[SamplingParams, int]:
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
    max_tokens = _max_tokens(body, limits)
    stop = body.get("stop")
    stops: tuple[Any, ...] = ()
    if stop is not None:
        stops = (stop,) if isinstance(stop, str) else tuple(stop) if isinstance(stop, list) else (None,)
        if not all(isinstance(s, str) and s for s in stops) or len(stops) > MAX_STOPS:
            raise ApiError(
                400, f"'stop' must be a non-empty string or a list of up to {MAX_STOPS} of them", param="stop"
            )
    n = _number(body, "n", 1, MAX_N, integer=True) or 1
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
        SamplingParams(),
        max_tokens=max_tokens,
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


def build_job(engine: Any, chat: bool, body: dict[str, Any], model: str, adapter: int, limits: Limits) -> Job:
    """The engine requests of a validated body (no callbacks yet); raises ApiError for a bad field."""
    from rwkv1c.infer.engine import Request, new_id

    params, n = sampling_from_body(body, limits)
    system = ""
    if chat:
        parts, system = render_chat(body.get("messages"))
        ids = [[t for part in parts for t in engine.encode(part)]]
        params = params.for_chat()
    else:
        prompt = body.get("prompt")
        prompts: Any = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise ApiError(400, "'prompt' must be a string or a non-empty list of strings", param="prompt")
        if len(prompts) * n > MAX_CHOICES:
            raise ApiError(400, f"too many choices: {len(prompts)} prompts x n={n} (at most {MAX_CHOICES})",
                           param="n")  # fmt: skip
        ids = [engine.encode(p) for p in prompts]
    for p in ids:
        if not p:
            raise ApiError(400, "the prompt is empty", param="prompt")
        if len(p) > limits.max_prompt_tokens:
            raise ApiError(
                400, f"the prompt has {len(p)} tokens; this server takes at most {limits.max_prompt_tokens}",
                param="messages" if chat else "prompt", code="context_length_exceeded",
            )  # fmt: skip
    cache_at: tuple[int, ...] = ()
    if system:
        sys_ids = engine.encode(system)
        if ids[0][: len(sys_ids)] == sys_ids:
            cache_at = (len(sys_ids),)
    opts = body.get("stream_options") or {}
    requests = []
    for p_ids in ids:
        for j in range(n):
            seeded = params.with_seed(params.seed + j) if params.seed is not None else params
            requests.append(Request(list(p_ids), seeded, cache_at=cache_at, adapter=adapter))
    return Job(
        kind="chat.completion" if chat else "text_completion",
        id=new_id("chatcmpl" if chat else "cmpl"),
        created=int(time.time()),
        model=model,
        prompt_tokens=[len(p) for p in ids],
        requests=requests,
        stream=bool(body.get("stream")),
        include_usage=bool(isinstance(opts, dict) and opts.get("include_usage")),
    )


# ---------------------------------------------------------------------------------------------- answers


def usage(job: Job) -> dict[str, int]:
    prompt = sum(job.prompt_tokens)  # a prompt shared by n choices is read once
    completion = sum(len(c.token_ids) for c in job.done.values())
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _reason(comp: Completion) -> str:
    return "stop" if comp.finish_reason == "stop" else "length"


def response(job: Job) -> dict[str, Any]:
    """The whole (non-streaming) answer, once every choice is done."""
    choices = []
    for c in range(len(job.requests)):
        comp = job.done[c]
        if job.chat:
            choices.append({"index": c, "message": {"role": "assistant", "content": comp.text.strip()},
                            "finish_reason": _reason(comp), "logprobs": None})  # fmt: skip
        else:
            choices.append({"index": c, "text": comp.text, "finish_reason": _reason(comp), "logprobs": None})
    return {"id": job.id, "object": job.kind, "created": job.created, "model": job.model, "choices": choices,
            "usage": usage(job)}  # fmt: skip


class ChunkWriter:
    """The stream chunks of one job, event by event (chat: the role first, the leading space dropped)."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.head = {"id": job.id, "object": job.kind + (".chunk" if job.chat else ""), "created": job.created,
                     "model": job.model}  # fmt: skip
        self.started: set[int] = set()
        self.lead: dict[int, bool] = {}  # chat: strip the space the model puts after "Assistant:"

    def _choice(self, c: int, text: str | None, reason: str | None) -> dict[str, Any]:
        if self.job.chat:
            delta: dict[str, Any] = {} if text is None else {"content": text}
            if c not in self.started:
                self.started.add(c)
                delta["role"] = "assistant"
            choice = {"index": c, "delta": delta, "finish_reason": reason, "logprobs": None}
        else:
            choice = {"index": c, "text": text or "", "finish_reason": reason, "logprobs": None}
        return {**self.head, "choices": [choice]}

    def text(self, c: int, delta: str) -> Iterator[dict[str, Any]]:
        if self.job.chat and not self.lead.get(c):
            delta = delta.lstrip(" ")
            self.lead[c] = bool(delta)
            if not delta:
                return
        yield self._choice(c, delta, None)

    def finish(self, c: int, comp: Completion) -> Iterator[dict[str, Any]]:
        yield self._choice(c, None if self.job.chat else "", _reason(comp))

    def usage(self) -> Iterator[dict[str, Any]]:
        if self.job.include_usage:
            yield {**self.head, "choices": [], "usage": usage(self.job)}
