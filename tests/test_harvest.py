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


# EDT writes LF without a BOM; this header ends two of its lines in spaces, as many real headers do
EDT_HEADER = (
    "///////////////////////////////////////////////////////////\n"
    "// Copyright (c) {year}, ООО Пример  \n"
    "// Распространяется по лицензии Apache-2.0 \n"
    "///////////////////////////////////////////////////////////\n"
)
HTTP_MODULE = "// Обрабатывает запрос к API и возвращает ответ сервиса.\n" + unique_module(6)


@pytest.fixture
def edt_tree(tmp_path: Path) -> Path:
    """A small 1C:EDT project: objects, forms, commands, a common module with its .mdo, a licence header
    (trailing spaces, another year in one module) before all but one module, a module that starts with a
    blank line, one with bare-CR line breaks, one that starts with the doc comment of its first method."""
    src = tmp_path / "edt" / "src"

    def put(rel: str, text: str, *, year: int = 2024, lead: str = "", cr: bool = False) -> None:
        data = lead + EDT_HEADER.format(year=year) + "\n" + text
        write(src / rel, data.replace("\n", "\r") if cr else data)

    put("CommonModules/Расчеты/Module.bsl", DOCUMENTED.format(name="СуммаСтрок"))
    write(
        src / "CommonModules" / "Расчеты" / "Расчеты.mdo",
        '<?xml version="1.0" encoding="UTF-8"?>\n<mdclass:CommonModule xmlns:mdclass="http://g5.1c.ru/v8/dt/metadata/mdclass">'
        "\n  <name>Расчеты</name>\n  <server>true</server>\n  <serverCall>true</serverCall>\n</mdclass:CommonModule>\n",
    )
    put("Catalogs/Товары/Forms/ФормаЭлемента/Module.bsl", FORM.format(name="товара"))
    put("Catalogs/Товары/ObjectModule.bsl", unique_module(1), year=2023)
    put("Catalogs/Товары/ManagerModule.bsl", unique_module(2), lead="\n")
    put("Documents/Заказ/Commands/Печать/CommandModule.bsl", unique_module(3), cr=True)
    put("CommonForms/Вопрос/Module.bsl", FORM.format(name="вопроса"))
    put("Configuration/SessionModule.bsl", unique_module(4))
    put("InformationRegisters/Цены/RecordSetModule.bsl", unique_module(5))
    write(src / "HTTPServices" / "API" / "Module.bsl", HTTP_MODULE)
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
    for path in designer_tree.rglob("*.bsl"):
        rel = path.relative_to(designer_tree).as_posix()
        assert got[rel].key == classify(path, designer_tree.parent).key == rel


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
    # the path from the configuration root, also when the project folder above src/ is given
    for path in src.rglob("*.bsl"):
        rel = path.relative_to(src).as_posix()
        assert got[rel].key == classify(path, edt_tree).key == classify(path, edt_tree.parent).key == rel


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
    assert info.key == classify(form, tmp_path.parent).key == "Загрузка/Forms/Форма/Ext/Form/Module.bsl"
    assert classify(obj, tmp_path.parent).key == "Загрузка/Ext/ObjectModule.bsl"


def test_read_source_decoding(tmp_path: Path) -> None:
    crlf = write(tmp_path / "a.bsl", "А = 1;\nБ = 2;\n", bom=True, crlf=True)
    assert read_source(crlf) == ("А = 1;\nБ = 2;\n", "", 0)
    assert read_source(write(tmp_path / "b.bsl", "А = 1;\rБ = 2;")) == ("А = 1;\nБ = 2;", "", 0)
    assert read_source(write(tmp_path / "c.bsl", "", bom=True)) == (None, "empty", 0)
    assert read_source(write(tmp_path / "d.bsl", " \r\n\t\r\n")) == (None, "empty", 0)
    (tmp_path / "e.bsl").write_bytes("А = 1;".encode("cp1251"))
    source = read_source(tmp_path / "e.bsl")
    assert source.text is None and source.reason.startswith("not UTF-8")


def test_control_characters_are_removed_or_the_file_is_skipped(tmp_path: Path) -> None:
    text = 'Процедура А()\n\tБ = "x\x00y";\x1b\n\tВ = 1;\x7f\nКонецПроцедуры\n'
    clean = 'Процедура А()\n\tБ = "xy";\n\tВ = 1;\nКонецПроцедуры\n'
    assert read_source(write(tmp_path / "a.bsl", text)) == (clean, "", 3)
    assert read_source(write(tmp_path / "b.bsl", "А = 1;\n" + "\x00" * 100)) == (
        None, "binary data (100 control characters)", 0
    )  # fmt: skip


