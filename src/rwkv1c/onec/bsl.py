"""1C:Enterprise language (BSL): lexing, method and region splitting, a structural checker.

One pass of a regular-expression lexer finds what matters for structure: words (keywords are
case-insensitive, Russian or English), string literals (double quotes, ``""`` escapes, lines continued
with ``|``, comment lines allowed between them), date literals, ``//`` comments, preprocessor lines
(``#Если``, ``#Область`` ...) and compilation directives (``&НаСервере`` ...). Everything else (numbers,
operators, whitespace) is skipped by the regex engine itself, which keeps the lexer fast on large modules.

``parse_module`` walks the tokens once and returns the methods (with their directives and the doc comment
above them), the ``#Область`` regions and the structural problems: unbalanced ``Процедура``/``Функция``,
``Если``, ``Для``/``Пока``, ``Попытка`` blocks, ``#Если``/``#Область`` lines, unclosed strings and date
literals. Words after a dot are member names, never keywords (``Запрос.Выполнить()``), and query text lives
inside strings, so ``ВЫБРАТЬ`` there is never read as code.

The checker is a balance check, not a compiler: it accepts code a compiler would reject (type errors, bad
expressions) but flags what breaks the block structure, which is what generated code gets wrong most often.
"""

from __future__ import annotations

import bisect
import re
import textwrap
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from rwkv1c.text import normalize_newlines

Language = Literal["ru", "en", "mixed", "none"]

# canonical keyword -> (Russian, English) spellings, lower case
_KEYWORD_SPELLINGS: dict[str, tuple[str, ...]] = {
    "if": ("если", "if"),
    "then": ("тогда", "then"),
    "elsif": ("иначеесли", "elsif"),
    "else": ("иначе", "else"),
    "endif": ("конецесли", "endif"),
    "for": ("для", "for"),
    "each": ("каждого", "each"),
    "in": ("из", "in"),
    "to": ("по", "to"),
    "while": ("пока", "while"),
    "do": ("цикл", "do"),
    "enddo": ("конеццикла", "enddo"),
    "try": ("попытка", "try"),
    "except": ("исключение", "except"),
    "endtry": ("конецпопытки", "endtry"),
    "raise": ("вызватьисключение", "raise"),
    "procedure": ("процедура", "procedure"),
    "function": ("функция", "function"),
    "endprocedure": ("конецпроцедуры", "endprocedure"),
    "endfunction": ("конецфункции", "endfunction"),
    "export": ("экспорт", "export"),
    "val": ("знач", "val"),
    "var": ("перем", "var"),
    "return": ("возврат", "return"),
    "break": ("прервать", "break"),
    "continue": ("продолжить", "continue"),
    "new": ("новый", "new"),
    "execute": ("выполнить", "execute"),
    "async": ("асинх", "async"),
    "await": ("ждать", "await"),
    "goto": ("перейти", "goto"),
    "and": ("и", "and"),
    "or": ("или", "or"),
    "not": ("не", "not"),
    "true": ("истина", "true"),
    "false": ("ложь", "false"),
    "undefined": ("неопределено", "undefined"),
    "addhandler": ("добавитьобработчик", "addhandler"),
    "removehandler": ("удалитьобработчик", "removehandler"),
}
KEYWORDS: dict[str, str] = {
    spelling: canon for canon, spellings in _KEYWORD_SPELLINGS.items() for spelling in spellings
}
# spellings that tell the keyword language of a text (short words shared with identifiers left out)
_LANGUAGE_MARKERS: dict[str, Language] = {}
for _canon, (_ru, _en) in _KEYWORD_SPELLINGS.items():
    if _canon not in ("and", "or", "not", "in", "to"):
        _LANGUAGE_MARKERS[_ru] = "ru"
        _LANGUAGE_MARKERS[_en] = "en"

