"""The RWKV World tokenizer (vocab rwkv_vocab_v20230424, 65536 ids).

Encoding goes through the Rust package `pyrwkv-tokenizer` (greedy longest match over UTF-8 bytes,
identical to the reference tokenizer). Decoding goes through our own id -> bytes table built from the
same vocab file, because the Rust decoder panics on partial UTF-8 (a token may hold half of a
Cyrillic letter or emoji) and that panic is not an `Exception`.

Token 0 is not in the vocab file: it marks the end of a document and decodes to nothing. Ids
65530..65535 exist only as padding of the embedding matrix and decode to nothing as well.
"""

from __future__ import annotations

import ast
import codecs
import functools
from collections.abc import Iterable
from pathlib import Path

from rwkv1c.model.config import VOCAB_SIZE

END_OF_DOC = 0  # token 0: ends every training document, and generation stops on it (its one name)
VOCAB_FILE_NAME = "rwkv_vocab_v20230424.txt"


def default_vocab_file() -> Path:
    """The vocab file shipped inside the installed `pyrwkv-tokenizer` package."""
    import pyrwkv_tokenizer

    return Path(pyrwkv_tokenizer.__file__).parent / VOCAB_FILE_NAME


def _parse_token(literal: str) -> bytes:
    """Turn the Python literal of one vocab line (`'abc'`, `"it's"`, `b'\\xe2'`) into bytes."""
    # Fast path: a str literal without escapes is its own content (about 99% of the lines).
    if len(literal) >= 2 and literal[0] == literal[-1] and literal[0] in "'\"" and "\\" not in literal:
        return literal[1:-1].encode("utf-8")
    value = ast.literal_eval(literal)  # never eval(): the file is data
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes):
        return value
    raise ValueError(f"expected a str or bytes literal, got {type(value).__name__}")


def load_vocab_bytes(path: str | Path) -> list[bytes]:
    """Read a vocab file (lines `ID LITERAL LENGTH`) into a table: table[id] = the token's bytes.

    The table has VOCAB_SIZE entries; ids absent from the file (0 and the padding ids) map to b"".
    """
    table = [b""] * VOCAB_SIZE
    seen: set[int] = set()
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line:
                continue
            first, last = line.find(" "), line.rfind(" ")
            if first <= 0 or last <= first:
                raise ValueError(f"{path}:{lineno}: expected 'ID LITERAL LENGTH'")
            try:
                token_id, length = int(line[:first]), int(line[last + 1 :])
                data = _parse_token(line[first + 1 : last])
            except (ValueError, SyntaxError) as exc:
                raise ValueError(f"{path}:{lineno}: cannot parse vocab line: {exc}") from exc
            if len(data) != length:
                raise ValueError(f"{path}:{lineno}: token is {len(data)} bytes, the line says {length}")
            if not 0 < token_id < VOCAB_SIZE or token_id in seen:
                raise ValueError(f"{path}:{lineno}: token id {token_id} is out of range or repeated")
            seen.add(token_id)
            table[token_id] = data
    return table


class Tokenizer:
    """Encode text to RWKV World token ids and decode ids back to bytes / text."""

    vocab_size: int = VOCAB_SIZE
    eod_id: int = END_OF_DOC

    def __init__(self, vocab_file: str | Path | None = None) -> None:
        import pyrwkv_tokenizer

        self.vocab_file = Path(vocab_file) if vocab_file is not None else default_vocab_file()
        if not self.vocab_file.is_file():
            raise FileNotFoundError(f"RWKV vocab file not found: {self.vocab_file}")
        self._rust = pyrwkv_tokenizer.WorldTokenizer(str(self.vocab_file))

    @functools.cached_property
    def _id_to_bytes(self) -> list[bytes]:
        # Built on first decode only (~0.1 s): data preparation never pays for it.
        return load_vocab_bytes(self.vocab_file)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no end-of-document token is added)."""
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a str, got {type(text).__name__}")
        return self._rust.encode(text)  # a new list of int

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """``[encode(t) for t in texts]``, computed on several threads by the Rust tokenizer.

        Its thread pool does not survive os.fork(): a forked child of a process that has called this
        must use `encode` only (it would wait forever here).
        """
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"encode_batch() takes a list of str; item {i} is {type(text).__name__}")
        return self._rust.encode_batch(texts) if texts else []

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes of one token (b"" for the end-of-document and padding ids)."""
        if not 0 <= token_id < VOCAB_SIZE:
            raise ValueError(f"token id {token_id} is outside 0..{VOCAB_SIZE - 1}")
        return self._id_to_bytes[token_id]

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The bytes of a token sequence; they may end inside a multi-byte character."""
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)  # numpy arrays: plain ints, fast
        if ids and (min(ids) < 0 or max(ids) >= VOCAB_SIZE):
            bad = [i for i in ids if not 0 <= i < VOCAB_SIZE]
            raise ValueError(f"token ids outside 0..{VOCAB_SIZE - 1}: {bad[:5]}")
        table = self._id_to_bytes
        return b"".join([table[i] for i in ids])

    def decode(self, ids: Iterable[int]) -> str:
        """Text of a token sequence; invalid or truncated UTF-8 becomes U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")


@functools.cache
def get_tokenizer() -> Tokenizer:
    """The shared RWKV World tokenizer of this process (built once: ~0.3 s and ~230 MB for the Rust trie)."""
    return Tokenizer()


class StreamDecoder:
    """Turn a stream of token ids into text without ever splitting a UTF-8 character.

    `push` returns the characters completed by the new token (often "" when a token ends inside a
    character); `flush` returns what is left at the end, with U+FFFD for an unfinished character.
    Concatenating every `push` and the final `flush` equals `tokenizer.decode(all_ids)`.
    """

    def __init__(self, tokenizer: Tokenizer | None = None) -> None:
        self.tokenizer = tokenizer if tokenizer is not None else get_tokenizer()
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        """Add one token; return the complete characters it finishes."""
        return self._utf8.decode(self.tokenizer.token_bytes(int(token_id)))

    def flush(self) -> str:
        """Return the pending bytes (an unfinished character becomes U+FFFD) and start afresh."""
        text = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return text
