"""The RWKV World tokenizer against the reference implementation of the `rwkv` package."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from rwkv1c.model.tokenizer import END_OF_DOC, VOCAB_SIZE, StreamDecoder, Tokenizer, get_tokenizer, load_vocab_bytes

CORPUS = Path(__file__).resolve().parents[1] / ".." / "shared" / "corpus" / "ssl-3.2-ru"

BSL = (
    "\ufeff// Общий модуль: работа с контрагентами\r\n"
    "#Область ПрограммныйИнтерфейс\r\n\r\n"
    "Функция НайтиКонтрагента(Знач ИНН, Отбор = Неопределено) Экспорт\r\n"
    '\tЗапрос = Новый Запрос("ВЫБРАТЬ Ссылка ИЗ Справочник.Контрагенты ГДЕ ИНН = &ИНН");\r\n'
    '\tЗапрос.УстановитьПараметр("ИНН", ИНН);\r\n'
    "\tВыборка = Запрос.Выполнить().Выбрать();\r\n"
    "\tЕсли Выборка.Следующий() Тогда\r\n\t\tВозврат Выборка.Ссылка;\r\n\tКонецЕсли;\r\n"
    "\tВозврат Справочники.Контрагенты.ПустаяСсылка(); // «ёлки» — №5\r\n"
    "КонецФункции\r\n\r\n#КонецОбласти\r\n"
)
ENGLISH = (
    'def fib(n: int) -> int:\n    """Return the n-th Fibonacci number."""\n'
    "    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n\n"
    "if __name__ == '__main__':\n\tprint(fib(10))  # 55\n"
)
EMOJI = "Готово 🎉👍🏽 семья: 👨‍👩‍👧‍👦, флаг 🇷🇺, 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 and 中文 日本語 한국어"
SAMPLES = {
    "bsl": BSL,
    "english": ENGLISH,
    "emoji": EMOJI,
    "crlf": "Строка1\r\nСтрока2\r\n\r\n\rстранно\n\r",
    "tabs": "\t\tОтступ\t\tв середине\t\n\t",
    "bom": "\ufeffПроцедура Тест()\r\nКонецПроцедуры",
    "controls": "\x00\x01\x7f null\x00byte \u2028 \u00a0 nbsp",
    "spaces": " " * 300 + "x" + "\n" * 50 + "-" * 200,
    "single": "ж",
}


@pytest.fixture(scope="module")
def ref():
    """The reference pure-Python tokenizer of the `rwkv` package, with its own copy of the vocab."""
    import rwkv
    from rwkv.rwkv_tokenizer import TRIE_TOKENIZER

    return TRIE_TOKENIZER(str(Path(rwkv.__file__).parent / "rwkv_vocab_v20230424.txt"))


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return get_tokenizer()


def random_text(rng: random.Random, n: int) -> str:
    """Valid text from several scripts, emoji and control characters (no surrogates)."""
    ranges = [(0x20, 0x7E), (0x400, 0x4FF), (0x0, 0x1F), (0x4E00, 0x4FFF), (0x1F300, 0x1F6FF), (0xE000, 0xE0FF)]
    out = []
    for _ in range(n):
        lo, hi = rng.choice(ranges)
        out.append(chr(rng.randint(lo, hi)))
    return "".join(out)


def random_bytes(rng: random.Random, n: int) -> bytes:
    """Bytes biased towards UTF-8 lead and continuation bytes, so that both valid and broken sequences occur."""
    pools = [range(0x00, 0x80), range(0x80, 0xC0), range(0xC0, 0xF8), range(0xF8, 0x100)]
    return bytes(rng.choice(rng.choice(pools)) for _ in range(n))


def test_vocab_table_matches_reference(tok, ref) -> None:
    table = load_vocab_bytes(tok.vocab_file)
    assert len(table) == VOCAB_SIZE == tok.vocab_size
    assert table[END_OF_DOC] == b""
    mismatched = [i for i in range(VOCAB_SIZE) if table[i] != ref.idx2token.get(i, b"")]
    assert mismatched == []
    assert sum(1 for b in table if b) == len(ref.idx2token)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_encode_matches_reference_and_round_trips(tok, ref, name: str) -> None:
    text = SAMPLES[name]
    ids = tok.encode(text)
    assert ids == ref.encode(text)
    assert all(0 < i < VOCAB_SIZE for i in ids)
    assert tok.decode(ids) == text
    assert tok.decode_bytes(ids) == text.encode("utf-8")


def test_random_text_matches_reference(tok, ref) -> None:
    rng = random.Random(1234)
    for _ in range(40):
        text = random_text(rng, rng.randint(1, 400))
        ids = tok.encode(text)
        assert ids == ref.encode(text)
        assert tok.decode(ids) == text


def test_random_bytes(tok, ref) -> None:
    """Arbitrary bytes: the tokenizer encodes only valid text, but must decode any token sequence."""
    rng = random.Random(99)
    broken = 0
    for _ in range(40):
        raw = random_bytes(rng, rng.randint(1, 300))
        # A str made with errors="replace" is valid Unicode: it encodes exactly like the reference.
        text = raw.decode("utf-8", errors="replace")
        assert tok.encode(text) == ref.encode(text)
        # The reference can tokenise the raw bytes themselves (every single byte is a token) ...
        ids = ref.encodeBytes(raw)
        # ... and our decoder gives them back byte for byte, or as text with U+FFFD where broken.
        assert tok.decode_bytes(ids) == raw
        assert tok.decode(ids) == raw.decode("utf-8", errors="replace")
        # surrogateescape keeps the broken bytes as lone surrogates: such a str is not valid text,
        # so encoding it must fail rather than produce made-up tokens.
        escaped = raw.decode("utf-8", errors="surrogateescape")
        if escaped != text:
            broken += 1
            with pytest.raises(ValueError):
                tok.encode(escaped)
            assert tok.decode_bytes(ids).decode("utf-8", errors="surrogateescape") == escaped
    assert broken > 10  # the generator really produced invalid UTF-8


def test_corpus_modules_match_reference(tok, ref) -> None:
    files = sorted(CORPUS.rglob("*.bsl"))[:3] if CORPUS.is_dir() else []
    if not files:
        pytest.skip(f"corpus not found at {CORPUS}")
    for path in files:
        text = path.read_bytes()[:20000].decode("utf-8", errors="ignore")
        assert tok.encode(text) == ref.encode(text)


def test_encode_batch_equals_encode(tok) -> None:
    texts = [*SAMPLES.values(), "", "a", random_text(random.Random(5), 2000)]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    assert tok.encode_batch([]) == []
    with pytest.raises(TypeError):
        tok.encode_batch(["ok", 5])  # type: ignore[list-item]


def test_special_and_out_of_range_ids(tok) -> None:
    assert tok.decode([END_OF_DOC]) == ""
    assert tok.decode_bytes([65535]) == b""  # padding id of the embedding matrix
    text_ids = tok.encode("Привет")
    assert tok.decode([END_OF_DOC, *text_ids, END_OF_DOC]) == "Привет"
    for bad in ([VOCAB_SIZE], [-1], [1, 2, 70000]):
        with pytest.raises(ValueError):
            tok.decode(bad)
    with pytest.raises(TypeError):
        tok.encode(b"bytes")  # type: ignore[arg-type]


def split_character_ids(tok: Tokenizer, text: str) -> list[int]:
    """Ids of ``text`` that end inside a multi-byte character (checked by the test that uses it)."""
    ids = tok.encode(text)
    out, buf = [], b""
    for i in ids:
        buf += tok.token_bytes(i)
        try:
            buf.decode("utf-8")
        except UnicodeDecodeError:
            out.append(i)
    return out


@pytest.mark.parametrize("name", ["emoji", "bsl", "controls"])
def test_stream_decoder_equals_full_decode(tok, name: str) -> None:
    text = SAMPLES[name]
    ids = tok.encode(text)
    dec = StreamDecoder(tok)
    pieces = [dec.push(i) for i in ids]
    pieces.append(dec.flush())
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)  # never half a character
    if name == "emoji":
        # The test is meaningful only if some token really ends inside a character.
        assert split_character_ids(tok, text), "expected emoji bytes split across tokens"
        assert "" in pieces[:-1]


def test_stream_decoder_never_splits_a_character(tok) -> None:
    """Feed a 4-byte emoji one byte-token at a time: nothing comes out until it is complete."""
    raw = "🎉".encode()
    byte_ids = [tok.encode(chr(b))[0] if b < 0x80 else _byte_token(tok, b) for b in raw]
    assert tok.decode_bytes(byte_ids) == raw
    dec = StreamDecoder(tok)
    assert [dec.push(i) for i in byte_ids] == ["", "", "", "🎉"]
    assert dec.flush() == ""


def _byte_token(tok: Tokenizer, byte: int) -> int:
    return next(i for i in range(1, VOCAB_SIZE) if tok.token_bytes(i) == bytes([byte]))


def test_stream_decoder_on_broken_bytes_matches_decode(tok, ref) -> None:
    rng = random.Random(7)
    for _ in range(30):
        ids = ref.encodeBytes(random_bytes(rng, rng.randint(1, 120)))
        dec = StreamDecoder(tok)
        streamed = "".join(dec.push(i) for i in ids) + dec.flush()
        assert streamed == tok.decode(ids)


def test_stream_decoder_flush_reports_a_truncated_character(tok) -> None:
    dec = StreamDecoder(tok)
    assert dec.push(_byte_token(tok, 0xD0)) == ""  # first byte of a Cyrillic letter
    assert dec.flush() == "\ufffd"
    assert dec.push(tok.encode("я")[0]) == "я"  # flush started afresh


def test_get_tokenizer_is_cached() -> None:
    assert get_tokenizer() is get_tokenizer()


def test_vocab_parser_is_safe_and_strict(tmp_path: Path) -> None:
    good = tmp_path / "good.txt"
    good.write_text("1 'a' 1\n2 b'\\xd0' 1\n3 \"it's\" 4\n4 'ж' 2\n", encoding="utf-8")
    table = load_vocab_bytes(good)
    assert table[1:5] == [b"a", b"\xd0", b"it's", "ж".encode()]
    marker = tmp_path / "executed"
    evil = tmp_path / "evil.txt"
    evil.write_text(f"1 open({str(marker)!r}, 'w') 1\n", encoding="utf-8")
    with pytest.raises(ValueError, match="evil.txt:1"):
        load_vocab_bytes(evil)
    assert not marker.exists()
    wrong_length = tmp_path / "len.txt"
    wrong_length.write_text("1 'ab' 3\n", encoding="utf-8")
    with pytest.raises(ValueError, match="2 bytes"):
        load_vocab_bytes(wrong_length)
    repeated = tmp_path / "rep.txt"
    repeated.write_text("1 'a' 1\n1 'b' 1\n", encoding="utf-8")
    with pytest.raises(ValueError, match="repeated"):
        load_vocab_bytes(repeated)