# preprocessor instruction (lower case) -> canonical
_PREPROC: dict[str, str] = {
    "если": "if", "if": "if",
    "иначеесли": "elsif", "elsif": "elsif",
    "иначе": "else", "else": "else",
    "конецесли": "endif", "endif": "endif",
    "область": "region", "region": "region",
    "конецобласти": "endregion", "endregion": "endregion",
    "вставка": "insert", "insert": "insert",
    "конецвставки": "endinsert", "endinsert": "endinsert",
    "удаление": "delete", "delete": "delete",
    "конецудаления": "enddelete", "enddelete": "enddelete",
}  # fmt: skip

# One alternative per token kind. The string pattern is "unrolled" (no nested quantifiers), so a string
# that never closes fails in linear time and the `bad_string` alternative takes the rest of its line.
_TOKEN_RE = re.compile(
    r"""
    (?P<comment>//[^\n]*)
  | (?P<string>"[^"\n]*(?:(?:""|\n(?:[ \t]*(?://[^\n]*)?\n)*[ \t]*\|)[^"\n]*)*")
  | (?P<bad_string>"[^\n]*)
  | (?P<date>'[^'\n]*')
  | (?P<bad_date>'[^\n]*)
  | (?P<preproc>\#[^\n]*)
  | (?P<directive>&\w+)
  | (?P<word>\w+)
  | (?P<punct>[.;()])
    """,
    re.VERBOSE,
)
_PREPROC_RE = re.compile(r"#\s*(\w+)\s*(.*?)\s*(?://.*)?$")

TokenKind = Literal[
    "comment", "string", "bad_string", "date", "bad_date", "preproc", "directive", "word", "punct"
]  # fmt: skip


class Token(NamedTuple):
    """One lexical token: its kind, text and offsets into the module text."""

    kind: TokenKind
    text: str
    start: int
    end: int


def tokenize(text: str) -> list[Token]:
    """Tokens of a BSL text (whitespace, numbers and most operators are not returned)."""
    return [Token._make(t) for t in _raw_tokens(text)]


_Raw = tuple[str, str, int, int]  # (kind, text, start, end): a Token without the attribute names


def _raw_tokens(text: str) -> list[_Raw]:
    return [(m.lastgroup, m.group(), *m.span()) for m in _TOKEN_RE.finditer(text)]  # type: ignore[misc]


@dataclass(frozen=True)
class Problem:
    """A structural problem: 1-based line and a message."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass(frozen=True)
class Method:
    """A procedure or function of a module. Lines are 1-based and inclusive.

    ``start_line`` is the first line of the doc comment or directive above the method (or the header line
    when there is neither); ``header_line`` holds ``Процедура``/``Функция``; ``end_line`` holds the end
    keyword.
    """

    name: str
    kind: Literal["procedure", "function"]
    export: bool
    is_async: bool
    params: str
    directives: tuple[str, ...]
    doc: str
    start_line: int
    header_line: int
    body_line: int
    end_line: int
    region: str


@dataclass(frozen=True)
class Region:
    """A ``#Область`` block: name, 1-based inclusive lines, nesting depth (0 = top level)."""

    name: str
    start_line: int
    end_line: int
    depth: int


@dataclass
class ParsedModule:
    """What one pass over a module found."""

    lines: list[str]
    methods: list[Method] = field(default_factory=list)
    regions: list[Region] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    keyword_counts: dict[str, int] = field(default_factory=dict)

    def segment(self, first_line: int, last_line: int) -> str:
        """Lines ``first_line..last_line`` (1-based, inclusive) joined with newlines."""
        return "\n".join(self.lines[first_line - 1 : last_line])


