"""The server against clients that misbehave or go away, over real sockets on 127.0.0.1.

`rwkv1c serve` runs as a subprocess (its stderr is read back: client faults must print no traceback);
tests that look inside the engine run the server in-process.
"""

from __future__ import annotations

import http.client
import json
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
import torch

from rwkv1c.infer.engine import Engine
from rwkv1c.infer.server import Server, ServerSettings
from rwkv1c.model.rwkv7 import RWKV7
from rwkv1c.model.tokenizer import get_tokenizer

NAME = "tiny"


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    seen: int = 0

    def new_stderr(self, settle: float = 0.3) -> str:
        """What the server printed since the last call (after a moment for it to get there)."""
        time.sleep(settle)
        text = self.log.read_text(encoding="utf-8", errors="replace")
        out, self.seen = text[self.seen :], len(text)
        return out

    def client(self, **kw: object) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key="unused", max_retries=0,
                             **{"timeout": 60, **kw})  # type: ignore[arg-type]  # fmt: skip


def start_cli(model: Path, log: Path, *extra: str) -> Served:
    """`rwkv1c serve` on a free port, stderr into `log`; returns once it reports its address."""
    with open(log, "w", encoding="utf-8") as err:
        proc = subprocess.Popen([sys.executable, "-m", "rwkv1c", "serve", "--model", str(model), "--port", "0",
                                 "--device", "cpu", *extra], stdout=subprocess.DEVNULL, stderr=err)  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        found = re.search(r"at http://127\.0\.0\.1:(\d+)/v1", log.read_text(encoding="utf-8"))
        if found:
            return Served(proc, int(found.group(1)), log)
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"the server did not start:\n{log.read_text(encoding='utf-8')}")


