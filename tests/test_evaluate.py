"""`rwkv1c eval`: loss and bits per byte, answer scoring, the built-in tasks, the report end to end."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from rwkv1c import cli
from rwkv1c.commands.eval import evaluate
from rwkv1c.errors import UserError
from rwkv1c.onec.evaluate import (
    Prompt,
    builtin_tasks,
    completion_prompts,
    documents_nll,
    entries_for,
    score_answer,
    task_prompts,
)

TEXTS = [
    "Процедура ОбработкаПроведения(Отказ, Режим)\n\tДвижения.Товары.Записывать = Истина;\nКонецПроцедуры",
    'Функция Сумма(А, Б) Экспорт\n\t// складывает\n\tВозврат А + Б;\nКонецФункции\n\nТекст = "ВЫБРАТЬ 1";',
]
COMPLETE = {
    "task": "complete",
    "source": "CommonModules/М/Ext/Module.bsl",
    "method": "Проверить",
    "language": "ru",
    "prompt": "Допиши метод на 1С (общий модуль):\nПроцедура Проверить(А)\n\tЕсли А Тогда",
    "response": "\t\tСообщить(А);\n\tКонецЕсли;\nКонецПроцедуры",
}


def write_val(path: Path) -> Path:
    rows = [{"text": t, "task": "text", "source": f"m{i}.bsl"} for i, t in enumerate(TEXTS)]
    rows.append({"text": "User: x\n\nAssistant: y", **COMPLETE})
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def direct_nll(pth: Path, texts: list[str], adapter: Path | None = None) -> float:
    """The loss computed the plain way: one forward pass over [0] + tokens per text, summed cross-entropy."""
    from rwkv1c.model.loader import load_model
    from rwkv1c.model.tokenizer import get_tokenizer

    model = load_model(pth, adapter, dtype=torch.float32)
    total = 0.0
    for text in texts:
        ids = get_tokenizer().encode(text)
        with torch.no_grad():
            logits, _ = model(torch.tensor([[0, *ids[:-1]]]))
        total += float(torch.nn.functional.cross_entropy(logits[0].float(), torch.tensor(ids), reduction="sum"))
    return total


def make_adapter(folder: Path, base: Path, prompt_format: str = "rwkv-chat") -> Path:
    """A LoRA adapter on att.key of every block, with non-zero B so that it changes the model."""
    from rwkv1c.fsutil import sha256_file
    from rwkv1c.model.adapter import adapter_config, save_adapter
    from rwkv1c.model.checkpoint import load_checkpoint
    from rwkv1c.model.config import ModelConfig

    config = ModelConfig.from_state_dict(load_checkpoint(base))
    g = torch.Generator().manual_seed(1)
    tensors = {}
    for i in range(config.n_layer):
        tensors[f"blocks.{i}.att.key.lora_A"] = torch.randn(4, config.n_embd, generator=g) * 0.3
        tensors[f"blocks.{i}.att.key.lora_B"] = torch.randn(config.n_embd, 4, generator=g) * 0.3
    cfg = adapter_config(
        base_path=base,
        base_sha256=sha256_file(base),
        model_config=config,
        quant="none",
        r=4,
        alpha=8.0,
        dropout=0.0,
        targets=["att.key"],
        extra_groups=[],
        extra_keys=[],
        training={},
        step=0,
        prompt_format=prompt_format,  # type: ignore[arg-type]
    )
    save_adapter(folder, tensors, cfg)
    return folder


def test_chunked_nll_equals_one_pass(tiny_pth: Path) -> None:
    from rwkv1c.model.rwkv7 import RWKV7
    from rwkv1c.model.tokenizer import get_tokenizer

    model = RWKV7.from_pth(tiny_pth, dtype=torch.float32)
    ids = [get_tokenizer().encode(t) for t in TEXTS]
    assert len(ids[1]) > 20 and len({len(x) for x in ids}) > 1
    alone = [direct_nll(tiny_pth, [t]) for t in TEXTS]
    # side by side in calls of one shape, in chunks that carry the state: each document as in one pass
    for chunk, rows, fixed in ((4096, 1, False), (len(ids[1]) // 3 + 1, 2, False), (16, 4, True), (16, 2, True)):
        got = documents_nll(model, ids, chunk=chunk, rows=rows, fixed=fixed)  # fixed: the GPU's padded shapes
        assert got == pytest.approx(alone, rel=1e-5)


def test_eval_end_to_end(tiny_pth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    val = write_val(tmp_path / "val.jsonl")
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(
        json.dumps({"id": "t1", "prompt": "Напиши функцию.", "expect": ["Функция"]}, ensure_ascii=False)
        + "\n"
        + json.dumps({"id": "t2", "prompt": "Write a procedure.", "language": "en"})
        + "\n",
        encoding="utf-8",
    )
    adapter = make_adapter(tmp_path / "adapter", tiny_pth)
    out = tmp_path / "report"
    code = evaluate(
        model=[tiny_pth],
        adapter=[adapter],
        data=val,
        output=out,
        tasks=tasks,
        builtin=False,
        completions=5,
        max_new_tokens=6,
        device="cpu",
    )
    assert code == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert [e["name"] for e in report["entries"]] == ["tiny", "tiny+adapter"]
    # the loss equals a direct computation, for the base and for base + adapter
    for entry, adp in zip(report["entries"], [None, adapter], strict=True):
        loss = entry["loss"]
        expected = direct_nll(tiny_pth, TEXTS, adp)
        n_bytes = sum(len(t.encode()) for t in TEXTS)
        assert loss["documents"] == 2 and loss["bytes"] == n_bytes
        assert loss["nll_sum"] == pytest.approx(expected, rel=1e-5)
        assert loss["bits_per_byte"] == pytest.approx(expected / math.log(2) / n_bytes, rel=1e-5)
        assert loss["loss"] == pytest.approx(expected / loss["tokens"], rel=1e-5)
    base, tuned = report["entries"]
    assert base["loss"]["nll_sum"] != pytest.approx(tuned["loss"]["nll_sum"])  # the adapter is applied
    # every prompt (2 tasks + 1 completion) answered by every model
    assert report["data"]["prompts"] == {"builtin": 2, "completion": 1}
    generations = [json.loads(line) for line in (out / "generations.jsonl").read_text(encoding="utf-8").splitlines()]
    for name in ("tiny", "tiny+adapter"):
        ids = sorted(g["id"] for g in generations if g["entry"] == name)
        assert len(ids) == 3 and ids[0].startswith("complete-") and ids[1:] == ["t1", "t2"]
    assert all(g["new_tokens"] <= 6 for g in generations)
    for entry in report["entries"]:
        gen = entry["generation"]
        assert gen["all"]["prompts"] == 3 and gen["completion"]["prompts"] == 1 and gen["builtin"]["prompts"] == 2
        mine = [g for g in generations if g["entry"] == entry["name"]]
        assert gen["all"]["structural_valid"] == pytest.approx(sum(g["structural_valid"] for g in mine) / 3)
    # the true continuation scores as valid and consistent
    assert report["reference"]["completion"]["structural_valid"] == 1.0
    assert report["reference"]["completion"]["language_consistency"] == 1.0
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "| bits per byte |" in md and "Δ tiny+adapter − tiny" in md
    assert f"{tuned['loss']['bits_per_byte']:.4f}" in md
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| bits per byte |" in capsys.readouterr().out


def test_eval_loss_only_through_the_cli(tiny_pth: Path, tmp_path: Path) -> None:
    val = write_val(tmp_path / "val.jsonl")
    out = tmp_path / "r"
    argv = ["eval", "--model", str(tiny_pth), "--data", str(val), "--output", str(out), "--no-generation"]
    assert cli.main([*argv, "--device", "cpu", "--max-eval-tokens", "1"]) == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["entries"][0]["loss"]["documents"] == 1  # the budget stops after the first document
    assert "generation" not in report["entries"][0]
    assert (out / "report.png").is_file()


def test_bad_arguments_are_reported_together(tmp_path: Path) -> None:
    with pytest.raises(UserError) as err:
        evaluate(
            model=[tmp_path / "missing.pth"],
            adapter=[tmp_path / "no-adapter"],
            data=tmp_path / "val.jsonl",
            output=tmp_path / "out",
            completions=-1,
        )
    message = str(err.value)
    for part in ("model file not found", "adapter folder not found", "data file not found", "--completions"):
        assert part in message
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(UserError, match="is a file; pass the folder that holds it"):
        evaluate(
            model=[tmp_path / "missing.pth"],
            adapter=[tmp_path / "adapter_config.json"],
            data=tmp_path / "v",
            output=tmp_path / "out",
        )
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "А = 1;"}\nnot json\n', encoding="utf-8")
    pth = tmp_path / "m.pth"
    pth.write_bytes(b"x")
    with pytest.raises(UserError, match=r"bad.jsonl:2: not JSON"):
        evaluate(model=[pth], data=bad, output=tmp_path / "o", device="cpu")


PY_ANSWER = "```python\ndef total(rows):\n    return sum(r.amount for r in rows)\n```"
GOOD_RU = '```bsl\nФункция Итог(Таблица) Экспорт\n\tВозврат Таблица.Итог("Сумма");\nКонецФункции\n```'


def prompt(language: str = "ru", expect: tuple[str, ...] = (), prefix: str = "") -> Prompt:
    return Prompt(id="p", set="builtin", language=language, user="x", prefix=prefix, expect=expect)  # type: ignore[arg-type]


def test_score_answer() -> None:
    good = score_answer(GOOD_RU, prompt(expect=(r"Функция\s+Итог", r"Итог\(", r"ВЫБРАТЬ")))
    assert good["structural_valid"] and good["fenced"] and good["foreign"] == []
    assert good["language_share"] == 1.0 and good["keyword_language"] == "ru"
    assert good["expect_hit"] == pytest.approx(2 / 3)
    py = score_answer(PY_ANSWER, prompt())
    assert not py["structural_valid"] and not py["has_code"] and "python:def" in py["foreign"]
    english = score_answer("Function Total(T) Export\n\tReturn T;\nEndFunction", prompt("ru"))
    assert english["structural_valid"] and english["language_share"] == 0.0
    broken = score_answer("Процедура А()\n\tЕсли Б Тогда\n\t\tВ();\nКонецПроцедуры", prompt())
    assert not broken["structural_valid"] and "'Если' is not closed" in broken["problems"][0]
    assert not score_answer("", prompt())["structural_valid"]
    # a completion is judged together with the code it continues
    pre = "Процедура А()\n\tЕсли Б Тогда"
    assert score_answer("\t\tВ();\n\tКонецЕсли;\nКонецПроцедуры", prompt(prefix=pre))["structural_valid"]
    assert not score_answer("\t\tВ();\nКонецПроцедуры", prompt(prefix=pre))["structural_valid"]
    assert score_answer("КонецПроцедуры", prompt(prefix="Процедура А()"))["structural_valid"]


def test_builtin_tasks_cover_the_topics() -> None:
    rows = builtin_tasks()
    prompts, problems = task_prompts(rows, "built-in")
    assert problems == [] and len(prompts) == len(rows) >= 20
    assert len({p.id for p in prompts}) == len(prompts)
    assert {"query", "value_table", "posting", "form", "http", "transaction", "doc_comment"} <= {
        p.topic for p in prompts
    }
    assert sum(p.language == "en" for p in prompts) >= 3
    assert all(p.expect for p in prompts)
    query = [p.user for p in prompts if p.topic == "query"]
    assert any(re.search(r"Остатки|СрезПоследних|Обороты", q) for q in query)


def test_completion_prompt_choice_is_seeded() -> None:
    rows = [{**COMPLETE, "method": f"М{i}"} for i in range(10)] + [{"task": "text", "text": "А;"}]
    a = completion_prompts(rows, 4, seed=1)
    assert len(a) == 4 and [p.id for p in a] == [p.id for p in completion_prompts(rows, 4, seed=1)]
    assert [p.id for p in a] != [p.id for p in completion_prompts(rows, 4, seed=2)]
    assert a[0].prefix == "Процедура Проверить(А)\n\tЕсли А Тогда" and a[0].reference == COMPLETE["response"]


def test_entry_names_are_unique(tmp_path: Path) -> None:
    a, b = tmp_path / "x" / "m.pth", tmp_path / "y" / "m.pth"
    names = [e.name for e in entries_for([a, b], [tmp_path / "run1" / "adapter"])]
    assert names == ["m", "m#2", "m+adapter"]


def test_each_entry_is_prompted_in_its_adapter_s_format(tiny_pth: Path, tmp_path: Path) -> None:
    """A chat-trained adapter gets chat turns; one trained on plain code gets the code to continue."""
    from rwkv1c.onec.evaluate import Entry, Prompt, prompt_format_of, render_for

    chat = make_adapter(tmp_path / "chat", tiny_pth)
    text = make_adapter(tmp_path / "text", tiny_pth, prompt_format="text")
    assert prompt_format_of(Entry("base", tiny_pth)) == "rwkv-chat"
    assert prompt_format_of(Entry("chat", tiny_pth, chat)) == "rwkv-chat"
    assert prompt_format_of(Entry("text", tiny_pth, text)) == "text"
    task = Prompt(id="t", set="builtin", language="ru", user="Напиши функцию суммы")
    completion = Prompt(id="c", set="completion", language="ru", user="Продолжи\nПроцедура А()", prefix="Процедура А()")
    assert render_for(task, "rwkv-chat").startswith("User: Напиши") and render_for(task, "rwkv-chat").endswith(
        "Assistant:"
    )
    assert render_for(task, "text") == "// Напиши функцию суммы\n"
    assert render_for(completion, "text") == "Процедура А()"