class _Walker:
    """The single pass behind ``parse_module``: block stack, preprocessor stack, methods, regions."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
        self.problems: list[Problem] = []
        self.stack: list[tuple[str, int, str]] = []  # (block, offset, state)
        self.pp: list[tuple[str, int, list[tuple[str, int, str]], list[tuple[str, int, str]] | None]] = []
        self.regions: list[tuple[str, int, int]] = []  # open: (name, line, depth)
        self.closed_regions: list[Region] = []
        self.deleted = 0
        self.expect: tuple[str, int] | None = None  # ("then" | "do", offset)
        self.method_open: dict[str, object] | None = None
        self.methods: list[dict[str, object]] = []
        self.counts: dict[str, int] = {}

    def line(self, offset: int) -> int:
        return bisect.bisect_right(self.line_starts, offset)

    def problem(self, offset: int, message: str) -> None:
        self.problems.append(Problem(self.line(offset), message))

    # -- preprocessor ---------------------------------------------------------------------------------
    def preproc(self, tok: _Raw) -> None:
        m = _PREPROC_RE.match(tok[1])
        word = m.group(1).lower() if m else ""
        canon = _PREPROC.get(word)
        line_start = self.line_starts[self.line(tok[2]) - 1]
        if self.text[line_start : tok[2]].strip():
            self.problem(tok[2], "preprocessor instruction must start its own line")
        if canon is None:
            self.problem(tok[2], f"unknown preprocessor instruction '#{word}'")
            return
        if canon == "if":
            self.pp.append(("if", tok[2], list(self.stack), None))
        elif canon in ("elsif", "else"):
            if not self.pp or self.pp[-1][0] != "if":
                self.problem(tok[2], f"'#{m.group(1)}' without '#Если'")  # type: ignore[union-attr]
                return
            kind, off, saved, end_state = self.pp[-1]
            # every branch starts from the block state at '#Если'; the first branch's end state continues
            self.pp[-1] = (kind, off, saved, end_state if end_state is not None else list(self.stack))
            self.stack = list(saved)
        elif canon == "region":
            name = m.group(2).split()[0] if m and m.group(2).split() else ""  # type: ignore[union-attr]
            if not name:
                self.problem(tok[2], "'#Область' without a name")
            self.pp.append(("region", tok[2], [], None))
            self.regions.append((name, self.line(tok[2]), len(self.regions)))
        elif canon in ("insert", "delete"):
            self.pp.append((canon, tok[2], [], None))
            if canon == "delete":
                self.deleted += 1
        else:  # endif, endregion, endinsert, enddelete
            opener = canon[3:]
            if not self.pp or self.pp[-1][0] != opener:
                inside = f" (inside '#{self.pp[-1][0]}' of line {self.line(self.pp[-1][1])})" if self.pp else ""
                self.problem(tok[2], f"'#{m.group(1)}' without a matching opener{inside}")  # type: ignore[union-attr]
                return
            kind, _, _, end_state = self.pp.pop()
            if kind == "if" and end_state is not None:
                self.stack = end_state
            elif kind == "region":
                name, start, depth = self.regions.pop()
                self.closed_regions.append(Region(name, start, self.line(tok[2]), depth))
            elif kind == "delete":
                self.deleted -= 1

    # -- code -----------------------------------------------------------------------------------------
    def open_method(self, kw: str, tok: _Raw, tokens: list[_Raw], i: int) -> None:
        if self.stack:
            for block, off, _ in reversed(self.stack):
                self.problem(off, f"'{_block_word(block)}' is not closed before the next method")
            self.stack.clear()
        self.stack.append((kw, tok[2], ""))
        start_off = tok[2]
        is_async = False
        if i > 0 and tokens[i - 1][0] == "word" and tokens[i - 1][1].lower() in ("асинх", "async"):
            is_async = True
            start_off = tokens[i - 1][2]
        name, params, export = "", "", False
        j = i + 1
        if j < len(tokens) and tokens[j][0] == "word":
            name = tokens[j][1]
            j += 1
        if j < len(tokens) and tokens[j][1] == "(":
            depth, k = 0, j
            while k < len(tokens):
                t = tokens[k][1]
                if t == "(":
                    depth += 1
                elif t == ")":
                    depth -= 1
                    if depth == 0:
                        break
                k += 1
            if k < len(tokens):
                params = self.text[tokens[j][3] : tokens[k][2]]
                if k + 1 < len(tokens) and tokens[k + 1][0] == "word":
                    export = KEYWORDS.get(tokens[k + 1][1].lower()) == "export"
        if not name:
            self.problem(tok[2], f"'{tok[1]}' without a name")
        self.method_open = {
            "name": name,
            "kind": "procedure" if kw == "procedure" else "function",
            "export": export,
            "is_async": is_async,
            "params": " ".join(params.split()),
            "header_off": start_off,
            "region": self.regions[-1][0] if self.regions else "",
        }

    def close_block(self, kw: str, opener: tuple[str, ...], tok: _Raw) -> bool:
        """Pop the block ``kw`` closes; report what is wrong. Returns True when the top matched."""
        if self.stack and self.stack[-1][0] in opener:
            self.stack.pop()
            return True
        word = tok[1]
        if any(b in opener for b, _, _ in self.stack):
            while self.stack and self.stack[-1][0] not in opener:
                block, off, _ = self.stack.pop()
                self.problem(off, f"'{_block_word(block)}' is not closed before '{word}'")
            self.stack.pop()
            return True
        if (
            kw in ("endprocedure", "endfunction")
            and self.stack
            and self.stack[0][0]
            in (
                "procedure",
                "function",
            )
        ):
            self.problem(tok[2], f"'{word}' closes a {self.stack[0][0]}")
            for block, off, _ in self.stack[1:]:
                self.problem(off, f"'{_block_word(block)}' is not closed before '{word}'")
            self.stack.clear()
            return True
        self.problem(tok[2], f"'{word}' without a matching opener")
        return False

    def keyword(self, kw: str, tok: _Raw, tokens: list[_Raw], i: int) -> None:
        if self.expect is not None and kw not in ("then", "do"):
            self.missing_expected()
        if kw in ("procedure", "function"):
            self.open_method(kw, tok, tokens, i)
        elif kw in ("endprocedure", "endfunction"):
            opener = ("procedure",) if kw == "endprocedure" else ("function",)
            if self.stack and self.stack[0][0] in ("procedure", "function") and self.method_open is not None:
                self.close_block(kw, opener, tok)
                self.finish_method(tok)
            else:
                self.close_block(kw, opener, tok)
        elif kw == "if":
            self.stack.append(("if", tok[2], ""))
            self.expect = ("then", tok[2])
        elif kw == "elsif":
            if not self.stack or self.stack[-1][0] != "if" or self.stack[-1][2] == "else":
                self.problem(tok[2], f"'{tok[1]}' outside an 'Если' block")
            self.expect = ("then", tok[2])
        elif kw == "then":
            if self.expect is None or self.expect[0] != "then":
                self.problem(tok[2], f"'{tok[1]}' without 'Если'")
            self.expect = None
        elif kw == "else":
            if not self.stack or self.stack[-1][0] != "if" or self.stack[-1][2] == "else":
                self.problem(tok[2], f"'{tok[1]}' outside an 'Если' block")
            else:
                self.stack[-1] = ("if", self.stack[-1][1], "else")
        elif kw == "endif":
            self.close_block(kw, ("if",), tok)
        elif kw in ("for", "while"):
            self.stack.append(("loop", tok[2], ""))
            self.expect = ("do", tok[2])
        elif kw == "do":
            if self.expect is None or self.expect[0] != "do":
                self.problem(tok[2], f"'{tok[1]}' without 'Для' or 'Пока'")
            self.expect = None
        elif kw == "enddo":
            self.close_block(kw, ("loop",), tok)
        elif kw == "try":
            self.stack.append(("try", tok[2], ""))
        elif kw == "except":
            if not self.stack or self.stack[-1][0] != "try" or self.stack[-1][2] == "except":
                self.problem(tok[2], f"'{tok[1]}' outside a 'Попытка' block")
            else:
                self.stack[-1] = ("try", self.stack[-1][1], "except")
        elif kw == "endtry":
            if self.stack and self.stack[-1][0] == "try" and self.stack[-1][2] != "except":
                self.problem(self.stack[-1][1], "'Попытка' without 'Исключение'")
            self.close_block(kw, ("try",), tok)

    def finish_method(self, tok: _Raw) -> None:
        info = self.method_open
        assert info is not None
        info["end_off"] = tok[2]
        self.methods.append(info)
        self.method_open = None

    def run(self) -> None:
        tokens = _raw_tokens(self.text)
        prev_dot = False
        counts = self.counts
        for i, tok in enumerate(tokens):
            kind = tok[0]
            if kind == "preproc":
                self.preproc(tok)
                prev_dot = False
                continue
            if self.deleted:
                continue
            if kind == "word":
                if not prev_dot:
                    low = tok[1].lower()
                    kw = KEYWORDS.get(low)
                    if kw is not None:
                        counts[low] = counts.get(low, 0) + 1
                        if kw in _BLOCK_KEYWORDS:
                            self.keyword(kw, tok, tokens, i)
                prev_dot = False
            elif kind == "punct":
                prev_dot = tok[1] == "."
                if tok[1] == ";" and self.expect is not None:
                    self.missing_expected()
            elif kind == "bad_string":
                self.problem(tok[2], "unclosed string literal")
                prev_dot = False
            elif kind == "bad_date":
                self.problem(tok[2], "unclosed date literal")
                prev_dot = False
            elif kind != "comment":
                prev_dot = False
        if self.expect is not None:
            self.missing_expected()
        for block, off, _ in self.stack:
            self.problem(off, f"'{_block_word(block)}' is not closed at the end of the module")
        for kind, off, _, _ in self.pp:
            self.problem(off, f"'#{_PP_WORD[kind]}' is not closed at the end of the module")

    def missing_expected(self) -> None:
        assert self.expect is not None
        want, off = self.expect
        self.problem(off, f"missing '{'Тогда' if want == 'then' else 'Цикл'}'")
        self.expect = None


_BLOCK_KEYWORDS = frozenset(
    [
        "procedure",
        "function",
        "endprocedure",
        "endfunction",
        "if",
        "elsif",
        "then",
        "else",
        "endif",
        "for",
        "while",
        "do",
        "enddo",
        "try",
        "except",
        "endtry",
    ]
)
_PP_WORD = {"if": "Если", "region": "Область", "insert": "Вставка", "delete": "Удаление"}


def _block_word(block: str) -> str:
    return {"procedure": "Процедура", "function": "Функция", "if": "Если", "loop": "Цикл", "try": "Попытка"}[block]


def parse_module(text: str) -> ParsedModule:
    """Split a module (LF newlines) into methods and regions, and check its block structure."""
    walker = _Walker(text)
    walker.run()
    lines = text.split("\n")
    parsed = ParsedModule(lines=lines, problems=walker.problems, keyword_counts=walker.counts)
    parsed.regions = sorted(walker.closed_regions, key=lambda r: (r.start_line, r.depth))
    for info in walker.methods:
        header_line = walker.line(info["header_off"])  # type: ignore[arg-type]
        end_line = walker.line(info["end_off"])  # type: ignore[arg-type]
        start_line, directives, doc = _leading_block(lines, header_line)
        body_line = _body_line(lines, header_line, end_line)
        parsed.methods.append(
            Method(
                name=str(info["name"]),
                kind=info["kind"],  # type: ignore[arg-type]
                export=bool(info["export"]),
                is_async=bool(info["is_async"]),
                params=str(info["params"]),
                directives=directives,
                doc=doc,
                start_line=start_line,
                header_line=header_line,
                body_line=body_line,
                end_line=end_line,
                region=str(info["region"]),
            )
        )
    return parsed


def _leading_block(lines: list[str], header_line: int) -> tuple[int, tuple[str, ...], str]:
    """Directives and doc comment directly above a method header (no blank line in between).

    Returns (first line of the block, directives, doc comment). A separator line of slashes ends the
    comment; a directive above the comment belongs to something else.
    """
    directives: list[str] = []
    comments: list[str] = []
    i = header_line - 2  # 0-based index of the line above the header
    while i >= 0:
        stripped = lines[i].strip()
        if stripped.startswith("&") and not comments:
            directives.append(stripped)
        elif stripped.startswith("//") and stripped.strip("/ \t"):
            comments.append(stripped)
        elif stripped.startswith("//") and len(stripped) == 2:
            comments.append(stripped)  # an empty comment line inside the doc comment
        else:
            break
        i -= 1
    directives.reverse()
    comments.reverse()
    while comments and comments[0] == "//":
        comments.pop(0)
    return header_line - len(directives) - len(comments), tuple(directives), "\n".join(comments)


def _body_line(lines: list[str], header_line: int, end_line: int) -> int:
    """First line after the header (the header may span several lines until its closing parenthesis)."""
    depth = 0
    seen = False
    for n in range(header_line, end_line):
        code = lines[n - 1].split("//", 1)[0]
        depth += code.count("(") - code.count(")")
        seen = seen or "(" in code
        if seen and depth <= 0:
            return n + 1
    return min(header_line + 1, end_line)


def check_structure(text: str) -> list[Problem]:
    """Structural problems of a BSL text (empty list = structurally valid)."""
    return parse_module(normalize_newlines(text)).problems


# -- doc comments ---------------------------------------------------------------------------------------

_SECTION_RE = re.compile(
    r"^(параметры|parameters|возвращаемое значение|returns|return value|пример|примеры|example|examples"
    r"|вызывает исключение|raises)\s*:\s*(.*)$",
    re.IGNORECASE,
)
_SECTION_CANON = {
    "параметры": "params", "parameters": "params",
    "возвращаемое значение": "returns", "returns": "returns", "return value": "returns",
    "пример": "example", "примеры": "example", "example": "example", "examples": "example",
    "вызывает исключение": "raises", "raises": "raises",
}  # fmt: skip


@dataclass(frozen=True)
class DocComment:
    """A method comment in the standard layout: description, then optional sections."""

    description: str
    params: str
    returns: str
    example: str
    language: Language

    @property
    def is_reference(self) -> bool:
        """A "see X" comment that only points at another method."""
        return bool(re.match(r"(см\.|see\b)", self.description, re.IGNORECASE))


def parse_doc_comment(doc: str) -> DocComment:
    """Split a ``//`` doc comment into description / parameters / return value / example."""
    sections: dict[str, list[str]] = {"description": [], "params": [], "returns": [], "example": [], "raises": []}
    current = "description"
    headings: list[str] = []
    for raw in doc.split("\n"):
        line = raw.strip()
        line = line[2:] if line.startswith("//") else line
        if line.startswith(" "):
            line = line[1:]
        m = _SECTION_RE.match(line.strip())
        if m:
            current = _SECTION_CANON[m.group(1).lower()]
            if current != "example":  # the example is code, its heading says nothing of the prose
                headings.append(m.group(1))
            if m.group(2):
                sections[current].append(m.group(2))
            continue
        sections[current].append(line.rstrip())

    def join(name: str) -> str:
        return textwrap.dedent("\n".join(sections[name]).expandtabs(4)).strip("\n")

    description = " ".join(" ".join(sections["description"]).split())
    params, returns = join("params"), join("returns")
    return DocComment(
        description=description,
        params=params,
        returns=returns,
        example=join("example"),
        language=_prose_language(description, headings, "\n".join((description, params, returns))),
    )