@pytest.fixture(scope="module")
def served(tiny_pth: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    log = tmp_path_factory.mktemp("serve") / "stderr.txt"
    srv = start_cli(tiny_pth, log, "--request-timeout", "1", "--keep-alive", "2", "--max-batch", "4")
    yield srv
    srv.proc.send_signal(signal.SIGINT)
    srv.proc.wait(timeout=60)


def post(port: int, path: str, body: object, method: str = "POST") -> tuple[int, dict[str, object], dict[str, str]]:
    """One request (JSON body escaped to ASCII, so lone surrogates travel as \\udXXX); status, JSON, headers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read()), {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


def is_error_body(body: dict[str, object]) -> bool:
    err = body.get("error")
    return isinstance(err, dict) and set(err) == {"message", "type", "param", "code"}


def reset(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a client process that dies or drops a pooled connection does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


# ---------------------------------------------------------------------------------------------- 1: not text


def test_lone_surrogates_are_a_400_and_print_nothing(served: Served) -> None:
    served.new_stderr(0)
    cases = [
        ("/v1/completions", {"model": NAME, "prompt": "\ud800", "max_tokens": 2}, "prompt"),
        ("/v1/completions", {"model": NAME, "prompt": ["ok", "a\udc80b"], "max_tokens": 2}, "prompt[1]"),
        ("/v1/chat/completions", {"model": NAME, "messages": [{"role": "user", "content": "\udc80"}]},
         "messages[0].content"),
        ("/v1/completions", {"model": "\ud800", "prompt": "x"}, "model"),
        ("/v1/completions", {"model": NAME, "prompt": "x", "stop": ["\udfff"]}, "stop[0]"),
        ("/v1/completions", {"model": NAME, "prompt": "x", "\ud83d": 1}, "\\ud83d"),
    ]  # fmt: skip
    for path, body, param in cases:
        status, answer, _ = post(served.port, path, body)
        assert status == 400 and is_error_body(answer), (body, status, answer)
        assert answer["error"]["param"] == param and "surrogate" in answer["error"]["message"]  # type: ignore[index]
    status, answer, _ = post(served.port, "/v1/completions", b'{"model": "tiny", "prompt": "\xff\xfe"}')
    assert status == 400 and "UTF-8" in answer["error"]["message"]  # type: ignore[index]
    assert served.client().completions.create(model=NAME, prompt="x", max_tokens=2).usage.completion_tokens == 2
    err = served.new_stderr()
    assert "Traceback" not in err and "Error" not in err, err


# ---------------------------------------------------------------------------------------------- 2: gone clients


@pytest.fixture(scope="module")
def one_row(tiny_pth: Path) -> Iterator[Server]:
    """In-process, one batch row: a request that is not cancelled holds the row for all its tokens."""
    engine = Engine(RWKV7.from_pth(tiny_pth, dtype=torch.float32), get_tokenizer(), max_batch=1)
    srv = Server(engine, NAME, port=0, quiet=True, settings=ServerSettings(max_queue=1))
    srv.start()
    yield srv
    srv.stop()


def wait_until(cond: object, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


def test_a_client_that_goes_away_is_cancelled_within_a_step(one_row: Server) -> None:
    engine = one_row.loop.engine
    port = one_row.address[1]
    for stream in (False, True):
        body = json.dumps({"model": NAME, "prompt": "Процедура", "max_tokens": 8000, "stream": stream}).encode()
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip
        assert wait_until(lambda: engine.rows and len(engine.rows[0].generated) > 3, 30), "generation did not start"
        reset(sock) if stream else sock.close()
        # 8000 tokens would take many seconds on this CPU; the row must go at the next step
        assert wait_until(lambda: not engine.busy, 3), f"still generating: {len(engine.rows[0].generated)} tokens"
        assert engine.rows == [] and len(engine.waiting) == 0
    assert wait_until(lambda: one_row.app.in_flight == 0, 3)


def test_max_tokens_has_a_cap_and_the_queue_a_bound(one_row: Server) -> None:
    port = one_row.address[1]
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=30)
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model=NAME, prompt="x", max_tokens=10**12)
    assert exc.value.code == "max_tokens_exceeded" and exc.value.param == "max_tokens"
    # one row and a queue of one: a third long request is refused with 429 and Retry-After
    streams = [client.completions.create(model=NAME, prompt="x", max_tokens=8000, stream=True) for _ in range(2)]
    try:
        with pytest.raises(openai.RateLimitError) as busy:
            client.completions.create(model=NAME, prompt="x", max_tokens=4)
        assert busy.value.response.headers["retry-after"] == "1" and busy.value.code == "queue_full"
    finally:
        for s in streams:
            s.close()
    assert wait_until(lambda: one_row.app.in_flight == 0, 5)
    assert client.completions.create(model=NAME, prompt="x", max_tokens=4).usage.completion_tokens == 4


# ---------------------------------------------------------------------------------------------- 3: slow bodies


def test_a_body_shorter_than_its_length_times_out(served: Served) -> None:
    served.new_stderr(0)
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", served.port), timeout=15) as sock:
        sock.sendall(b'POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"model": ')
        answer = b""
        while chunk := sock.recv(65536):  # the server answers, then closes the connection
            answer += chunk
    took = time.monotonic() - start
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer
    assert is_error_body(json.loads(body)) and took < 5, took
    # an idle keep-alive connection is closed after --keep-alive
    with socket.create_connection(("127.0.0.1", served.port), timeout=15) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        start = time.monotonic()
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        assert b'"ok"' in data and time.monotonic() - start < 6
    assert "Traceback" not in served.new_stderr()


# ---------------------------------------------------------------------------------------------- 4: resets


def test_connection_resets_print_no_traceback(served: Served) -> None:
    served.new_stderr(0)
    body = json.dumps({"model": NAME, "prompt": "Если", "max_tokens": 30, "stream": True}).encode()
    request = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
    # after a whole answer, on the idle keep-alive connection (a pooled connection dropped)
    sock = socket.create_connection(("127.0.0.1", served.port), timeout=10)
    sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
    assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    reset(sock)
    # in the middle of a body, and in the middle of a stream
    sock = socket.create_connection(("127.0.0.1", served.port), timeout=10)
    sock.sendall(request + body[:10])
    reset(sock)
    sock = socket.create_connection(("127.0.0.1", served.port), timeout=10)
    sock.sendall(request + body)
    assert sock.recv(100).startswith(b"HTTP/1.1 200")
    reset(sock)
    # the openai client giving up on a slow answer and dropping its connection
    with pytest.raises(openai.APITimeoutError):
        served.client(timeout=0.3).completions.create(model=NAME, prompt="x", max_tokens=4000)
    ok = served.client().chat.completions.create(model=NAME, messages=[{"role": "user", "content": "x"}],
                                                 max_tokens=3)  # fmt: skip
    assert ok.usage is not None and ok.usage.completion_tokens <= 3
    err = served.new_stderr(0.5)
    assert "Traceback" not in err and "Error" not in err, err


# ---------------------------------------------------------------------------------------------- 5: JSON errors


def test_every_error_is_json(served: Served) -> None:
    for method in ("PUT", "DELETE", "PATCH"):
        status, body, headers = post(served.port, "/v1/completions", {"model": NAME}, method=method)
        assert status == 405 and is_error_body(body) and headers["allow"] == "POST", (method, status, body)
        assert headers["content-type"] == "application/json"
    status, body, _ = post(served.port, "/v1/models", {}, method="DELETE")
    assert status == 405 and is_error_body(body)
    for path, method in (("/v2/nothing", "GET"), ("/v1/engines", "POST")):
        status, body, _ = post(served.port, path, {}, method=method)
        assert status == 404 and is_error_body(body)
    status, body, _ = post(served.port, "/v1/completions", b"{not json")
    assert status == 400 and is_error_body(body) and "not valid JSON" in body["error"]["message"]  # type: ignore[index]
    status, body, _ = post(served.port, "/v1/completions", b"[" * 100_000)
    assert status == 400 and is_error_body(body)
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n{")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413") and is_error_body(json.loads(answer.partition(b"\r\n\r\n")[2]))
    assert "Traceback" not in served.new_stderr()


# ---------------------------------------------------------------------------------------------- shutdown


def test_sigterm_lets_a_request_in_flight_finish(tiny_pth: Path, tmp_path: Path) -> None:
    srv = start_cli(tiny_pth, tmp_path / "stderr.txt", "--shutdown-timeout", "20")
    try:
        result: dict[str, object] = {}

        def ask() -> None:
            try:
                r = srv.client().completions.create(model=NAME, prompt="Если", max_tokens=100, temperature=0)
                result["tokens"] = r.usage.completion_tokens
            except Exception as exc:
                result["error"] = exc

        asker = threading.Thread(target=ask)
        asker.start()
        time.sleep(0.5)  # the request is being generated
        srv.proc.send_signal(signal.SIGTERM)
        asker.join(timeout=60)
        assert result == {"tokens": 100}
        assert srv.proc.wait(timeout=30) == 0
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    finally:
        if srv.proc.poll() is None:
            srv.proc.kill()
    err = srv.new_stderr(0)
    assert "stopping" in err and "Traceback" not in err, err


def test_stop_cancels_what_does_not_finish_in_time(tiny_pth: Path) -> None:
    engine = Engine(RWKV7.from_pth(tiny_pth, dtype=torch.float32), get_tokenizer(), max_batch=2)
    srv = Server(engine, NAME, port=0, quiet=True, settings=ServerSettings(shutdown_timeout=1))
    port = srv.start()[1]
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=60)
    failed: list[BaseException] = []

    def ask() -> None:
        try:
            client.completions.create(model=NAME, prompt="Если", max_tokens=8000)
        except BaseException as exc:
            failed.append(exc)

    asker = threading.Thread(target=ask)
    asker.start()
    assert wait_until(lambda: engine.rows and len(engine.rows[0].generated) > 2, 30)
    start = time.monotonic()
    srv.stop()
    asker.join(timeout=30)
    assert time.monotonic() - start < 10 and not engine.busy
    assert len(failed) == 1 and isinstance(failed[0], openai.InternalServerError), failed
    assert failed[0].status_code == 503 and failed[0].code == "shutting_down"
