"""BSL lexer, method/region splitting, doc comments, the structural checker and code scoring."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from rwkv1c.onec import bsl

REPO = Path(__file__).resolve().parents[1]

VALID = '''\
#Область ПрограммныйИнтерфейс

// Возвращает остаток товара.
//
// Параметры:
//  Товар - СправочникСсылка.Номенклатура - товар.
//  Склад - СправочникСсылка.Склады - склад.
//
// Возвращаемое значение:
//  Число - остаток.
//
Функция Остаток(Товар, Знач Склад = Неопределено) Экспорт
	Запрос = Новый Запрос;
	Запрос.Текст =
	"ВЫБРАТЬ
	|	Остатки.КоличествоОстаток КАК Количество // не комментарий, а текст запроса
	//|	Остатки.Склад КАК Склад,
	|ИЗ
	|	РегистрНакопления.Товары.Остатки(, Товар = &Товар) КАК Остатки
	|ГДЕ
	|	Остатки.Склад = ""Основной""";
	Результат = Запрос.Выполнить().Выбрать();
	Возврат ?(Результат.Следующий(), Результат.Количество, 0);
КонецФункции

#КонецОбласти

#Область СлужебныеПроцедурыИФункции

&НаКлиенте
Асинх Процедура Обработать(Команда)
	Для Каждого Строка Из Список Цикл
		Если Строка.Пометка Тогда
			Продолжить;
		ИначеЕсли Строка.Сумма > 0 Тогда
			Прервать;
		Иначе
			Попытка
				Ждать ВыполнитьАсинх(Строка);
			Исключение
				ВызватьИсключение;
			КонецПопытки;
		КонецЕсли;
	КонецЦикла;
	Пока Ложь Цикл
	КонецЦикла;
	Дата = '20240101';
КонецПроцедуры