_PROSE_TOKEN_RE = re.compile(r"[\w.]+")
_CYRILLIC_WORD_RE = re.compile(r"[\u0400-\u04ff]+")
_LATIN_WORD_RE = re.compile(r"[A-Za-z]+")


def _prose_language(description: str, headings: list[str], fallback: str) -> Language:
    """The language a doc comment is written in, judged by its prose, not by the names it quotes.

    Words of the description and the section headings are counted by script; identifiers
    (``СправочникСсылка.Пользователи``, ``ТаблицаЗначений``, ``Value_1``) are left out, so an English comment
    naming Russian types stays English. A tie is decided by the letters of ``fallback`` (the comment without
    its example).
    """
    votes = {"ru": 0, "en": 0}
    for heading in headings:
        votes["ru" if _CYRILLIC_WORD_RE.search(heading) else "en"] += 1
    for token in _PROSE_TOKEN_RE.findall(description):
        word = token.rstrip(".")
        if not word or "." in word or any(c.isdigit() or c == "_" or c.isupper() for c in word[1:]):
            continue  # an identifier or a qualified name, not a word of prose
        if _CYRILLIC_WORD_RE.fullmatch(word):
            votes["ru"] += 1
        elif _LATIN_WORD_RE.fullmatch(word):
            votes["en"] += 1
    if votes["ru"] == votes["en"]:
        votes = {"ru": len(re.findall("[\u0400-\u04ff]", fallback)), "en": len(re.findall("[A-Za-z]", fallback))}
    if not votes["ru"] and not votes["en"]:
        return "none"
    return "ru" if votes["ru"] >= votes["en"] else "en"


