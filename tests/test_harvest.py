"""`rwkv1c harvest`: layouts, reading, splitting into samples, de-duplication, the split, the outputs."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from rwkv1c import cli
from rwkv1c.commands.harvest import harvest
from rwkv1c.data.prompts import render_pair
from rwkv1c.errors import UserError
from rwkv1c.onec import bsl
from rwkv1c.onec.harvest import (
    HarvestSettings,
    NearDuplicateIndex,
    chunk_ranges,
    classify,
    harvest_tree,
    read_source,
    repeated_headers,
    side_paths,
    statement_starts,
    strip_header,
)

HEADER = (
    "////////////////////////////////////////\n"
    "// Copyright (c) 2024, ООО Пример\n"
    "// Распространяется по лицензии Apache-2.0\n"
    "////////////////////////////////////////\n"
)

DOCUMENTED = """\
#Область ПрограммныйИнтерфейс

// Возвращает сумму строк табличной части.
//
// Параметры:
//  Таблица - ТаблицаЗначений - строки с колонкой Сумма.
//
// Возвращаемое значение:
//  Число - итог.
//
Функция {name}(Таблица) Экспорт
	Итог = 0;
	Для Каждого Строка Из Таблица Цикл
		Итог = Итог + Строка.Сумма;
	КонецЦикла;
	Если Итог < 0 Тогда
		Итог = 0;
	КонецЕсли;
	Возврат Итог;
КонецФункции

#КонецОбласти
"""

FORM = """\
&НаКлиенте
Процедура ПриОткрытии(Отказ)
	Заголовок = "Форма {name}";
	ОбновитьНаСервере();
КонецПроцедуры

&НаСервере
Процедура ОбновитьНаСервере()
	Элементы.Список.Видимость = Истина;
