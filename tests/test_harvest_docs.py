"""Doc comments as `harvest` reads them: the language of the prose, and whether a comment fits its method."""

from __future__ import annotations

from pathlib import Path

from rwkv1c.onec import bsl
from rwkv1c.onec.harvest import HarvestSettings, harvest_tree

ENGLISH_DOC = """\
// Returns the users of a group, sorted by name.
//
// Parameters:
//  Группа - СправочникСсылка.ГруппыПользователей - the group.
//
// Returns:
//  Массив из СправочникСсылка.Пользователи
//
// Example:
//  Пользователи = ПользователиГруппы(Группа);
"""
ENGLISH_FUNCTION = """\
Function ПользователиГруппы(Группа) Export
	Result = New Array;
	For Each Row In Группа.Состав Do
		Result.Add(Row.Пользователь);
	EndDo;
	Return Result;
EndFunction
"""

PROCEDURE = 'Процедура Записать(Объект, Знач Режим = "А,Б") Экспорт\n\tОбъект.Записать();\nКонецПроцедуры\n'
FUNCTION_WITHOUT_PARAMS = "Функция Ноль() Экспорт\n\tВозврат 0;\nКонецФункции\n"
GOOD_DOC = """\
// Записывает объект в базу данных.
//
// Параметры:
//  Объект - СправочникОбъект - что записать.
//  Режим - Строка - режимы через запятую.
"""


def method(text: str) -> bsl.Method:
    return bsl.parse_module(text).methods[0]


def standard(doc: str, text: str) -> bool:
    return bsl.is_standard_doc(bsl.parse_doc_comment(doc), method(text))


def test_doc_language_follows_the_prose_not_the_names() -> None:
    assert bsl.parse_doc_comment(ENGLISH_DOC).language == "en"
    assert bsl.parse_doc_comment("// Returns the value of the СправочникСсылка.Валюты attribute.").language == "en"
    assert bsl.parse_doc_comment("// Returns the Контрагент of a document.").language == "en"
    assert bsl.parse_doc_comment("// Возвращает JSON из ValueTable для HTTP-запроса.").language == "ru"
    assert bsl.parse_doc_comment("// Отправляет письмо через Gmail API.").language == "ru"
    assert bsl.parse_doc_comment("// См. ОбщийМодуль.Метод").language == "ru"
    assert bsl.parse_doc_comment("// 42").language == "none"


def test_an_english_doc_comment_gets_an_english_request(tmp_path: Path) -> None:
    module = tmp_path / "CommonModules" / "Users" / "Ext" / "Module.bsl"
    module.parent.mkdir(parents=True)
    module.write_text(ENGLISH_DOC + ENGLISH_FUNCTION, encoding="utf-8")
    rows = harvest_tree(tmp_path, HarvestSettings(), split=False).train
    (row,) = [r for r in rows if r["task"] == "doc2code"]
    assert row["language"] == "en"
    assert row["prompt"].startswith("Write a 1C:Enterprise exported function ПользователиГруппы(Группа) (common")
    assert "\nParameters:\n" in row["prompt"] and "Параметры" not in row["prompt"]


def test_signature_params() -> None:
    assert bsl.signature_params('Объект, Знач Режим = "А,Б", Val X = Undefined, Дата = \'20240101\'') == [
        "Объект", "Режим", "X", "Дата"
    ]  # fmt: skip
    assert bsl.signature_params("") == []
    assert bsl.signature_params(method(PROCEDURE).params) == ["Объект", "Режим"]


def test_doc_comments_must_fit_their_method() -> None:
    assert standard(GOOD_DOC, PROCEDURE)
    # copied from elsewhere: a return value on a procedure, no parameters or other names on one that has them
    assert not standard(GOOD_DOC + "//\n// Возвращаемое значение:\n//  Булево - успех.\n", PROCEDURE)
    assert not standard("// Записывает объект в базу данных.\n//\n// Параметры:\n//  Нет.\n", PROCEDURE)
    assert not standard(GOOD_DOC.replace("Режим -", "Отказ -"), PROCEDURE)
    # several types of one parameter on their own lines, structure fields indented below it
    several = GOOD_DOC.replace(
        "//  Объект - СправочникОбъект - что записать.\n",
        "//  Объект\n//    - СправочникОбъект - что записать.\n//    - ДокументОбъект\n//   * Поле - Строка - поле.\n",
    )
    assert standard(several, PROCEDURE)
    assert bsl.documented_params(bsl.parse_doc_comment(several)) == ["Объект", "Режим"]
    # a method without parameters: "Нет." or no section is fine, a described parameter is not
    returns = "// Возвращаемое значение:\n//  Число - ноль.\n"
    assert standard("// Возвращает ноль всегда.\n//\n" + returns, FUNCTION_WITHOUT_PARAMS)
    assert standard("// Возвращает ноль всегда.\n// Параметры:\n//  Нет.\n" + returns, FUNCTION_WITHOUT_PARAMS)
    described = "// Возвращает ноль всегда.\n// Параметры:\n//  Объект - Произвольный - что угодно.\n" + returns
    assert not standard(described, FUNCTION_WITHOUT_PARAMS)