_DOC_PARAM_RE = re.compile(r"^([ \t]*)(\w+)[ \t]*(?:\n[ \t]*)?[-–—]", re.MULTILINE)  # "Имя - Тип" or "Имя\n  - Тип"
_SIGNATURE_PARAM_RE = re.compile(r"\s*(?:(?:знач|val)\s+)?(\w+)", re.IGNORECASE)
_LITERAL_RE = re.compile(r"\"[^\"]*\"|'[^']*'")


def signature_params(params: str) -> list[str]:
    """Parameter names of a method header's parameter list (``Знач А, Б = ","`` -> ``["А", "Б"]``)."""
    names = []
    for part in _LITERAL_RE.sub('""', params).split(","):
        m = _SIGNATURE_PARAM_RE.match(part)
        if m:
            names.append(m.group(1))
    return names


def documented_params(doc: DocComment) -> list[str]:
    """Parameter names a doc comment describes: the least indented ``Name - ...`` lines of its section
    (or a ``Name`` line followed by ``- Type`` lines, the layout for several types).

    Lines indented deeper are structure fields or notes (``* Ключ - ...``); ``Нет.`` names nothing.
    """
    found = [(len(m.group(1).expandtabs(4)), m.group(2)) for m in _DOC_PARAM_RE.finditer(doc.params)]
    least = min((indent for indent, _ in found), default=0)
    return [name for indent, name in found if indent == least]


