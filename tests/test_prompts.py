"""The RWKV chat format: prompts, conversations, trainable segments and their validation."""

from __future__ import annotations

import itertools

import pytest

from rwkv1c.data.prompts import TURN_SEPARATOR, clean_user_text, render_messages, render_pair, render_prompt
from rwkv1c.model.tokenizer import get_tokenizer


def test_render_prompt_format() -> None:
    assert render_prompt("Напиши функцию") == "User: Напиши функцию\n\nAssistant:"
    assert render_prompt("q", system="Ты эксперт 1С") == "System: Ты эксперт 1С\n\nUser: q\n\nAssistant:"
    assert render_prompt("q", system="  ") == render_prompt("q")  # blank system: no system turn
    assert not render_prompt("q").endswith(" ")


def test_user_text_is_normalised() -> None:
    messy = "  \r\nПервая строка\r\n\r\n   \r\n\tВторая с отступом\r\rТретья\n\n\n\nКонец  \n"
    assert render_prompt(messy) == "User: Первая строка\n\tВторая с отступом\nТретья\nКонец\n\nAssistant:"
    # After cleaning, the only "\n\n" in a prompt are turn separators.
    assert clean_user_text(messy).count("\n\n") == 0
    assert render_prompt(messy).count(TURN_SEPARATOR) == 1


@pytest.mark.parametrize("bad", ["", "   \r\n\n\t "])
def test_render_prompt_rejects_empty_text(bad: str) -> None:
    with pytest.raises(ValueError, match="empty"):
        render_prompt(bad)


def test_render_prompt_rejects_wrong_types() -> None:
    with pytest.raises(TypeError, match="user text"):
        render_prompt(5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="system"):
        render_prompt("q", system=["x"])  # type: ignore[arg-type]


def test_render_pair_segments() -> None:
    answer = "Функция Ф()\r\n\tВозврат 1;\r\nКонецФункции\r\n\r\n// конец\r\n"
    segments = render_pair("Напиши\n\n\nфункцию", answer)
    assert segments == [
        (render_prompt("Напиши\n\n\nфункцию"), False),
        (" Функция Ф()\n\tВозврат 1;\nКонецФункции\n// конец", True),  # no blank line: "\n\n" ends a turn
    ]
    indented = render_pair("Допиши тело", "\n\tВозврат 1;\n\n\tКонецЕсли;\n")
    assert indented[1] == (" \tВозврат 1;\n\tКонецЕсли;", True)  # the code's leading tab survives
    with_system = render_pair("q", "a", system="s")
    assert with_system[0] == (render_prompt("q", system="s"), False)


def test_render_pair_names_its_problems() -> None:
    with pytest.raises(ValueError) as info:
        render_pair("", 3)  # type: ignore[arg-type]
    assert "prompt is empty" in str(info.value)
    assert "response must be a string" in str(info.value)
    with pytest.raises(ValueError, match="system must be a string"):
        render_pair("q", "a", system=1)  # type: ignore[arg-type]


CONVERSATION = [
    {"role": "system", "content": "Ты помощник программиста 1С."},
    {"role": "user", "content": "Как получить текущую дату?"},
    {"role": "assistant", "content": "ТекущаяДата()"},
    {"role": "user", "content": "А на сервере?\r\n\r\nБез учёта пояса."},
    {"role": "assistant", "content": "  ТекущаяДатаСеанса()\n"},
]


def test_render_messages_multi_turn() -> None:
    segments = render_messages(CONVERSATION)
    assert segments == [
        ("System: Ты помощник программиста 1С.\n\nUser: Как получить текущую дату?\n\nAssistant:", False),
        (" ТекущаяДата()\n\n", True),  # the separator after an answer is trained: the turn is over
        ("User: А на сервере?\nБез учёта пояса.\n\nAssistant:", False),
        (" ТекущаяДатаСеанса()", True),  # the last answer ends with the end-of-document token instead
    ]
    # Flags alternate, and the trained text never holds anything the user wrote.
    flags = [t for _, t in segments]
    assert all(a != b for a, b in itertools.pairwise(flags))
    trained = "".join(text for text, t in segments if t)
    assert "User:" not in trained and "Assistant:" not in trained


def test_training_tokens_match_inference_tokens() -> None:
    """Tokenised segment by segment, a training example starts with exactly the inference prompt's tokens."""
    tok = get_tokenizer()
    question, answer = "Напиши процедуру", "Процедура Тест()\nКонецПроцедуры"
    segments = render_pair(question, answer)
    train_ids = [i for text, _ in segments for i in tok.encode(text)]
    prompt_ids = tok.encode(render_prompt(question))
    assert train_ids[: len(prompt_ids)] == prompt_ids
    assert tok.decode(train_ids[len(prompt_ids) :]) == " " + answer


def test_a_stop_string_marks_the_end_of_an_answer() -> None:
    text = "".join(t for t, _ in render_messages(CONVERSATION))
    first_answer_end = text.index(" ТекущаяДата()") + len(" ТекущаяДата()")
    from rwkv1c.infer.sampling import SamplingParams

    stops = SamplingParams(stop_at_blank_line=False).for_chat().stop_strings
    assert any(text.startswith(stop, first_answer_end) for stop in stops)


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        ("not a list", "must be a list"),
        ([], "empty list"),
        ([{"role": "bot", "content": "x"}], "role must be one of system, user, assistant"),
        ([{"role": "user", "content": None}], "content must be a string"),
        ([{"role": "user", "content": "  \n"}, {"role": "assistant", "content": "a"}], "messages[0].content is empty"),
        (["hello"], "must be an object"),
        ([{"role": "assistant", "content": "a"}], "user expected"),
        ([{"role": "user", "content": "q"}], "last message must be from the assistant"),
        (
            [
                {"role": "user", "content": "q"},
                {"role": "user", "content": "q2"},
                {"role": "assistant", "content": "a"},
            ],
            "messages[1] has role 'user'",
        ),
        (
            [
                {"role": "user", "content": "q"},
                {"role": "system", "content": "s"},
                {"role": "assistant", "content": "a"},
            ],
            "only first",
        ),
    ],
)
def test_render_messages_rejects(messages, expected: str) -> None:
    with pytest.raises(ValueError) as info:
        render_messages(messages)
    assert expected in str(info.value)


def test_render_messages_reports_every_problem_at_once() -> None:
    with pytest.raises(ValueError) as info:
        render_messages([{"role": "robot", "content": "q"}, {"role": "assistant", "content": 7}])
    message = str(info.value)
    assert "messages[0].role" in message and "messages[1].content" in message
