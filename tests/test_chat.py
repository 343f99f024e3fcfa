"""`rwkv1c chat`: the conversation lives in the recurrent state and equals reading the whole transcript."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rwkv1c.commands.chat import repl
from rwkv1c.infer.chat import ChatSession
from rwkv1c.infer.engine import Engine
from rwkv1c.infer.sampling import SamplingParams
from rwkv1c.model.rwkv7 import RWKV7
from rwkv1c.model.tokenizer import get_tokenizer

PARAMS = SamplingParams(max_tokens=6, temperature=0)


@pytest.fixture(scope="module")
def model(tiny_pth: Path) -> RWKV7:
    return RWKV7.from_pth(tiny_pth, dtype=torch.float32)


def session(model: RWKV7, system: str | None = None) -> ChatSession:
    return ChatSession(Engine(model, get_tokenizer(), max_batch=1, prefix_cache_mb=0), PARAMS, system)


def transcript_ids(tok, messages: list[dict[str, str]], system: str | None, question: str) -> list[int]:
    """The conversation tokenised segment by segment, as training data is: turns, answers, next turn."""
    ids = tok.encode(f"System: {system}\n\n") if system else []
    for m in messages:
        if m["role"] == "user":
            ids += tok.encode(f"User: {m['content']}\n\nAssistant:")
        else:
            ids += tok.encode(f" {m['content']}\n\n")
    return ids + tok.encode(f"User: {question}\n\nAssistant:")


@pytest.mark.parametrize("system", [None, "Ты помощник программиста 1С."])
def test_state_equals_reading_the_transcript(model: RWKV7, system: str | None) -> None:
    tok = get_tokenizer()
    chat = session(model, system)
    chat.ask("Привет")
    chat.ask("Напиши\n\n\nпроцедуру")  # blank lines collapse
    assert chat.messages[2]["content"] == "Напиши\nпроцедуру"
    history = chat.messages[:2]
    fresh = Engine(model, get_tokenizer(), prefix_cache_mb=0)
    params = SamplingParams(max_tokens=6, temperature=0, stop=("\n\nUser:",))
    want = fresh.generate([transcript_ids(tok, history, system, "Напиши\nпроцедуру")], params)[0]
    assert chat.messages[3]["content"] == want.text.strip()
    # and the state after the second answer is the state after the whole transcript
    full = transcript_ids(tok, history, system, "Напиши\nпроцедуру") + tok.encode(f" {chat.messages[3]['content']}\n\n")
    state, _ = fresh.prefill(full)
    assert chat.state is not None and torch.allclose(chat.state.wkv, state.wkv, atol=1e-4)


def test_reset_and_save(model: RWKV7, tmp_path: Path) -> None:
    chat = session(model, "Система")
    first = chat.ask("Вопрос")
    chat.ask("Ещё")
    chat.reset()
    assert chat.messages == [] and chat.ask("Вопрос") == first
    path = chat.save(tmp_path / "c.json")
    saved = json.loads(path.read_text(encoding="utf-8"))
    assert [m["role"] for m in saved["messages"]] == ["system", "user", "assistant"]
    assert saved["messages"][0]["content"] == "Система"


def test_repl_commands_and_multiline(model: RWKV7, tmp_path: Path) -> None:
    chat = session(model)
    save = f"/save {tmp_path / 't.json'}"
    lines = ["Привет", '"""', "строка 1", "", "строка 2", '"""', "/help", save, "/reset", "/quit", "never read"]
    out, err = io.StringIO(), io.StringIO()
    turns = repl(chat, iter(line + "\n" for line in lines), out, err)
    assert turns == 2
    assert out.getvalue().count("Assistant:") == 2
    saved = json.loads((tmp_path / "t.json").read_text(encoding="utf-8"))
    assert saved["messages"][2]["content"] == "строка 1\nстрока 2"
    assert "/reset" in err.getvalue() and "conversation reset" in err.getvalue()
    assert chat.messages == []


def test_a_failed_save_keeps_the_conversation_going(model: RWKV7, tmp_path: Path) -> None:
    (tmp_path / "file.txt").write_text("x")
    lines = ["Привет", f"/save {tmp_path / 'file.txt' / 'c.json'}", "Ещё", "/quit"]
    err = io.StringIO()
    turns = repl(session(model), iter(line + "\n" for line in lines), io.StringIO(), err)
    assert turns == 2 and "not saved: cannot write" in err.getvalue()


def test_cli_chat_end_to_end(tiny_pth: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "rwkv1c", "chat", "--model", str(tiny_pth), "--temperature", "0", "--max-tokens", "4",
         "--device", "cpu"],
        input="Привет\n/quit\n", capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Assistant:") and r.stdout.endswith("\n\n")
    assert "/help" in r.stderr