#КонецОбласти
'''


def problems(text: str) -> list[str]:
    return [str(p) for p in bsl.check_structure(text)]


def test_valid_module_has_no_problems_and_splits_into_methods() -> None:
    assert problems(VALID) == []
    parsed = bsl.parse_module(VALID)
    assert [m.name for m in parsed.methods] == ["Остаток", "Обработать"]
    fn, proc = parsed.methods
    assert (fn.kind, fn.export, fn.is_async, fn.directives) == ("function", True, False, ())
    assert fn.params == "Товар, Знач Склад = Неопределено"
    assert fn.start_line == 3 and fn.header_line == 12 and fn.body_line == 13
    assert VALID.split("\n")[fn.end_line - 1] == "КонецФункции"
    assert fn.doc.startswith("// Возвращает остаток товара.") and fn.doc.endswith("//  Число - остаток.\n//")
    assert fn.region == "ПрограммныйИнтерфейс"
    assert (proc.kind, proc.export, proc.is_async, proc.directives) == ("procedure", False, True, ("&НаКлиенте",))
    assert proc.doc == "" and proc.start_line == proc.header_line - 1
    assert proc.region == "СлужебныеПроцедурыИФункции"
    assert [(r.name, r.depth) for r in parsed.regions] == [
        ("ПрограммныйИнтерфейс", 0),
        ("СлужебныеПроцедурыИФункции", 0),
    ]
    assert parsed.regions[0].start_line == 1 and parsed.lines[parsed.regions[0].end_line - 1] == "#КонецОбласти"


def test_keywords_inside_strings_and_comments_and_after_dots_are_not_code() -> None:
    text = (
        'Т = "Если Тогда Процедура КонецЦикла";\n'
        "// КонецЕсли; Функция\n"
        "Объект.Если = Структура.Цикл;\n"
        'Запрос.Выполнить(); А = "ВЫБРАТЬ\n'
        "|КонецЕсли"
        '";\n'
    )
    assert problems(text) == []
    counts = bsl.parse_module(text).keyword_counts
    assert "если" not in counts and "цикл" not in counts and "выполнить" not in counts
    code = bsl.code_only(text)
    assert "Если" not in code.split("\n")[0] and code.count("\n") == text.count("\n")


def test_english_and_mixed_case_keywords() -> None:
    text = (
        "&AtServer\nProcedure Go(Val X) Export\n\tIF X THEN\n\t\tFor Each A In X Do\n\t\tEndDo;\n"
        '\tElsIf Not X Then\n\t\tTry\n\t\t\tRaise "x";\n\t\tExcept\n\t\tEndTry;\n\tENDIF;\nEndProcedure\n'
    )
    assert problems(text) == []
    (m,) = bsl.parse_module(text).methods
    assert (m.name, m.export, m.directives) == ("Go", True, ("&AtServer",))
    assert bsl.keyword_language(bsl.parse_module(text)) == ("en", 1.0)
    assert bsl.keyword_language(bsl.parse_module(VALID))[0] == "ru"


@pytest.mark.parametrize(
    ("planted", "expected"),
    [
        ("Процедура А()\n\tЕсли Б Тогда\n\t\tВ();\nКонецПроцедуры\n", r"line 2: 'Если' is not closed"),
        ("Процедура А()\n\tВ();\n\nФункция Б()\nКонецФункции\n", r"line 1: 'Процедура' is not closed"),
        ("Процедура А()\n\tВ();\n", r"line 1: 'Процедура' is not closed at the end"),
        ('Процедура А()\n\tТ = "не закрыта;\n\tВ();\nКонецПроцедуры\n', r"line 2: unclosed string"),
        ("Процедура А()\n\tВ();\n\tКонецЦикла;\nКонецПроцедуры\n", r"line 3: 'КонецЦикла' without a matching"),
        ("Процедура А()\n\tЕсли Б\n\t\tВ();\n\tКонецЕсли;\nКонецПроцедуры\n", r"line 2: missing 'Тогда'"),
        ("Процедура А()\n\tПока Б\n\t\tВ();\n\tКонецЦикла;\nКонецПроцедуры\n", r"line 2: missing 'Цикл'"),
        ("Процедура А()\n\tПопытка\n\t\tВ();\n\tКонецПопытки;\nКонецПроцедуры\n", r"line 2: 'Попытка' without"),
        ("Процедура А()\nКонецФункции\n", r"line 2: 'КонецФункции' closes a procedure"),
        ("Процедура А()\n\tИначе\nКонецПроцедуры\n", r"line 2: 'Иначе' outside"),
        ("Процедура А()\n\tД = '2024;\nКонецПроцедуры\n", r"line 2: unclosed date"),
        ("#Область А\nПроцедура Б()\nКонецПроцедуры\n", r"line 1: '#Область' is not closed"),
        ("Процедура Б()\nКонецПроцедуры\n#КонецОбласти\n", r"line 3: '#КонецОбласти' without"),
        ("#Если Сервер Тогда\n#Область А\n#КонецЕсли\n#КонецОбласти\n", r"line 3: '#КонецЕсли' without"),
        ("А = 1; #Если Сервер Тогда\n#КонецЕсли\n", r"line 1: preprocessor instruction must start"),
        ("#Импорт А\n", r"line 1: unknown preprocessor instruction"),
    ],
)
def test_planted_errors_are_reported_with_their_line(planted: str, expected: str) -> None:
    found = problems(planted)
    assert any(re.search(expected, p) for p in found), found


def test_multiline_string_rules() -> None:
    ok = 'А = "строка\n\t|продолжение\n\t// закомментированная строка запроса\n\t|конец";\n'
    assert problems(ok) == []
    # a continuation line must start with "|": here the string is left open
    assert any("unclosed string" in p for p in problems('А = "строка\n\tпродолжение";\n'))
    # "" is an escaped quote, not the end of the string
    assert any("unclosed string" in p for p in problems('А = "он сказал ""да"";\n'))
    assert problems('А = "он сказал ""да""";\n') == []


def test_preprocessor_branches_each_start_from_the_same_block_state() -> None:
    text = (
        "#Если Сервер Тогда\nПроцедура А() Экспорт\n#Иначе\nПроцедура А()\n#КонецЕсли\n"
        "\tЕсли Б Тогда\n\tКонецЕсли;\nКонецПроцедуры\n"
    )
    assert problems(text) == []
    assert [m.name for m in bsl.parse_module(text).methods] == ["А"]


def test_extension_delete_blocks_are_not_checked_as_code() -> None:
    text = (
        '&ИзменениеИКонтроль("Проверить")\nПроцедура Расш_Проверить()\n#Удаление\n\tЕсли А Тогда\n'
        "#КонецУдаления\n#Вставка\n\tЕсли Б Тогда\n#КонецВставки\n\tКонецЕсли;\nКонецПроцедуры\n"
    )
    assert problems(text) == []


def test_doc_comment_parsing_and_the_standard() -> None:
    parsed = bsl.parse_module(VALID)
    fn = parsed.methods[0]
    doc = bsl.parse_doc_comment(fn.doc)
    assert doc.description == "Возвращает остаток товара."
    assert doc.params.splitlines() == [
        "Товар - СправочникСсылка.Номенклатура - товар.",
        "Склад - СправочникСсылка.Склады - склад.",
    ]
    assert doc.returns == "Число - остаток."
    assert doc.language == "ru" and bsl.is_standard_doc(doc, fn)
    en = bsl.parse_doc_comment(
        "// Sums two numbers.\n//\n// Parameters:\n//  A - Number\n//\n// Returns:\n//  Number\n"
    )
    assert (en.description, en.params, en.returns, en.language) == ("Sums two numbers.", "A - Number", "Number", "en")
    # a function without a return section, a "see X" reference, parameters left undocumented
    assert not bsl.is_standard_doc(bsl.parse_doc_comment("// Возвращает остаток товара."), fn)
    assert not bsl.is_standard_doc(bsl.parse_doc_comment("// См. ОбщийМодуль.Остаток"), fn)
    no_params = bsl.parse_doc_comment("// Возвращает остаток.\n// Возвращаемое значение:\n//  Число\n")
    assert not bsl.is_standard_doc(no_params, fn)


def test_separator_line_ends_the_doc_comment() -> None:
    text = "////////////////\n// Раздел модуля\n\n// Делает дело.\nПроцедура А()\nКонецПроцедуры\n"
    (m,) = bsl.parse_module(text).methods
    assert m.doc == "// Делает дело." and m.start_line == 4
    text = "//////////\n// Делает дело.\nПроцедура А()\nКонецПроцедуры\n"
    assert bsl.parse_module(text).methods[0].start_line == 2


def test_foreign_syntax_is_found_only_in_code() -> None:
    clean = (
        'Функция Ф()\n\tТекст = "{""a"": 1} && SELECT x FROM y";\n\t// def f(): return {}\n\tВозврат 1;\nКонецФункции\n'
    )
    assert bsl.foreign_syntax(clean) == []
    assert "python:def" in bsl.foreign_syntax("def f(x):\n    return x\n")
    assert "python:import" in bsl.foreign_syntax("import os\n")
    js = bsl.foreign_syntax("function f(a) {\n  const b = a => a + 1;\n  if (a === b) { return; }\n}\n")
    assert {"js:braces", "js:function", "js:let-const", "js:arrow", "js:operators"} <= set(js)
    assert "sql:select" in bsl.foreign_syntax("SELECT\n  Товары.Ссылка\nFROM Справочник.Товары AS Товары\n")
    assert "sql:query-line" in bsl.foreign_syntax("Запрос.Текст =\n|ВЫБРАТЬ 1;\n")
    assert bsl.foreign_syntax("Если А <> Б Тогда\n\tВ = А + 1;\nКонецЕсли;\n") == []


def test_extract_code_from_fenced_answers() -> None:
    assert bsl.extract_code("Вот код:\n```bsl\nА = 1;\n```\nГотово.") == ("А = 1;", True)
    assert bsl.extract_code("А = 1;") == ("А = 1;", False)


def test_keyword_language_mixed() -> None:
    parsed = bsl.parse_module("Если А Тогда\nEndIf;\nЕсли Б Тогда\nКонецЕсли;\n")
    lang, share = bsl.keyword_language(parsed)
    assert lang == "mixed" and share == pytest.approx(5 / 6)


def test_bundled_samples_are_valid_bsl() -> None:
    path = REPO / "samples" / "1c-sample.jsonl"
    assert path.stat().st_size < 60_000
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    texts = [r["text"] for r in rows if "text" in r]
    pairs = [r for r in rows if "prompt" in r]
    assert len(texts) >= 25 and len(pairs) >= 25
    for code in texts + [r["response"] for r in pairs]:
        assert problems(code) == [], code[:200]
        assert bsl.foreign_syntax(code) == [], code[:200]
    assert sum(bsl.keyword_language(bsl.parse_module(t))[0] == "en" for t in texts) >= 2
    from rwkv1c.data.prepare import parse_row  # the file is ready for `rwkv1c prepare`

    for line in path.read_bytes().splitlines():
        parse_row(line)


# -- the real corpus -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus_texts(corpus_dir: Path) -> dict[str, str]:
    texts = {}
    for path in sorted(corpus_dir.rglob("*.bsl")):
        text = bsl.normalize_newlines(path.read_bytes().decode("utf-8-sig"))
        if text.strip():
            texts[path.relative_to(corpus_dir).as_posix()] = text
    return texts


_HEADER_RE = re.compile(r"^\s*(?:асинх\s+|async\s+)?(?:процедура|функция|procedure|function)\s", re.I | re.M)
_END_RE = re.compile(r"^\s*(?:конецпроцедуры|конецфункции|endprocedure|endfunction)\b", re.I | re.M)


@pytest.mark.corpus
def test_checker_accepts_the_corpus_and_finds_every_method(corpus_texts: dict[str, str]) -> None:
    accepted = sum(not bsl.parse_module(t).problems for t in corpus_texts.values())
    assert accepted / len(corpus_texts) >= 0.99, f"accepted {accepted} of {len(corpus_texts)}"
    # an independent count: method headers and ends at the start of a line
    for path, text in list(corpus_texts.items())[::7]:
        parsed = bsl.parse_module(text)
        assert len(parsed.methods) == len(_HEADER_RE.findall(text)) == len(_END_RE.findall(text)), path
        for m in parsed.methods:
            assert _END_RE.match(parsed.lines[m.end_line - 1]), (path, m.name)


@pytest.mark.corpus
def test_checker_rejects_errors_planted_in_real_modules(corpus_texts: dict[str, str]) -> None:
    rng = random.Random(5)
    candidates = [t for t in rng.sample(list(corpus_texts.values()), 40) if not bsl.parse_module(t).problems]

    def plant_unclosed_if(lines: list[str]) -> bool:
        ends = [i for i, s in enumerate(lines) if s.strip().lower() == "конецесли;"]
        if not ends:
            return False
        del lines[rng.choice(ends)]
        return True

    def plant_missing_end(lines: list[str]) -> bool:
        ends = [i for i, s in enumerate(lines) if s.strip() in ("КонецПроцедуры", "КонецФункции")]
        if not ends:
            return False
        del lines[rng.choice(ends)]
        return True

    def plant_unclosed_string(lines: list[str]) -> bool:
        rows = [i for i, s in enumerate(lines) if re.fullmatch(r'\s*\w+ = "[^"|]*";', s)]
        if not rows:
            return False
        i = rng.choice(rows)
        lines[i] = lines[i][:-2] + ";"
        return True

    def plant_stray_enddo(lines: list[str]) -> bool:
        rows = [i for i, s in enumerate(lines) if s.strip().endswith(";") and s.startswith("\t")]
        if not rows:
            return False
        lines.insert(rng.choice(rows) + 1, "\tКонецЦикла;")
        return True

    for plant in (plant_unclosed_if, plant_missing_end, plant_unclosed_string, plant_stray_enddo):
        planted = 0
        for text in candidates:
            lines = text.split("\n")
            if plant(lines):
                planted += 1
                assert bsl.parse_module("\n".join(lines)).problems, plant.__name__
        assert planted >= 10, plant.__name__
