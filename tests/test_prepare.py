"""`rwkv1c prepare`: JSONL -> binidx (+ loss mask), bad input, parallel order, the command line."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rwkv1c.commands.prepare import prepare
from rwkv1c.data.binidx import BinIdxReader
from rwkv1c.data.prepare import PrepareSettings, output_prefix, run, setup
from rwkv1c.data.prompts import render_messages, render_prompt
from rwkv1c.errors import UserError
from rwkv1c.model.tokenizer import get_tokenizer

REPO = Path(__file__).resolve().parents[1]

TEXT_ROWS = [
    {"text": 'Процедура Тест()\r\n\tСообщить("Привет");\r\nКонецПроцедуры\r\n'},
    {"text": "Функция Сумма(А, Б) Экспорт\n\tВозврат А + Б;\nКонецФункции", "source": "extra fields are ignored"},
    {"text": "emoji 🎉 and English"},
]
PAIR = {"prompt": "Напиши функцию сложения", "response": "Функция Сумма(А, Б)\n\tВозврат А + Б;\nКонецФункции"}
CHAT = {
    "messages": [
        {"role": "user", "content": "Как получить дату?"},
        {"role": "assistant", "content": "ТекущаяДата()"},
        {"role": "user", "content": "А на сервере?"},
        {"role": "assistant", "content": "ТекущаяДатаСеанса()"},
    ]
}


def write_jsonl(path: Path, rows: list) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)) + "\n")
    return path


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def do_prepare(inp: Path, out: Path, *, skip_bad: bool = False, workers: int = 1, batch_bytes: int = 1 << 20):
    prefix = output_prefix(str(out))
    settings = PrepareSettings(inp, prefix, skip_bad=skip_bad, workers=workers, batch_bytes=batch_bytes)
    return run(settings, progress=False)


def test_output_prefix_naming() -> None:
    assert output_prefix("data/bsl") == Path("data/bsl_text_document")
    assert output_prefix("data/bsl_text_document") == Path("data/bsl_text_document")
    assert output_prefix("data/bsl_text_document.bin") == Path("data/bsl_text_document")
    assert output_prefix("data/bsl.idx") == Path("data/bsl_text_document")


def test_text_rows(tmp_path: Path) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", TEXT_ROWS)
    stats = do_prepare(inp, tmp_path / "out" / "code")
    tok = get_tokenizer()
    reader = BinIdxReader(tmp_path / "out" / "code_text_document")
    assert len(reader) == stats.documents == 3
    for i, row in enumerate(TEXT_ROWS):
        assert reader.tokens(i).tolist() == [*tok.encode(row["text"]), 0]
    assert not reader.has_mask
    assert files_in(tmp_path / "out") == ["code_text_document.bin", "code_text_document.idx"]
    assert stats.tokens == reader.total_tokens and stats.text_rows == 3 and stats.instruction_rows == 0
    assert stats.input_bytes == inp.stat().st_size
    sizes = sorted(reader.sizes.tolist())
    assert stats.length_summary["min"] == sizes[0] and stats.length_summary["max"] == sizes[-1]
    assert stats.length_summary["median"] == sizes[1]


def test_instruction_rows_are_masked(tmp_path: Path) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", [TEXT_ROWS[0], PAIR, CHAT])
    stats = do_prepare(inp, tmp_path / "mix")
    assert stats.has_mask and stats.instruction_rows == 2 and stats.text_rows == 1
    tok = get_tokenizer()
    reader = BinIdxReader(tmp_path / "mix_text_document")
    # A text row in a mixed file trains on every token.
    assert reader.mask(0).all() and reader.mask(0).size == reader.tokens(0).size
    # prompt/response: the prompt exactly as at inference, masked; the answer and token 0 trained.
    prompt_ids = tok.encode(render_prompt(PAIR["prompt"]))
    answer_ids = tok.encode(" " + PAIR["response"])
    assert reader.tokens(1).tolist() == [*prompt_ids, *answer_ids, 0]
    assert reader.mask(1).tolist() == [False] * len(prompt_ids) + [True] * (len(answer_ids) + 1)
    # messages: each segment in turn, flags from the chat format.
    expected_ids, expected_mask = [], []
    for text, trainable in render_messages(CHAT["messages"]):
        ids = tok.encode(text)
        expected_ids += ids
        expected_mask += [trainable] * len(ids)
    assert reader.tokens(2).tolist() == [*expected_ids, 0]
    assert reader.mask(2).tolist() == [*expected_mask, True]
    assert tok.decode([t for t, m in zip(reader.tokens(2), reader.mask(2), strict=True) if m]) == (
        " ТекущаяДата()\n\n ТекущаяДатаСеанса()"
    )


def test_mask_backfills_text_rows_before_the_first_instruction(tmp_path: Path) -> None:
    rows = [{"text": f"Модуль {i}\n" * 50} for i in range(30)] + [PAIR]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    do_prepare(inp, tmp_path / "d", batch_bytes=256)  # many batches: the mask starts late
    raw = (tmp_path / "d_text_document.mask").read_bytes()
    magic, version, count = struct.unpack_from("<8sQQ", raw)
    reader = BinIdxReader(tmp_path / "d_text_document")
    assert (magic, version, count) == (b"RWKVMASK", 1, reader.total_tokens)
    n_text = int(reader.sizes[:30].sum())
    assert set(raw[24 : 24 + n_text]) == {1}
    assert 0 in raw[24 + n_text :]


def test_workers_preserve_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(120):
        if i % 7 == 3:
            rows.append(PAIR)
        else:
            rows.append({"text": f"// {i}\n" + "Перем X;\n" * int(rng.integers(1, 40))})
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    do_prepare(inp, tmp_path / "one", workers=1, batch_bytes=500)
    do_prepare(inp, tmp_path / "two", workers=2, batch_bytes=500)
    for ext in (".bin", ".idx", ".mask"):
        one, two = tmp_path / f"one_text_document{ext}", tmp_path / f"two_text_document{ext}"
        assert one.read_bytes() == two.read_bytes()
    reader = BinIdxReader(tmp_path / "two_text_document")
    assert get_tokenizer().decode(reader.tokens(5)).startswith("// 5\n")


def test_long_document(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    words = ["Запрос", "Выборка", "Если", "Тогда", "КонецЕсли", ";", "\n", "\t", "Результат", "=", "1С", "😀"]
    text = "".join(rng.choice(words, size=60_000))
    inp = write_jsonl(tmp_path / "in.jsonl", [{"text": text}, {"text": "short"}])
    do_prepare(inp, tmp_path / "long")
    reader = BinIdxReader(tmp_path / "long_text_document")
    assert reader.sizes[0] > 65_535
    assert get_tokenizer().decode(reader.tokens(0)) == text


def test_escapes_that_are_valid_text(tmp_path: Path) -> None:
    # A surrogate pair is one character; an escaped backslash before "ud83d" is plain text.
    rows = ['{"text": "pair \\ud83d\\ude00 ok"}', '{"text": "path C:\\\\ud83d"}', '{"text": "\\u041f\\u0440"}']
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    do_prepare(inp, tmp_path / "e")
    reader = BinIdxReader(tmp_path / "e_text_document")
    tok = get_tokenizer()
    assert [tok.decode(reader.tokens(i)) for i in range(3)] == ["pair 😀 ok", "path C:\\ud83d", "Пр"]


def test_bom_crlf_and_blank_lines_in_the_jsonl(tmp_path: Path) -> None:
    body = "\r\n".join(json.dumps(r, ensure_ascii=False) for r in TEXT_ROWS)
    inp = tmp_path / "windows.jsonl"
    inp.write_bytes(b"\xef\xbb\xbf" + body.encode() + b"\r\n\r\n   \r\n")
    stats = do_prepare(inp, tmp_path / "w")
    assert stats.documents == 3 and stats.bad_lines == 0


BAD_LINES = [
    ("{not json", "malformed JSON"),
    ('{"title": "no text"}', "needs exactly one of 'text'"),
    ('{"text": 42}', "'text' must be a string, got a number"),
    ('{"text": null}', "'text' must be a string, got null"),
    ('{"text": "  \\n "}', "'text' is empty"),
    ('["text", "x"]', "expected a JSON object, got an array"),
    ('{"prompt": "x", "response": "y", "messages": []}', "needs exactly one of"),
    ('{"prompt": "q"}', "'response' is missing"),
    ('{"prompt": "q", "response": ""}', "response is empty"),
    ('{"messages": [{"role": "user", "content": "q"}]}', "last message must be from the assistant"),
    ('{"messages": [{"role": "robot", "content": "q"}]}', "role must be one of"),
    ('{"text": "half \\ud83d a surrogate"}', "unpaired surrogate"),
    ('{"text": "low \\uDE00 alone"}', "unpaired surrogate"),
    (b'{"text": "bad \xff\xfe bytes"}', "invalid UTF-8"),
]


@pytest.mark.parametrize(("line", "reason"), BAD_LINES, ids=[r for _, r in BAD_LINES])
def test_bad_line_stops_and_writes_nothing(tmp_path: Path, line, reason: str) -> None:
    inp = tmp_path / "in.jsonl"
    good = json.dumps(TEXT_ROWS[0]).encode() + b"\n"
    inp.write_bytes(good + (line if isinstance(line, bytes) else line.encode()) + b"\n" + good)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(UserError) as info:
        do_prepare(inp, out / "d")
    message = str(info.value)
    assert f"{inp}:2: " in message and reason in message
    assert "nothing was written" in message
    assert files_in(out) == []


def test_every_bad_line_is_listed(tmp_path: Path) -> None:
    lines = [json.dumps(r) for r in TEXT_ROWS] + ["oops", '{"text": 1}'] + [json.dumps(TEXT_ROWS[1])] * 50 + ["{"]
    inp = write_jsonl(tmp_path / "in.jsonl", lines)
    with pytest.raises(UserError) as info:
        do_prepare(inp, tmp_path / "d", workers=2, batch_bytes=200)
    message = str(info.value)
    assert "3 bad line(s)" in message
    assert f"{inp}:4:" in message and f"{inp}:5:" in message and f"{inp}:56:" in message
    assert files_in(tmp_path) == ["in.jsonl"]


def test_skip_bad_counts_and_keeps_the_good_rows(tmp_path: Path) -> None:
    lines = ["{broken", json.dumps(TEXT_ROWS[0]), '{"text": ""}', json.dumps(PAIR), '{"text": 3}']
    inp = write_jsonl(tmp_path / "in.jsonl", lines)
    stats = do_prepare(inp, tmp_path / "d", skip_bad=True)
    assert stats.bad_lines == 3 and stats.documents == 2
    assert [e.split(": ")[0] for e in stats.bad_examples] == [f"{inp}:1", f"{inp}:3", f"{inp}:5"]
    reader = BinIdxReader(tmp_path / "d_text_document")
    assert reader.tokens(0).tolist() == [*get_tokenizer().encode(TEXT_ROWS[0]["text"]), 0]
    assert reader.has_mask


def test_skip_bad_with_nothing_good_writes_nothing(tmp_path: Path) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", ["{", '{"text": 5}'])
    with pytest.raises(UserError, match="every line is bad"):
        do_prepare(inp, tmp_path / "d", skip_bad=True)
    assert files_in(tmp_path) == ["in.jsonl"]


def test_input_problems(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        setup(tmp_path / "missing.jsonl", str(tmp_path / "d"))
    (tmp_path / "empty.jsonl").write_bytes(b"")
    with pytest.raises(UserError, match="is empty"):
        setup(tmp_path / "empty.jsonl", str(tmp_path / "d"))
    with pytest.raises(UserError, match="not a file"):
        setup(tmp_path, str(tmp_path / "d"))
    (tmp_path / "blank.jsonl").write_bytes(b"\n  \n\n")
    with pytest.raises(UserError, match="only blank lines"):
        do_prepare(tmp_path / "blank.jsonl", tmp_path / "d")
    # Several problems are reported together.
    with pytest.raises(UserError) as info:
        setup(tmp_path / "missing.jsonl", str(tmp_path), workers=0)
    message = str(info.value)
    assert "does not exist" in message and "must be a file prefix" in message and "--workers" in message
    assert files_in(tmp_path) == ["blank.jsonl", "empty.jsonl"]


def test_verb_prints_the_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", [*TEXT_ROWS, "{bad"])
    assert prepare(inp, output=str(tmp_path / "v"), skip_bad=True, workers=1) == 0
    out, err = capsys.readouterr()
    assert "documents  3" in out and "skipped    1 bad line(s)" in out
    sizes = BinIdxReader(tmp_path / "v_text_document").sizes
    assert f"min {sizes.min():,}" in out and f"max {sizes.max():,}" in out
    assert f"{inp}:4: malformed JSON" in err


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run(
        [sys.executable, "-m", "rwkv1c", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_command_line_end_to_end(tmp_path: Path) -> None:
    inp = write_jsonl(tmp_path / "small.jsonl", [*TEXT_ROWS, PAIR, CHAT])
    done = run_cli("prepare", str(inp), "--output", str(tmp_path / "data" / "small"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "documents  5 (3 text, 2 instruction)" in done.stdout
    assert files_in(tmp_path / "data") == [f"small_text_document{e}" for e in (".bin", ".idx", ".mask")]
    reader = BinIdxReader(tmp_path / "data" / "small_text_document")
    assert f"tokens     {reader.total_tokens:,}" in done.stdout

    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"text": 1}\n', encoding="utf-8")
    failed = run_cli("prepare", str(tmp_path / "bad.jsonl"), "--output", str(tmp_path / "x"), cwd=tmp_path)
    assert failed.returncode == 1
    assert "bad.jsonl:2: 'text' must be a string" in failed.stderr and "Traceback" not in failed.stderr
    assert not list(tmp_path.glob("x_text_document*"))


def test_help_does_not_import_torch(tmp_path: Path) -> None:
    code = (
        "import sys\nfrom rwkv1c.cli import main\n"
        "try:\n    main(['prepare', '--help'])\nexcept SystemExit:\n    pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "--skip-bad" in done.stdout and "--workers" in done.stdout and "--output" in done.stdout
    assert done.stdout.strip().endswith("NO-TORCH")


def _worker_dies(*args: object) -> None:
    os._exit(3)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forked workers inherit the patch on Linux only")
def test_a_dead_worker_is_reported_and_nothing_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import rwkv1c.data.prepare

    monkeypatch.setattr(rwkv1c.data.prepare, "encode_lines", _worker_dies)
    inp = write_jsonl(tmp_path / "in.jsonl", TEXT_ROWS)
    with pytest.raises(UserError, match="stopped unexpectedly"):
        do_prepare(inp, tmp_path / "d", workers=2)
    assert files_in(tmp_path) == ["in.jsonl"]


def test_shell_script(tmp_path: Path) -> None:
    script = REPO / "scripts" / "prepare_binidx.sh"
    usage = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=30)
    assert usage.returncode == 2 and "usage: scripts/prepare_binidx.sh" in usage.stderr
    missing = subprocess.run(
        ["bash", str(script), str(tmp_path / "nope.jsonl"), "--output", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert missing.returncode == 1 and "input file not found" in missing.stderr
    inp = write_jsonl(tmp_path / "in.jsonl", TEXT_ROWS)
    done = subprocess.run(
        ["bash", str(script), str(inp), "--output", str(tmp_path / "s"), "--workers", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert len(BinIdxReader(tmp_path / "s_text_document")) == 3


def test_rendered_text_beside_a_pair_uses_the_pair() -> None:
    """`harvest` writes instruction rows with the rendered 'text' beside 'prompt'/'response': mask the prompt."""
    from rwkv1c.data.prepare import parse_row
    from rwkv1c.data.prompts import render_pair

    row = {"text": "User: q\n\nAssistant: a", "prompt": "q", "response": "a"}
    segments, instruction = parse_row(json.dumps(row).encode())
    assert instruction is True
    assert segments == render_pair("q", "a")
    assert [trainable for _, trainable in segments] == [False, True]


def test_binary_input_is_refused_up_front(tmp_path: Path) -> None:
    """A checkpoint passed by mistake gets one line, not a report of every 'bad line' in it."""
    inp = tmp_path / "model.pth"
    inp.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 64)
    from rwkv1c.commands.prepare import prepare

    with pytest.raises(UserError, match="binary file, not JSONL") as info:
        prepare(inp, output=str(tmp_path / "d"))
    assert len(str(info.value).splitlines()) <= 3
    assert list(tmp_path.iterdir()) == [inp]