def is_standard_doc(doc: DocComment, method: Method) -> bool:
    """Whether a method carries a doc comment in the standard layout that fits the method.

    Standard = a description of at least two words that is not a "see X" reference; a parameters section
    naming only parameters of the signature (at least one when the method takes any, none when it takes
    none); a return-value section on a function and none on a procedure. A comment copied from another
    method (a return value on a procedure, ``Параметры: Нет.`` or other names on a method with
    parameters) is not standard.
    """
    if len(doc.description.split()) < 2 or doc.is_reference:
        return False
    if (method.kind == "function") != bool(doc.returns.strip()):
        return False
    expected = {name.lower() for name in signature_params(method.params)}
    documented = {name.lower() for name in documented_params(doc)}
    if expected and not documented:
        return False
    return documented <= expected


# -- scoring of generated code ----------------------------------------------------------------------------


def keyword_share(parsed: ParsedModule, language: Literal["ru", "en"]) -> float | None:
    """Share of the keywords written in ``language`` (None when the text has no keywords)."""
    counts = {"ru": 0, "en": 0}
    for word, n in parsed.keyword_counts.items():
        lang = _LANGUAGE_MARKERS.get(word)
        if lang in counts:
            counts[lang] += n
    total = counts["ru"] + counts["en"]
    return counts[language] / total if total else None


