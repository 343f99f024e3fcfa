"""The OpenAI-compatible server, on loopback, exercised with the official `openai` client."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import torch

from rwkv1c.infer.engine import Engine
from rwkv1c.infer.sampling import SamplingParams
from rwkv1c.infer.server import Server, render_chat
from rwkv1c.model.rwkv7 import RWKV7
from rwkv1c.model.tokenizer import get_tokenizer

KEY = "test-key"
NAME = "tiny"


@pytest.fixture(scope="module")
def model(tiny_pth: Path) -> RWKV7:
    return RWKV7.from_pth(tiny_pth, dtype=torch.float32)


@pytest.fixture(scope="module")
def server(model: RWKV7) -> Iterator[Server]:
    engine = Engine(model, get_tokenizer(), max_batch=8)
    srv = Server(engine, NAME, host="127.0.0.1", port=0, api_key=KEY, max_prompt_tokens=64, quiet=True)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    host, port = server.address
    return openai.OpenAI(base_url=f"http://{host}:{port}/v1", api_key=KEY, max_retries=0, timeout=60)


def local(model: RWKV7, prompts: list[str] | list[list[int]], **kw) -> list[str]:
    """The same greedy completions computed without the server."""
    params = SamplingParams(temperature=0, **kw)
    return [c.text for c in Engine(model, get_tokenizer(), max_batch=4).generate(prompts, params)]


def test_models(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list().data] == [NAME]
    assert client.models.retrieve(NAME).id == NAME


def test_completion_and_usage(client: openai.OpenAI, model: RWKV7) -> None:
    r = client.completions.create(model=NAME, prompt="Процедура Тест()", max_tokens=9, temperature=0)
    (want,) = local(model, ["Процедура Тест()"], max_tokens=9)
    assert r.choices[0].text == want
    assert r.choices[0].finish_reason == "length"
    n_prompt = len(get_tokenizer().encode("Процедура Тест()"))
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (n_prompt, 9, n_prompt + 9)


def test_stop_strings(client: openai.OpenAI, model: RWKV7) -> None:
    (free,) = local(model, ["Запрос"], max_tokens=12)
    stop = free[4:7]
    r = client.completions.create(model=NAME, prompt="Запрос", max_tokens=12, temperature=0, stop=[stop, "zzz"])
    assert r.choices[0].text == free[: free.index(stop)]
    assert r.choices[0].finish_reason == "stop"


def test_chat_matches_rendered_prompt(client: openai.OpenAI, model: RWKV7) -> None:
    messages = [
        {"role": "system", "content": "Ты пишешь код 1С."},
        {"role": "user", "content": "Привет\n\n\nкак дела"},
        {"role": "assistant", "content": "Хорошо."},
        {"role": "user", "content": "Напиши функцию"},
    ]
    r = client.chat.completions.create(model=NAME, messages=messages, max_tokens=8, temperature=0)
    parts, system = render_chat(messages)
    assert parts == [
        "System: Ты пишешь код 1С.\n\nUser: Привет\nкак дела\n\nAssistant:",
        " Хорошо.\n\n",
        "User: Напиши функцию\n\nAssistant:",
    ]
    assert system == "System: Ты пишешь код 1С.\n\n"
    tok = get_tokenizer()
    ids = [t for part in parts for t in tok.encode(part)]  # segment by segment, as in training
    (want,) = local(model, [ids], max_tokens=8, stop=("\n\nUser:",))
    assert r.choices[0].message.content == want.strip()
    assert r.choices[0].message.role == "assistant"


def test_streaming(client: openai.OpenAI, model: RWKV7) -> None:
    pieces, reasons = [], []
    stream = client.completions.create(
        model=NAME, prompt="Если", max_tokens=10, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    usage = None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for ch in chunk.choices:
            pieces.append(ch.text)
            reasons.append(ch.finish_reason)
    (want,) = local(model, ["Если"], max_tokens=10)
    assert "".join(pieces) == want and reasons[-1] == "length"
    assert usage is not None and usage.completion_tokens == 10
    chat = client.chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": "Привет"}], max_tokens=6, temperature=0, stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in chat if c.choices)
    (want,) = local(model, ["User: Привет\n\nAssistant:"], max_tokens=6, stop=("\n\nUser:",))
    assert text == want.strip()


def test_n_choices(client: openai.OpenAI) -> None:
    r = client.completions.create(model=NAME, prompt="Функция", max_tokens=6, temperature=1.0, top_p=1.0, n=3, seed=4)
    assert sorted(c.index for c in r.choices) == [0, 1, 2]
    texts = [c.text for c in r.choices]
    assert len(set(texts)) > 1  # independent samples
    again = client.completions.create(
        model=NAME, prompt="Функция", max_tokens=6, temperature=1.0, top_p=1.0, n=3, seed=4
    )
    assert [c.text for c in again.choices] == texts  # seeded: reproducible
    assert r.usage.completion_tokens == 18


def test_bad_requests_answer_4xx_and_keep_serving(client: openai.OpenAI, server: Server) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        client.completions.create(model="gpt-4", prompt="x", max_tokens=2)
    assert "does not exist" in exc.value.message
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model=NAME, prompt="x", max_tokens=-3)
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model=NAME, prompt="слово " * 200, max_tokens=2)
    assert exc.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model=NAME, prompt="x", temperature=9)
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model=NAME, messages=[{"role": "wizard", "content": "x"}])
    host, port = server.address
    wrong = openai.OpenAI(base_url=f"http://{host}:{port}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    # invalid JSON, by hand: the body must say what is wrong in OpenAI's error shape
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.request("POST", "/v1/completions", body=b"{not json", headers={"Authorization": f"Bearer {KEY}"})
    resp = conn.getresponse()
    body = json.loads(resp.read())
    assert resp.status == 400 and "not valid JSON" in body["error"]["message"]
    assert set(body["error"]) == {"message", "type", "param", "code"}
    conn.close()
    # still serving
    assert client.completions.create(model=NAME, prompt="x", max_tokens=2, temperature=0).choices[0].text


def test_concurrent_clients_are_batched(client: openai.OpenAI, model: RWKV7, server: Server) -> None:
    prompts = [f"Пример {i}: " + "слово " * i for i in range(8)]
    want = local(model, prompts, max_tokens=8)
    got: dict[int, str] = {}
    errors: list[BaseException] = []
    engine = server.loop.engine
    rows_seen: list[int] = []
    step = engine.step

    def spy() -> None:
        rows_seen.append(len(engine.rows) + len(engine.waiting))
        step()

    engine.step = spy  # type: ignore[method-assign]

    def ask(i: int) -> None:
        try:
            r = client.completions.create(model=NAME, prompt=prompts[i], max_tokens=8, temperature=0)
            got[i] = r.choices[0].text
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    finally:
        del engine.step
    assert not errors
    assert [got[i] for i in range(8)] == want
    assert max(rows_seen) > 1  # requests shared decode steps


def test_cli_serve_end_to_end(tiny_pth: Path) -> None:
    """The real command on port 0: it prints its address, answers the client, and stops on Ctrl-C."""
    import re
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "rwkv1c", "serve", "--model", str(tiny_pth), "--port", "0", "--device", "cpu"],
        stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        url = None
        assert proc.stderr is not None
        for line in proc.stderr:
            found = re.search(r"at (http://127\.0\.0\.1:\d+/v1)", line)
            if found:
                url = found.group(1)
                break
        assert url is not None, "the server did not report its address"
        cli = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)
        assert [m.id for m in cli.models.list().data] == [tiny_pth.stem]
        r = cli.completions.create(model=tiny_pth.stem, prompt="Привет", max_tokens=3, temperature=0)
        assert r.usage.completion_tokens == 3
    finally:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=60)
    assert rc == 0


def test_next_chat_turn_reads_only_its_new_part(client: openai.OpenAI, server: Server) -> None:
    tok = get_tokenizer()
    first = [{"role": "system", "content": "Правила."}, {"role": "user", "content": "Первый вопрос"}]
    r = client.chat.completions.create(model=NAME, messages=first, max_tokens=4, temperature=0)
    second = [*first, {"role": "assistant", "content": r.choices[0].message.content or "-"}]
    second.append({"role": "user", "content": "Второй вопрос"})
    model = server.loop.engine.model
    counted: list[int] = []
    forward = model.forward
    model.forward = lambda tokens, *a, **k: counted.append(tokens.numel()) or forward(tokens, *a, **k)
    try:
        client.chat.completions.create(model=NAME, messages=second, max_tokens=4, temperature=0)
    finally:
        del model.forward
    before = sum(len(tok.encode(p)) for p in render_chat(first)[0])
    after = sum(len(tok.encode(p)) for p in render_chat(second)[0])
    assert sum(counted) == after - before


def test_an_engine_failure_fails_its_requests_and_the_server_goes_on(model: RWKV7) -> None:
    engine = Engine(model, get_tokenizer(), max_batch=2)
    real_step, failures = engine.step, [1]

    def step_failing_once() -> None:
        if failures:
            failures.pop()
            raise RuntimeError("device lost")
        real_step()

    engine.step = step_failing_once  # type: ignore[method-assign]
    srv = Server(engine, NAME, host="127.0.0.1", port=0, api_key=KEY, max_prompt_tokens=64, quiet=True)
    srv.start()
    try:
        host, port = srv.address
        c = openai.OpenAI(base_url=f"http://{host}:{port}/v1", api_key=KEY, max_retries=0, timeout=60)
        with pytest.raises(openai.InternalServerError, match="device lost"):
            c.completions.create(model=NAME, prompt="Процедура", max_tokens=3, temperature=0)
        assert c.completions.create(model=NAME, prompt="Процедура", max_tokens=3, temperature=0).choices[0].text
    finally:
        srv.stop()


def test_serve_reports_every_bad_setting_at_once(tiny_pth: Path) -> None:
    from rwkv1c.commands.serve import serve
    from rwkv1c.errors import UserError

    with pytest.raises(UserError) as exc:
        serve(model=tiny_pth, port=70000, max_tokens=300, max_tokens_cap=200, max_queue=-1, request_timeout=0,
              prefix_cache_mb=-1, adapter=["a=x", "a=y"])  # fmt: skip
    text = str(exc.value)
    for part in ("--port", "above --max-tokens-cap", "--max-queue", "--prefix-cache-mb", "--request-timeout",
                 "answer to a"):  # fmt: skip
        assert part in text, part


@pytest.mark.parametrize("mb", [0.0, 1.5])
def test_serve_prefix_cache_setting_reaches_the_engine(tiny_pth: Path, mb: float) -> None:
    from rwkv1c.commands.serve import setup
    from rwkv1c.infer.api import Limits
    from rwkv1c.infer.server import ServerSettings

    srv = setup(tiny_pth, None, [], model_name=None, host="127.0.0.1", port=0, max_batch=2, prefix_cache_mb=mb,
                device="cpu", dtype="fp32", quant="none", limits=Limits(), settings=ServerSettings())  # fmt: skip
    srv.start()
    try:
        assert srv.loop.engine.cache.max_bytes == int(mb * 2**20)
    finally:
        srv.stop()