КонецПроцедуры
"""


def write(path: Path, text: str, *, bom: bool = False, crlf: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.replace("\n", "\r\n") if crlf else text
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data.encode("utf-8"))
    return path


def unique_module(i: int) -> str:
    """Modules different enough not to count as near-duplicates of each other."""
    words = ["Склад", "Контрагент", "Номенклатура", "Договор", "Организация", "Валюта", "Касса", "Банк"]
    w = words[i % len(words)]
    return "".join(
        f"Процедура Обработать{w}{j}_{i}(Параметр{j})\n\t{w}{i}_{j} = Параметр{j} * {i + j};\n"
        f'\tЕсли {w}{i}_{j} > {j} Тогда\n\t\tСообщить("{w} {i} {j}");\n\tКонецЕсли;\nКонецПроцедуры\n\n'
        for j in range(3)
    )


@pytest.fixture
def edt_tree(tmp_path: Path) -> Path:
    """A small 1C:EDT project (LF, no BOM)."""
    src = tmp_path / "edt" / "src"
    write(src / "CommonModules" / "Расчеты" / "Module.bsl", DOCUMENTED.format(name="СуммаСтрок"))
    write(
        src / "CommonModules" / "Расчеты" / "Расчеты.mdo",
        '<?xml version="1.0" encoding="UTF-8"?>\n<mdclass:CommonModule xmlns:mdclass="http://g5.1c.ru/v8/dt/metadata/mdclass">'
        "\n  <name>Расчеты</name>\n  <server>true</server>\n  <serverCall>true</serverCall>\n</mdclass:CommonModule>\n",
    )
    write(src / "Catalogs" / "Товары" / "Forms" / "ФормаЭлемента" / "Module.bsl", FORM.format(name="товара"))
    write(src / "Catalogs" / "Товары" / "ObjectModule.bsl", unique_module(1))
    write(src / "Catalogs" / "Товары" / "ManagerModule.bsl", unique_module(2))
    write(src / "Documents" / "Заказ" / "Commands" / "Печать" / "CommandModule.bsl", unique_module(3))
    write(src / "CommonForms" / "Вопрос" / "Module.bsl", FORM.format(name="вопроса"))
    write(src / "Configuration" / "SessionModule.bsl", unique_module(4))
    write(src / "InformationRegisters" / "Цены" / "RecordSetModule.bsl", unique_module(5))
    write(src / "HTTPServices" / "API" / "Module.bsl", unique_module(6))
    write(src / "Constants" / "Флаг" / "ValueManagerModule.bsl", "")  # empty: skipped
    return tmp_path / "edt"


@pytest.fixture
def designer_tree(tmp_path: Path) -> Path:
    """A small Designer dump (UTF-8 BOM, CRLF), with a repeated licence header."""
    root = tmp_path / "dump"

    def put(rel: str, text: str) -> None:
        write(root / rel, HEADER + "\n" + text, bom=True, crlf=True)

    put("CommonModules/Общий/Ext/Module.bsl", DOCUMENTED.format(name="Итог"))
    write(
        root / "CommonModules" / "Общий.xml",
        '<?xml version="1.0" encoding="UTF-8"?>\n<MetaDataObject><CommonModule><Properties><Name>Общий</Name>'
        "<Global>false</Global><ClientManagedApplication>true</ClientManagedApplication><Server>true</Server>"
        "<ServerCall>false</ServerCall><ReturnValuesReuse>DuringRequest</ReturnValuesReuse>"
        "</Properties></CommonModule></MetaDataObject>\n",
        bom=True,
    )
    put("Documents/Заказ/Ext/ObjectModule.bsl", unique_module(1))
    put("Documents/Заказ/Ext/ManagerModule.bsl", unique_module(2))
    put("Documents/Заказ/Forms/ФормаДокумента/Ext/Form/Module.bsl", FORM.format(name="заказа"))
    put("Documents/Заказ/Commands/Печать/Ext/CommandModule.bsl", unique_module(3))
    put("CommonForms/Выбор/Ext/Form/Module.bsl", FORM.format(name="выбора"))
    put("CommonCommands/Обновить/Ext/CommandModule.bsl", unique_module(4))
    put("InformationRegisters/Цены/Ext/RecordSetModule.bsl", unique_module(5))
    put("Constants/Флаг/Ext/ValueManagerModule.bsl", unique_module(6))
    put("WebServices/Обмен/Ext/Module.bsl", unique_module(7))
    put("Ext/ManagedApplicationModule.bsl", unique_module(8))
    put("Catalogs/Копия/Ext/ObjectModule.bsl", unique_module(1))  # exact duplicate of the document module
    write(root / "Catalogs" / "Пустой" / "Ext" / "ObjectModule.bsl", "", bom=True)  # BOM only
    return root


def by_path(result: Any) -> dict[str, dict[str, Any]]:
    return {m["path"]: m for m in result.summary["modules"]}


def test_classify_designer_layout(designer_tree: Path) -> None:
    got = {
        p.relative_to(designer_tree).as_posix(): classify(p, designer_tree)
        for p in sorted(designer_tree.rglob("*.bsl"))
    }
    expect = {
        "CommonModules/Общий/Ext/Module.bsl": ("common_module", "CommonModules", "Общий", "", ""),
        "Documents/Заказ/Ext/ObjectModule.bsl": ("object_module", "Documents", "Заказ", "", ""),
        "Documents/Заказ/Ext/ManagerModule.bsl": ("manager_module", "Documents", "Заказ", "", ""),
        "Documents/Заказ/Forms/ФормаДокумента/Ext/Form/Module.bsl": (
            "form_module", "Documents", "Заказ", "ФормаДокумента", ""
        ),
        "Documents/Заказ/Commands/Печать/Ext/CommandModule.bsl": (
            "command_module", "Documents", "Заказ", "", "Печать"
        ),
        "CommonForms/Выбор/Ext/Form/Module.bsl": ("form_module", "CommonForms", "Выбор", "Выбор", ""),
        "CommonCommands/Обновить/Ext/CommandModule.bsl": (
            "command_module", "CommonCommands", "Обновить", "", "Обновить"
        ),
        "InformationRegisters/Цены/Ext/RecordSetModule.bsl": (
            "record_set_module", "InformationRegisters", "Цены", "", ""
        ),
        "Constants/Флаг/Ext/ValueManagerModule.bsl": ("value_manager_module", "Constants", "Флаг", "", ""),
        "WebServices/Обмен/Ext/Module.bsl": ("web_service_module", "WebServices", "Обмен", "", ""),
        "Ext/ManagedApplicationModule.bsl": ("managed_application_module", "Configuration", "Configuration", "", ""),
    }  # fmt: skip
    for rel, (kind, otype, oname, form, command) in expect.items():
        info = got[rel]
        assert (info.kind, info.object_type, info.object_name, info.form, info.command) == (
            kind, otype, oname, form, command
        ), rel  # fmt: skip
        assert info.layout == "designer"
    assert got["CommonModules/Общий/Ext/Module.bsl"].context == ("server", "client", "reuse_DuringRequest")


def test_classify_edt_layout(edt_tree: Path) -> None:
    src = edt_tree / "src"
    got = {p.relative_to(src).as_posix(): classify(p, src) for p in sorted(src.rglob("*.bsl"))}
    assert {rel: (i.kind, i.object_type, i.object_name, i.form, i.command) for rel, i in got.items()} == {
        "Catalogs/Товары/Forms/ФормаЭлемента/Module.bsl": ("form_module", "Catalogs", "Товары", "ФормаЭлемента", ""),
        "Catalogs/Товары/ManagerModule.bsl": ("manager_module", "Catalogs", "Товары", "", ""),
        "Catalogs/Товары/ObjectModule.bsl": ("object_module", "Catalogs", "Товары", "", ""),
        "CommonForms/Вопрос/Module.bsl": ("form_module", "CommonForms", "Вопрос", "Вопрос", ""),
        "CommonModules/Расчеты/Module.bsl": ("common_module", "CommonModules", "Расчеты", "", ""),
        "Configuration/SessionModule.bsl": ("session_module", "Configuration", "Configuration", "", ""),
        "Constants/Флаг/ValueManagerModule.bsl": ("value_manager_module", "Constants", "Флаг", "", ""),
        "Documents/Заказ/Commands/Печать/CommandModule.bsl": ("command_module", "Documents", "Заказ", "", "Печать"),
        "HTTPServices/API/Module.bsl": ("http_service_module", "HTTPServices", "API", "", ""),
        "InformationRegisters/Цены/RecordSetModule.bsl": ("record_set_module", "InformationRegisters", "Цены", "", ""),
    }
    assert all(i.layout == "edt" for i in got.values())
    assert got["CommonModules/Расчеты/Module.bsl"].context == ("server", "server_call")


def test_classify_external_data_processor_dump(tmp_path: Path) -> None:
    write(tmp_path / "Загрузка.xml", '<?xml version="1.0"?>\n<MetaDataObject><ExternalDataProcessor uuid="1"/>')
    obj = write(tmp_path / "Загрузка" / "Ext" / "ObjectModule.bsl", unique_module(1))
    form = write(tmp_path / "Загрузка" / "Forms" / "Форма" / "Ext" / "Form" / "Module.bsl", FORM)
    info = classify(obj, tmp_path)
    assert (info.kind, info.object_type, info.object_name) == ("object_module", "ExternalDataProcessors", "Загрузка")
    info = classify(form, tmp_path)
    assert (info.kind, info.object_type, info.object_name, info.form) == (
        "form_module", "ExternalDataProcessors", "Загрузка", "Форма"
    )  # fmt: skip


def test_read_source_decoding(tmp_path: Path) -> None:
    assert read_source(write(tmp_path / "a.bsl", "А = 1;\nБ = 2;\n", bom=True, crlf=True)) == ("А = 1;\nБ = 2;\n", "")
    assert read_source(write(tmp_path / "b.bsl", "А = 1;\rБ = 2;")) == ("А = 1;\nБ = 2;", "")
    assert read_source(write(tmp_path / "c.bsl", "", bom=True)) == (None, "empty")
    assert read_source(write(tmp_path / "d.bsl", " \r\n\t\r\n")) == (None, "empty")
    (tmp_path / "e.bsl").write_bytes("А = 1;".encode("cp1251"))
    text, reason = read_source(tmp_path / "e.bsl")
    assert text is None and reason.startswith("not UTF-8")


def test_edt_project_end_to_end(edt_tree: Path, tmp_path: Path) -> None:
    out, val = tmp_path / "out" / "train.jsonl", tmp_path / "out" / "val.jsonl"
    assert harvest(edt_tree, output=out, validation_output=val, validation_fraction=0.2) == 0
    train = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    valid = [json.loads(line) for line in val.read_text(encoding="utf-8").splitlines()]
    rows = train + valid
    summary_path, card_path = side_paths(out)
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    assert (summary["files_found"], summary["modules_read"]) == (10, 9) and summary["skipped"] == [
        {"path": "src/Constants/Флаг/ValueManagerModule.bsl", "reason": "empty"}
    ]
    assert summary["layouts"] == {"edt": 9}
    # every module read has a text row; the split is by module
    assert {r["source"] for r in rows if r["task"] == "text"} == {
        m["path"] for m in summary["modules"] if m["status"] == "kept"
    }
    assert valid and not {r["source"] for r in train} & {r["source"] for r in valid}
    # the documented method became a doc2code row in the chat format, with the execution context beside it
    (doc,) = [r for r in rows if r["task"] == "doc2code"]
    assert doc["source"] == "src/CommonModules/Расчеты/Module.bsl" and doc["context"] == ["server", "server_call"]
    assert doc["text"] == "".join(t for t, _ in render_pair(doc["prompt"], doc["response"]))
    assert "СуммаСтрок(Таблица)" in doc["prompt"] and "Возвращает сумму строк табличной части." in doc["prompt"]
    assert "Таблица - ТаблицаЗначений - строки с колонкой Сумма." in doc["prompt"]
    assert doc["response"].startswith("Функция СуммаСтрок(Таблица) Экспорт") and "//" not in doc["response"]
    assert doc["response"].endswith("КонецФункции") and bsl.check_structure(doc["response"]) == []
    form_rows = [r for r in rows if r.get("form") == "ФормаЭлемента"]
    assert form_rows and all(r["module_kind"] == "form_module" for r in form_rows)
    # every row carries its token count
    assert all(isinstance(r["tokens"], int) and r["tokens"] > 0 for r in rows)
    card = card_path.read_text(encoding="utf-8")
    assert "# 1C:Enterprise (BSL) data set" in card and f"| train | {len(train)} |" in card


def test_designer_dump_dedup_header_and_split(designer_tree: Path, tmp_path: Path) -> None:
    result = harvest_tree(designer_tree, HarvestSettings(validation_fraction=0.3))
    modules = by_path(result)
    # the first module in path order is kept, the later copy is dropped
    assert modules["Catalogs/Копия/Ext/ObjectModule.bsl"]["status"] == "kept"
    assert modules["Documents/Заказ/Ext/ObjectModule.bsl"]["status"] == "skipped"
    reasons = {s["path"]: s["reason"] for s in result.summary["skipped"]}
    assert reasons == {
        "Catalogs/Пустой/Ext/ObjectModule.bsl": "empty",
        "Documents/Заказ/Ext/ObjectModule.bsl": "duplicate of Catalogs/Копия/Ext/ObjectModule.bsl",
    }
    rows = result.train + result.validation
    assert rows and not any("Copyright" in r["text"] for r in rows)
    assert result.summary["license_headers_removed"]["modules"] == 12
    assert "Copyright (c) 2024, ООО Пример" in result.card
    assert not any("\r" in r["text"] for r in rows)
    assert not {r["source"] for r in result.train} & {r["source"] for r in result.validation}
    assert result.validation
    # without the options, the header stays and duplicates are kept
    plain = harvest_tree(designer_tree, HarvestSettings(strip_license_header=False, dedup=False), split=False)
    assert not plain.validation
    assert [s["path"] for s in plain.summary["skipped"]] == ["Catalogs/Пустой/Ext/ObjectModule.bsl"]
    assert any(r["text"].startswith(HEADER.split("\n")[0]) for r in plain.train)


def test_output_is_deterministic(designer_tree: Path, tmp_path: Path) -> None:
    outputs = []
    for run in ("a", "b"):
        out, val = tmp_path / run / "t.jsonl", tmp_path / run / "v.jsonl"
        harvest(designer_tree, output=out, validation_output=val, validation_fraction=0.3)
        outputs.append([p.read_bytes() for p in (out, val, *side_paths(out))])
    assert outputs[0] == outputs[1]


def test_license_header_detection() -> None:
    texts = [HEADER + f"\nА = {i};\n" for i in range(5)] + ["// Просто комментарий\nБ = 1;\n"] * 5
    headers = repeated_headers(texts)
    assert headers == [HEADER.rstrip("\n")]  # the repeated plain comment is not a licence
    assert strip_header(texts[0], headers) == "А = 0;\n"
    assert strip_header(texts[-1], headers) == texts[-1]


def test_near_duplicates() -> None:
    index = NearDuplicateIndex(0.85)
    base = unique_module(1) + unique_module(2) + unique_module(3)
    assert index.add(base, "a") is None
    assert index.add(unique_module(4) + unique_module(5), "b") is None
    hit = index.add(base.replace("Параметр0 * 1", "Параметр0 * 100"), "c")
    assert hit is not None and hit[0] == "a" and 0.85 <= hit[1] < 1.0


def test_long_modules_are_cut_at_boundaries_within_the_budget() -> None:
    from rwkv1c.onec.harvest import default_encoder

    encode = default_encoder()
    text = "#Область А\n\n" + "\n".join(unique_module(i) for i in range(12)) + "\n#КонецОбласти\n"
    parsed = bsl.parse_module(text)
    ranges = chunk_ranges(parsed, encode, 200)
    assert len(ranges) > 3
    covered = [n for a, b in ranges for n in range(a, b + 1)]
    assert covered == list(range(1, len(parsed.lines) + 1))  # nothing lost, nothing repeated
    for a, b in ranges:
        assert len(encode([parsed.segment(a, b)])[0]) <= 200
    starts = {m.start_line for m in parsed.methods} | {1}
    assert all(a in starts for a, _ in ranges)  # each chunk starts at a method (or the module start)


def test_completion_rows_cut_at_statement_starts(tmp_path: Path) -> None:
    text = (
        'Функция Ф(А)\n\tЗапрос = Новый Запрос(\n\t"ВЫБРАТЬ\n\t|\t1 КАК Поле";\n\tЕсли А Тогда\n\t\tБ = 1;\n'
        "\tКонецЕсли;\n\tВ = Б +\n\t\t2;\n\tВозврат В;\nКонецФункции\n"
    )
    parsed = bsl.parse_module(text)
    (m,) = parsed.methods
    assert statement_starts(bsl.code_only(text).split("\n"), m) == [2, 5, 6, 7, 8, 10]
    write(tmp_path / "CommonModules" / "М" / "Ext" / "Module.bsl", text)
    result = harvest_tree(tmp_path, HarvestSettings(), split=False)
    (row,) = [r for r in result.train if r["task"] == "complete"]
    prefix = row["prompt"].split("\n", 1)[1]
    assert row["text"] == "".join(t for t, _ in render_pair(row["prompt"], row["response"]))
    assert (prefix + "\n" + row["response"]).strip() == text.strip()
    assert bsl.check_structure(prefix + "\n" + row["response"]) == []


def test_rows_are_accepted_by_prepare(edt_tree: Path) -> None:
    """Text rows train on everything; instruction rows are rendered from prompt/response with the prompt masked."""
    from rwkv1c.data.prepare import parse_row

    rows = harvest_tree(edt_tree, HarvestSettings(), split=False).train
    assert {r["task"] for r in rows} == {"text", "doc2code", "complete"}
    for row in rows:
        segments, instruction = parse_row(json.dumps(row, ensure_ascii=False).encode())
        if row["task"] == "text":
            assert not instruction and segments == [(row["text"], True)]
            continue
        assert instruction and [t for _, t in segments] == [False, True]  # only the answer is trained
        assert "".join(text for text, _ in segments) == row["text"]


def test_bad_arguments_are_reported_together(tmp_path: Path) -> None:
    with pytest.raises(UserError) as err:
        harvest(tmp_path / "missing", output=tmp_path / "out.txt", validation_output=tmp_path / "v.csv")
    message = str(err.value)
    assert "source folder not found" in message and "--output must end in .jsonl" in message
    assert "--validation-output must end in .jsonl" in message
    write(tmp_path / "module.bsl", "А = 1;")
    with pytest.raises(UserError, match="is a file; pass the folder"):
        harvest(tmp_path / "module.bsl", output=tmp_path / "out.jsonl")
    (tmp_path / "module.bsl").unlink()
    with pytest.raises(UserError, match="no .bsl modules"):
        harvest(tmp_path, output=tmp_path / "out.jsonl")
    write(tmp_path / "a.bsl", "А = 1;")
    with pytest.raises(UserError, match="must differ"):
        harvest(tmp_path, output=tmp_path / "o.jsonl", validation_output=tmp_path / "o.jsonl")
    with pytest.raises(UserError, match="validation-fraction"):
        harvest(tmp_path, output=tmp_path / "o.jsonl", validation_fraction=1.5)


def test_cli_runs_harvest(edt_tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli.jsonl"
    assert cli.main(["harvest", str(edt_tree), "--output", str(out), "--no-completions"]) == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert rows and not any(r["task"] == "complete" for r in rows)
    assert re.search(r"modules 9/9 kept", capsys.readouterr().out)
    assert cli.main(["harvest", str(tmp_path / "nope"), "--output", str(out)]) == 1
    assert "source folder not found" in capsys.readouterr().err


# -- the real corpus -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus_runs(corpus_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Two harvests of the corpus into separate folders."""
    runs = []
    for name in ("first", "second"):
        folder = tmp_path_factory.mktemp(name)
        out, val = folder / "train.jsonl", folder / "val.jsonl"
        harvest(corpus_dir, output=out, validation_output=val)
        runs.append({"out": out, "val": val, "files": [out, val, *side_paths(out)]})
    return runs