def keyword_language(parsed: ParsedModule) -> tuple[Language, float]:
    """The keyword language of a text and the share of keywords written in it (1.0 = consistent)."""
    ru = en = 0
    for word, n in parsed.keyword_counts.items():
        lang = _LANGUAGE_MARKERS.get(word)
        if lang == "ru":
            ru += n
        elif lang == "en":
            en += n
    if ru + en == 0:
        return "none", 1.0
    share = max(ru, en) / (ru + en)
    if share == 1.0:
        return ("ru" if ru else "en"), 1.0
    return ("ru" if ru > en else "en") if share >= 0.9 else "mixed", share


# (family, name, pattern) searched in code with strings and comments blanked out
_FOREIGN_PATTERNS: list[tuple[str, str, re.Pattern[str]]] = [
    ("python", "def", re.compile(r"^\s*def\s+\w+\s*\(.*\)\s*(->.*)?:\s*$", re.M)),
    ("python", "import", re.compile(r"^\s*(from\s+[\w.]+\s+)?import\s+[\w.]+(\s+as\s+\w+)?\s*$", re.M)),
    ("python", "elif", re.compile(r"^\s*elif\b", re.M)),
    ("python", "colon-block", re.compile(r"^\s*(if|for|while|else|try|except)\b[^\n;]*:\s*$", re.M)),
    ("python", "self", re.compile(r"\bself\.\w")),
    ("python", "print", re.compile(r"\bprint\s*\(")),
    ("js", "braces", re.compile(r"[{}]")),
    ("js", "function", re.compile(r"\bfunction\s+\w+\s*\([^)]*\)\s*\{")),
    ("js", "let-const", re.compile(r"^\s*(let|const)\s+\w+\s*=", re.M)),
    ("js", "arrow", re.compile(r"=>")),
    ("js", "operators", re.compile(r"===|!==|!=|&&|\|\||\+\+|\+=|-=")),
    ("js", "console", re.compile(r"\bconsole\.log\b")),
    ("js", "block-comment", re.compile(r"/\*|\*/")),
    ("sql", "select", re.compile(r"^\s*(select|выбрать)\b(?![\w.(])", re.M | re.IGNORECASE)),
    ("sql", "from-where", re.compile(r"^\s*(from|where|из|где)\s+\w+(\.\w+)*\s+(as|как)\s+\w+", re.M | re.I)),
    ("sql", "query-line", re.compile(r"^\s*\|", re.M)),
    ("markdown", "fence", re.compile(r"^\s*```", re.M)),
]