def test_modules_with_nul_are_cleaned_and_reported(designer_tree: Path, tmp_path: Path) -> None:
    write(designer_tree / "CommonModules" / "Нуль" / "Ext" / "Module.bsl", unique_module(9).replace("*", "*\x00", 2))
    write(designer_tree / "CommonModules" / "Мусор" / "Ext" / "Module.bsl", "\x00" * 64)
    out = tmp_path / "out" / "train.jsonl"
    harvest(designer_tree, output=out)
    assert "\\u0000" not in out.read_text(encoding="utf-8")
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    (row,) = [r for r in rows if r["task"] == "text" and r["source"] == "CommonModules/Нуль/Ext/Module.bsl"]
    assert row["text"] == unique_module(9).strip("\n")
    summary_path, card_path = side_paths(out)
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    assert summary["control_characters_removed"] == {
        "modules": 1, "characters": 2, "files": [{"path": "CommonModules/Нуль/Ext/Module.bsl", "characters": 2}]
    }  # fmt: skip
    assert {"path": "CommonModules/Мусор/Ext/Module.bsl", "reason": "binary data (64 control characters)"} in summary[
        "skipped"
    ]
    card = card_path.read_text(encoding="utf-8")
    assert "control characters (NUL and the like) removed: 1 (2 characters)" in card
    assert "binary data: 1" in card


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


def test_rows_start_after_the_header_and_point_into_the_source_files(edt_tree: Path) -> None:
    """Headers with trailing spaces, after a blank line or of another year are removed whole, and every text
    row is the source file's own lines: the ``lines`` of a chunk are counted in the file, not after the header."""
    result = harvest_tree(edt_tree, HarvestSettings(max_tokens=100), split=False)
    assert result.summary["license_headers_removed"]["modules"] == 8  # all but the HTTP service
    rows = [r for r in result.train if r["task"] == "text"]
    chunks = [r for r in rows if "lines" in r]
    assert {r["source"] for r in chunks} >= {
        "src/CommonModules/Расчеты/Module.bsl", "src/Documents/Заказ/Commands/Печать/CommandModule.bsl"
    }  # fmt: skip
    for row in rows:
        assert "Copyright" not in row["text"] and "\r" not in row["text"]
        assert row["text"].split("\n", 1)[0].strip("/ "), row  # never a stray "/" or a separator line
    assert_rows_are_source_lines(edt_tree, rows)
    api = [r for r in rows if r["object_type"] == "HTTPServices"]
    assert api[0]["lines"][0] == 1 and api[0]["text"].startswith(HTTP_MODULE.split("\n")[0])  # a doc comment, kept


def test_chunk_lines_count_from_the_source_file(designer_tree: Path) -> None:
    result = harvest_tree(designer_tree, HarvestSettings(max_tokens=100), split=False)
    chunks = [r for r in result.train if "lines" in r]
    assert chunks and min(r["lines"][0] for r in chunks) == len(HEADER.splitlines()) + 2  # after header + blank
    assert_rows_are_source_lines(designer_tree, result.train)


def test_structural_problems_name_source_lines(designer_tree: Path) -> None:
    write(designer_tree / "CommonModules" / "Сломан" / "Ext" / "Module.bsl", HEADER + "\nПроцедура А()\n\tБ = 1;\n")
    result = harvest_tree(designer_tree, HarvestSettings(), split=False)
    (broken,) = result.summary["structural_problems"]
    header_lines = len(HEADER.splitlines()) + 1  # and the blank line after it
    assert broken["problems"] == [f"line {header_lines + 1}: 'Процедура' is not closed at the end of the module"]


def assert_rows_are_source_lines(tree: Path, rows: list[dict[str, Any]]) -> None:
    """Each text row is the lines ``lines`` of its source file, or the end of a whole module."""
    for row in rows:
        if row["task"] != "text":
            continue
        source = bsl.normalize_newlines((tree / row["source"]).read_bytes().decode("utf-8-sig")).split("\n")
        if "lines" in row:
            first, last = row["lines"]
            assert "\n".join(source[first - 1 : last]) == row["text"], row["source"]
        else:
            assert "\n".join(source).strip("\n").endswith(row["text"]), row["source"]


