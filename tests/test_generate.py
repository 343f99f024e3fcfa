"""`rwkv1c generate`: the continuation alone on stdout, JSONL in and out, settings checked up front."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rwkv1c.commands.generate import generate, unescape
from rwkv1c.data.prompts import render_prompt
from rwkv1c.errors import UserError
from rwkv1c.infer.engine import Engine
from rwkv1c.infer.sampling import SamplingParams
from rwkv1c.model.rwkv7 import RWKV7
from rwkv1c.model.tokenizer import get_tokenizer


def expected(tiny_pth: Path, prompts: list[str], **kw) -> list[str]:
    model = RWKV7.from_pth(tiny_pth, dtype=torch.float32)
    params = SamplingParams(temperature=0, **kw)
    return [c.text for c in Engine(model, get_tokenizer()).generate(prompts, params)]


def test_cli_prompt_prints_only_the_continuation(tiny_pth: Path) -> None:
    prompt = "Процедура ОбработкаПроведения(Отказ)"
    r = subprocess.run(
        [sys.executable, "-m", "rwkv1c", "generate", "--model", str(tiny_pth), "--prompt", prompt,
         "--temperature", "0", "--max-tokens", "12", "--device", "cpu"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    (want,) = expected(tiny_pth, [prompt], max_tokens=12)
    assert r.stdout == want
    assert "generated 12 tokens" in r.stderr and "model: 2 layers x 128" in r.stderr


def test_cli_jsonl_in_and_out(tiny_pth: Path, tmp_path: Path) -> None:
    rows = [
        {"id": "a", "prompt": "Функция Сумма(А, Б)"},
        {"id": "b", "prompt": "Запрос = Новый Запрос;", "max_tokens": 3},
        {"id": "c", "prompt": "Если Отказ Тогда", "stop": ["never"]},
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    r = subprocess.run(
        [sys.executable, "-m", "rwkv1c", "generate", "--model", str(tiny_pth), "--prompts", str(src),
         "--temperature", "0", "--max-tokens", "7", "--batch-size", "2", "--device", "cpu"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = [json.loads(line) for line in r.stdout.splitlines()]
    assert [o["id"] for o in out] == ["a", "b", "c"]
    want7 = expected(tiny_pth, [rows[0]["prompt"], rows[2]["prompt"]], max_tokens=7)
    (want3,) = expected(tiny_pth, [rows[1]["prompt"]], max_tokens=3)
    assert [o["completion"] for o in out] == [want7[0], want3, want7[1]]
    assert [o["completion_tokens"] for o in out] == [7, 3, 7]
    assert all(o["finish_reason"] == "length" and o["prompt_tokens"] > 0 for o in out)


def test_chat_format_and_output_file(tiny_pth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "answer.txt"
    generate(model=tiny_pth, prompt="Напиши\n\n\nфункцию", chat=True, temperature=0, max_tokens=6, output=out)
    (want,) = expected(tiny_pth, [render_prompt("Напиши\n\n\nфункцию")], max_tokens=6, stop=("\n\nUser:",))
    assert out.read_text(encoding="utf-8") == want
    assert capsys.readouterr().out == ""


def test_seeded_generation_is_reproducible(tiny_pth: Path, capsys: pytest.CaptureFixture[str]) -> None:
    texts = []
    for seed in (3, 3, 4):
        generate(model=tiny_pth, prompt="Перем Х;", max_tokens=8, temperature=1.0, top_p=1.0, seed=seed)
        texts.append(capsys.readouterr().out)
    assert texts[0] == texts[1] != texts[2]


def test_bad_arguments_are_reported_together(tiny_pth: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="exactly one of --prompt"):
        generate(model=tiny_pth)
    with pytest.raises(UserError) as exc:
        generate(model=tiny_pth, prompt="x", top_p=1.5, temperature=-1, max_tokens=-2)
    assert all(word in str(exc.value) for word in ("--top-p", "--temperature", "--max-tokens"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\nnot json\n{"text": "no prompt"}\n{"prompt": "x", "top_k": "many"}\n')
    with pytest.raises(UserError) as exc:
        generate(model=tiny_pth, prompts=bad)
    message = str(exc.value)
    assert "line 2: not JSON" in message and "line 3" in message and 'line 4: "top_k"' in message
    with pytest.raises(UserError, match="model file not found"):
        generate(model=tmp_path / "missing.pth", prompt="x")
    with pytest.raises(UserError, match="adapter folder not found"):
        generate(model=tiny_pth, adapter=tmp_path / "no-adapter", prompt="x")
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(UserError, match="is a file; pass the folder that holds it"):
        generate(model=tiny_pth, adapter=tmp_path / "adapter_config.json", prompt="x")
    with pytest.raises(UserError, match="drop --no-blank-line-stop"):  # a chat reply always ends at its turn end
        generate(model=tiny_pth, prompt="x", chat=True, blank_line_stop=False)


def test_cli_error_is_one_paragraph(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "rwkv1c", "generate", "--model", str(tmp_path / "none.pth"), "--prompt", "x"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 1 and "model file not found" in r.stderr and "Traceback" not in r.stderr
    assert r.stdout == ""


def test_unescape() -> None:
    assert unescape(r"a\nb\tc\\n") == "a\nb\tc\\n"
    assert unescape("Конец\\n") == "Конец\n"


def test_old_script_names_wrap_the_engine(tiny_pth: Path) -> None:
    """scripts/run_albatross.sh -> scripts/infer_albatross.py: the old flags, our engine, the old output layout."""
    repo = Path(__file__).resolve().parents[1]
    prefix = str(tiny_pth)[: -len(".pth")]  # the old prefix form of --model
    r = subprocess.run(
        ["bash", str(repo / "scripts" / "run_albatross.sh"), "--model", prefix, "--prompt", "Функция", "--tokens", "5",
         "--batch", "2", "--auto-clone", "--device", "cpu"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    (want,) = expected(tiny_pth, ["Функция"], max_tokens=5, stop_token_ids=(0,))
    assert r.stdout == ("[sample 0]\nФункция" + want + "\n" + "-" * 80 + "\n") + (
        "[sample 1]\nФункция" + want + "\n" + "-" * 80 + "\n"
    )
    assert "ignored" in r.stderr and "git" not in r.stderr
    r = subprocess.run(["bash", str(repo / "scripts" / "run_albatross.sh")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "ALBATROSS_MODEL" in r.stderr


@pytest.mark.parametrize(("fmt", "flag", "chat_used"), [
    ("rwkv-chat", None, True),  # a chat-tuned adapter is prompted in the chat format without a flag
    ("text", None, False),  # one trained on plain code continues the text as given
    ("rwkv-chat", False, False),  # a flag still overrides
    ("text", True, True),
])  # fmt: skip
def test_the_adapter_s_prompt_format_is_the_default(
    tiny_pth: Path, tmp_path: Path, fmt: str, flag: bool | None, chat_used: bool
) -> None:
    from rwkv1c.model.loader import load_model
    from tests.test_evaluate import make_adapter

    adapter = make_adapter(tmp_path / "adapter", tiny_pth, prompt_format=fmt)
    out = tmp_path / "answer.txt"
    prompt = "Напиши процедуру"
    generate(model=tiny_pth, adapter=adapter, prompt=prompt, chat=flag, temperature=0, max_tokens=5, output=out)
    model = load_model(tiny_pth, adapter, dtype=torch.float32)
    text = render_prompt(prompt) if chat_used else prompt
    (want,) = [
        c.text for c in Engine(model, get_tokenizer()).generate([text], SamplingParams(temperature=0, max_tokens=5))
    ]
    assert out.read_text(encoding="utf-8") == want