_LITERALS = frozenset(("comment", "string", "bad_string", "date", "bad_date"))
_NOT_NEWLINE = re.compile(r"[^\n]")


def code_only(text: str) -> str:
    """The text with string/date literals and comments replaced by spaces (newlines kept)."""
    out: list[str] = []
    pos = 0
    for m in _TOKEN_RE.finditer(text):
        if m.lastgroup in _LITERALS:
            start, end = m.span()
            out.append(text[pos:start])
            literal = m.group()
            out.append(_NOT_NEWLINE.sub(" ", literal) if "\n" in literal else " " * (end - start))
            pos = end
    out.append(text[pos:])
    return "".join(out)


def foreign_syntax(text: str) -> list[str]:
    """Names (``family:construct``) of non-BSL constructs found in code outside strings and comments."""
    code = code_only(normalize_newlines(text))
    return [f"{family}:{name}" for family, name, pattern in _FOREIGN_PATTERNS if pattern.search(code)]


_FENCE_RE = re.compile(r"```[^\n]*\n(.*?)(?:```|\Z)", re.S)


def extract_code(text: str) -> tuple[str, bool]:
    """The code of a model answer: the fenced blocks when there are any, else the whole text."""
    blocks = _FENCE_RE.findall(text)
    if blocks:
        return "\n".join(b.strip("\n") for b in blocks), True
    return text, False