@pytest.mark.parametrize("layout", ["edt", "designer"])
def test_the_split_is_the_same_from_any_folder_above_the_configuration(
    layout: str, request: pytest.FixtureRequest
) -> None:
    tree: Path = request.getfixturevalue(f"{layout}_tree")
    inner = tree / "src" if layout == "edt" else tree  # EDT: the project's src/; Designer: the dump
    outer = tree.parent
    prefix = inner.relative_to(outer).as_posix() + "/"
    settings = HarvestSettings(validation_fraction=0.3)
    near, far = harvest_tree(inner, settings), harvest_tree(outer, settings)
    assert near.validation and near.train
    for split in ("train", "validation"):
        moved = [{**r, "source": r["source"].removeprefix(prefix)} for r in getattr(far, split)]
        assert moved == getattr(near, split), split


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
    assert len(headers) == 1 and "Copyright (c) YYYY, ООО Пример" in headers[0]  # the plain comment is no licence
    assert strip_header(texts[0], headers) == ("А = 0;\n", 5, HEADER.rstrip("\n"))
    assert strip_header(texts[-1], headers) == (texts[-1], 0, "")
    # another year, trailing spaces, blank lines above, a longer separator: the same header; indentation stays
    written = HEADER.replace("2024", "2019").replace("////\n", "////////\n")
    variant = written.replace("Пример\n", "Пример   \n")
    assert strip_header("\n \n" + variant + "\n\n\tА = 1;\n", headers) == ("\tА = 1;\n", 8, written.rstrip("\n"))
    # the header directly above the doc comment of the first method: the doc comment stays
    method = "// Возвращает единицу.\nФункция Один() Экспорт\n\tВозврат 1;\nКонецФункции\n"
    assert strip_header(HEADER + method, headers) == (method, 4, HEADER.rstrip("\n"))


def test_header_versions_count_together() -> None:
    """A year other than the common one is the same licence, however rare (here under 1 % of the modules)."""
    texts = [HEADER + f"\nА = {i};\n" for i in range(300)]
    texts[0] = texts[0].replace("2024", "2022")
    texts[1] = "\n" + texts[1].replace("2024", "2023").replace("Пример", "Пример  ")
    headers = repeated_headers(texts)
    assert [strip_header(t, headers)[0] for t in texts[:3]] == ["А = 0;\n", "А = 1;\n", "А = 2;\n"]


def test_doc_comments_of_first_methods_are_not_headers() -> None:
    """A doc comment that opens several modules stays, even when it speaks of a licence."""
    doc = "// Проверяет лицензию на программу, все права на которую принадлежат владельцу.\n"
    texts = [doc + f"Функция Проверка{i}() Экспорт\n\tВозврат {i};\nКонецФункции\n" for i in range(5)]
    texts += [doc + f"&НаСервере\nПроцедура П{i}()\nКонецПроцедуры\n" for i in range(5)]
    assert repeated_headers(texts) == []


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
    printed = capsys.readouterr().out
    assert re.search(r"modules 9/9 kept", printed) and "licence header removed from 8," in printed
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


@pytest.mark.corpus
def test_corpus_rows_start_after_the_header_and_point_into_the_sources(
    corpus_dir: Path, corpus_runs: list[dict[str, Any]]
) -> None:
    run = corpus_runs[0]
    summary = json.loads(side_paths(run["out"])[0].read_text(encoding="utf-8"))
    assert summary["license_headers_removed"]["modules"] == summary["modules_read"]  # every module has one
    texts = [r for r in load(run["out"]) + load(run["val"]) if r["task"] == "text"]
    assert not [r["source"] for r in texts if r["text"].split("\n", 1)[0].strip() == "/"]
    assert not [r["source"] for r in texts if "Copyright (c)" in r["text"][:500]]
    assert_rows_are_source_lines(corpus_dir, texts)


@pytest.mark.corpus
def test_corpus_split_is_the_same_from_the_configuration_root(
    corpus_dir: Path, corpus_runs: list[dict[str, Any]]
) -> None:
    """Harvesting the configuration itself (src/cf) or the folder two levels above gives the same rows."""
    root = corpus_dir / "src" / "cf"
    if not root.is_dir():
        pytest.skip(f"no configuration root at {root}")
    result = harvest_tree(root, HarvestSettings())
    run = corpus_runs[0]
    for mine, theirs in ((result.train, load(run["out"])), (result.validation, load(run["val"]))):
        assert [{**r, "source": "src/cf/" + r["source"]} for r in mine] == theirs
    assert result.validation