def load(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.corpus
def test_corpus_every_nonempty_module_is_harvested(corpus_dir: Path, corpus_runs: list[dict[str, Any]]) -> None:
    run = corpus_runs[0]
    summary = json.loads(side_paths(run["out"])[0].read_text(encoding="utf-8"))
    nonempty = {
        p.relative_to(corpus_dir).as_posix()
        for p in corpus_dir.rglob("*.bsl")
        if p.read_bytes().removeprefix(b"\xef\xbb\xbf").strip()
    }
    modules = {m["path"]: m for m in summary["modules"]}
    assert set(modules) == nonempty
    rows = load(run["out"]) + load(run["val"])
    with_text = {r["source"] for r in rows if r["task"] == "text"}
    kept = {p for p, m in modules.items() if m["status"] == "kept"}
    assert kept == with_text
    # what is not kept is a duplicate of a kept module, and says so
    reasons = {s["path"]: s["reason"] for s in summary["skipped"]}
    for path in nonempty - kept:
        original = re.match(r"(?:near-)?duplicate of (\S+)", reasons[path])
        assert original and original.group(1) in kept, reasons[path]
    assert len(kept) >= 0.95 * len(nonempty)
    assert summary["modules_with_structural_problems"] <= 0.01 * len(kept)


@pytest.mark.corpus
def test_corpus_documented_methods_become_instructions(corpus_dir: Path, corpus_runs: list[dict[str, Any]]) -> None:
    run = corpus_runs[0]
    summary = json.loads(side_paths(run["out"])[0].read_text(encoding="utf-8"))
    kept = {m["path"] for m in summary["modules"] if m["status"] == "kept"}
    # count standard doc comments independently of the harvest's own statistics
    documented: set[tuple[str, str]] = set()
    for path in kept:
        text = bsl.normalize_newlines((corpus_dir / path).read_bytes().decode("utf-8-sig"))
        for m in bsl.parse_module(text).methods:
            if m.doc and bsl.is_standard_doc(bsl.parse_doc_comment(m.doc), m):
                documented.add((path, m.name))
    rows = [r for r in load(run["out"]) + load(run["val"]) if r["task"] == "doc2code"]
    covered = {(r["source"], r["method"]) for r in rows}
    hits = len(documented & covered)
    assert len(documented) > 1000 and hits / len(documented) >= 0.95, (hits, len(documented))
    for r in rows[::50]:
        assert bsl.check_structure(r["response"]) == []
        assert r["response"].split("\n")[-1].strip() in ("КонецФункции", "КонецПроцедуры")


@pytest.mark.corpus
def test_corpus_split_is_by_module_and_runs_are_identical(corpus_runs: list[dict[str, Any]]) -> None:
    first, second = corpus_runs
    train_sources = {r["source"] for r in load(first["out"])}
    val_sources = {r["source"] for r in load(first["val"])}
    assert val_sources and not train_sources & val_sources
    for a, b in zip(first["files"], second["files"], strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name
