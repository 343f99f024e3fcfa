"""A 1C configuration source tree turned into JSONL training data (what `rwkv1c harvest` runs).

Reads both on-disk layouts:

- the Designer dump (``DumpConfigToFiles``): ``<Type>/<Name>/Ext/ObjectModule.bsl``,
  ``.../Forms/<Form>/Ext/Form/Module.bsl``, ``CommonModules/<Name>/Ext/Module.bsl``, configuration-level
  ``Ext/*Module.bsl``, external data processor and report dumps (``<Name>.xml`` + ``<Name>/Ext/...``);
- 1C:EDT projects: ``src/<Type>/<Name>/ObjectModule.bsl``, ``.../Forms/<Form>/Module.bsl``,
  ``src/CommonModules/<Name>/Module.bsl`` with ``<Name>.mdo``, ``src/Configuration/*Module.bsl``.

``Module.bsl`` is ambiguous (form, common module, web/HTTP service): the folders above it decide.

Every output row is ``{"text": ..., <metadata>}``. Three tasks:

- ``text``: whole modules, or chunks cut at region/method boundaries when a module is over the token
  budget (continued pretraining);
- ``doc2code``: a method's standard doc comment (description, parameters, return value) as the request,
  the method as the answer, in the chat format ``User: ...\\n\\nAssistant: ...``;
- ``complete``: the first lines of a method as the request, the rest of it as the answer.

Instruction rows also carry ``prompt`` and ``response`` so that training can mask the request.
Exact and near-duplicate modules are dropped, a licence header repeated across modules can be stripped,
and the train/validation split is by module with a fixed seed. Output is deterministic: two runs on the
same tree give byte-identical files. A summary (JSON) and a dataset card (Markdown) are written next to
the output.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import zlib
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, NamedTuple

from rwkv1c.data.prompts import render_pair
from rwkv1c.errors import raise_all
from rwkv1c.fsutil import atomic_open, write_json
from rwkv1c.onec import bsl
from rwkv1c.text import normalize_newlines

Encoder = Callable[[Sequence[str]], list[list[int]]]
Layout = Literal["designer", "edt", "other"]

# file name -> module kind (Module.bsl is decided by its folders)
MODULE_FILES: dict[str, str] = {
    "ObjectModule.bsl": "object_module",
    "ManagerModule.bsl": "manager_module",
    "RecordSetModule.bsl": "record_set_module",
    "ValueManagerModule.bsl": "value_manager_module",
    "CommandModule.bsl": "command_module",
    "ManagedApplicationModule.bsl": "managed_application_module",
    "OrdinaryApplicationModule.bsl": "ordinary_application_module",
    "SessionModule.bsl": "session_module",
    "ExternalConnectionModule.bsl": "external_connection_module",
}
# collection folder of Module.bsl -> module kind
_MODULE_OWNERS: dict[str, str] = {
    "CommonModules": "common_module",
    "WebServices": "web_service_module",
    "HTTPServices": "http_service_module",
    "IntegrationServices": "integration_service_module",
    "Bots": "bot_module",
}
_CONFIG_KINDS = {
    "managed_application_module",
    "ordinary_application_module",
    "session_module",
    "external_connection_module",
}
# common module flags in Designer XML (CamelCase) and EDT .mdo (camelCase) -> our names
_CONTEXT_FLAGS: dict[str, str] = {
    "server": "server",
    "servercall": "server_call",
    "clientmanagedapplication": "client",
    "clientordinaryapplication": "client_ordinary",
    "externalconnection": "external_connection",
    "global": "global",
    "privileged": "privileged",
}
_FLAG_RE = re.compile(r"<(?:\w+:)?(\w+)>\s*(true|false|\w+)\s*</", re.IGNORECASE)
_EXTERNAL_RE = re.compile(r"<(?:\w+:)?(ExternalDataProcessor|ExternalReport)\b")
_WORD_RE = re.compile(r"\w+")
_LICENSE_WORDS = re.compile(r"copyright|\(c\)|©|licen[cs]|лиценз|все права|all rights", re.IGNORECASE)

_KIND_RU = {
    "object_module": "модуль объекта",
    "manager_module": "модуль менеджера",
    "record_set_module": "модуль набора записей",
    "value_manager_module": "модуль менеджера значения",
    "command_module": "модуль команды",
    "form_module": "модуль формы",
    "common_module": "общий модуль",
    "managed_application_module": "модуль управляемого приложения",
    "ordinary_application_module": "модуль обычного приложения",
    "session_module": "модуль сеанса",
    "external_connection_module": "модуль внешнего соединения",
    "web_service_module": "модуль веб-сервиса",
    "http_service_module": "модуль HTTP-сервиса",
    "integration_service_module": "модуль сервиса интеграции",
    "bot_module": "модуль бота",
}


@dataclass(frozen=True)
class ModuleInfo:
    """Where a module sits in the configuration. ``path`` is relative to the source folder (POSIX);
    ``key`` is the path from the configuration root, the same whichever folder above it was given."""

    path: str
    layout: Layout
    kind: str
    object_type: str
    object_name: str
    form: str = ""
    command: str = ""
    context: tuple[str, ...] = ()
    key: str = ""

    def describe(self, language: str) -> str:
        """One line naming the module, for instruction prompts."""
        owner = f"{self.object_type}.{self.object_name}" if self.object_type != "Configuration" else ""
        if language == "en":
            text = self.kind.replace("_", " ")
        else:
            text = _KIND_RU.get(self.kind, "модуль")
        parts = [text, owner]
        if self.form:
            parts.append(f"форма {self.form}" if language != "en" else f"form {self.form}")
        if self.command:
            parts.append(f"команда {self.command}" if language != "en" else f"command {self.command}")
        return ", ".join(p for p in parts if p)


@dataclass(frozen=True)
class HarvestSettings:
    """Every knob of a harvest; validated once by ``check``."""

    validation_fraction: float = 0.05
    seed: int = 1234
    max_tokens: int = 4096
    strip_license_header: bool = True
    dedup: bool = True
    near_duplicate_threshold: float = 0.85
    instructions: bool = True
    completions: bool = True
    min_completion_lines: int = 4

    def check(self) -> None:
        problems = []
        if not 0.0 <= self.validation_fraction < 1.0:
            problems.append(f"--validation-fraction must be in [0, 1), got {self.validation_fraction}")
        if self.max_tokens < 64:
            problems.append(f"--max-tokens must be at least 64, got {self.max_tokens}")
        if not 0.0 < self.near_duplicate_threshold <= 1.0:
            problems.append(f"--near-duplicate-threshold must be in (0, 1], got {self.near_duplicate_threshold}")
        if self.min_completion_lines < 2:
            problems.append(f"min_completion_lines must be at least 2, got {self.min_completion_lines}")
        raise_all(problems, "invalid harvest settings")


# -- finding and reading modules ---------------------------------------------------------------------------


def discover(src_dir: Path) -> list[Path]:
    """All ``.bsl`` files under ``src_dir`` (hidden folders skipped), in a stable order."""
    found = []
    for path in src_dir.rglob("*"):
        if path.suffix.lower() != ".bsl" or not path.is_file():
            continue
        rel = path.relative_to(src_dir)
        if any(part.startswith(".") for part in rel.parts[:-1]):
            continue
        found.append(path)
    return sorted(found, key=lambda p: p.relative_to(src_dir).as_posix())


class Source(NamedTuple):
    """A module as read: its text (None when skipped), why it was skipped, control characters removed."""

    text: str | None
    reason: str = ""
    removed: int = 0


# C0 and C1 control characters other than tab and newline: never text in a module (a NUL, an ESC...)
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def read_source(path: Path) -> Source:
    """A module's text with LF newlines, UTF-8 with or without BOM.

    Stray control characters are removed (``removed`` counts them); a file where they are more than 1 % of
    the characters (and more than 8) is binary, not a module, and is skipped like an empty one or one that is
    not UTF-8.
    """
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Source(None, f"not UTF-8 (byte {exc.start})")
    text = normalize_newlines(text)
    text, removed = _CONTROL_RE.subn("", text)
    if removed > max(8, (len(text) + removed) // 100):
        return Source(None, f"binary data ({removed} control characters)")
    if not text.strip():
        return Source(None, "empty")
    return Source(text, "", removed)


def _sniff_external(owner_dir: Path) -> str | None:
    """ExternalDataProcessors / ExternalReports when ``<owner>.xml`` beside the folder says so."""
    xml = owner_dir.parent / f"{owner_dir.name}.xml"
    if not xml.is_file():
        return None
    with open(xml, "rb") as f:
        head = f.read(4096).decode("utf-8", errors="replace")
    m = _EXTERNAL_RE.search(head)
    return (m.group(1) + "s") if m else None


def classify(path: Path, src_dir: Path) -> ModuleInfo:
    """Module kind, owner object, layout and configuration path of one ``.bsl`` file, from its folders."""
    info = _classify(path, src_dir)
    depth = _config_depth(info)
    parts = info.path.split("/")
    return replace(info, key="/".join(parts[-depth:]) if depth else info.path)


_EXTERNAL_TYPES = ("ExternalDataProcessors", "ExternalReports")


def _config_depth(info: ModuleInfo) -> int:
    """How many trailing parts of a module's path lie under the configuration root (0: not known).

    ``<Type>/<Name>/Ext/ObjectModule.bsl`` is 4 in a Designer dump, ``<Type>/<Name>/ObjectModule.bsl`` 3
    in EDT; a dumped external data processor or report has no ``<Type>`` folder.
    """
    if info.layout == "other":
        return 0
    designer = info.layout == "designer"
    external = info.object_type in _EXTERNAL_TYPES
    if info.kind in _CONFIG_KINDS:  # Ext/SessionModule.bsl, Configuration/SessionModule.bsl
        return 2
    if info.kind == "form_module" and info.object_type == "CommonForms":
        return 5 if designer else 3
    if info.kind == "form_module":  # <Type>/<Owner>/Forms/<F>/[Ext/Form/]Module.bsl
        return (7 if designer else 5) - external
    own = 4 if designer else 3
    if info.command and info.object_type != "CommonCommands":  # <Type>/<Owner>/Commands/<C>/...
        return own + 2 - external
    return own - external


def _classify(path: Path, src_dir: Path) -> ModuleInfo:
    rel = path.relative_to(src_dir)
    parts = rel.parts
    name = parts[-1]
    rel_posix = rel.as_posix()

    def part(i: int) -> str:  # a folder counted from the end of the relative path ("" above src_dir)
        return parts[i] if len(parts) >= -i else ""

    if name == "Module.bsl" and part(-2) == "Form" and part(-3) == "Ext":
        # Designer form: <Type>/<Owner>/Forms/<F>/Ext/Form/Module.bsl or CommonForms/<F>/Ext/Form/Module.bsl
        form = part(-4)
        if part(-5) == "CommonForms":
            return ModuleInfo(rel_posix, "designer", "form_module", "CommonForms", form, form=form)
        otype = _sniff_external(path.parents[4]) or part(-7)
        return ModuleInfo(rel_posix, "designer", "form_module", otype, part(-6), form=form)
    designer = part(-2) == "Ext"
    layout: Layout = "designer" if designer else "edt"
    # the object's own folder: <Type>/<Name>/Ext/X.bsl (Designer) or <Type>/<Name>/X.bsl (EDT)
    up = 3 if designer else 2
    folder = path.parents[up - 2]
    owner_name, owner_type = part(-up), part(-up - 1)
    if name == "Module.bsl":
        if not designer and owner_type == "Forms":  # EDT form: <Type>/<Owner>/Forms/<F>/Module.bsl
            return ModuleInfo(rel_posix, layout, "form_module", part(-5), part(-4), form=owner_name)
        if not designer and owner_type == "CommonForms":
            return ModuleInfo(rel_posix, layout, "form_module", "CommonForms", owner_name, form=owner_name)
        kind = _MODULE_OWNERS.get(owner_type, "module")
        if kind == "module":
            layout = "other"
        return ModuleInfo(rel_posix, layout, kind, owner_type, owner_name, context=_context(kind, folder))
    kind = MODULE_FILES.get(name, "other")
    if kind == "other":
        layout = "other"
    if kind in _CONFIG_KINDS:
        return ModuleInfo(rel_posix, layout, kind, "Configuration", "Configuration")
    if kind == "command_module" and owner_type == "Commands":  # <Type>/<Owner>/Commands/<C>/...
        otype = _sniff_external(folder.parent.parent) or part(-up - 3)
        return ModuleInfo(rel_posix, layout, kind, otype, part(-up - 2), command=owner_name)
    if kind == "command_module":  # CommonCommands/<C>/...
        return ModuleInfo(rel_posix, layout, kind, owner_type, owner_name, command=owner_name)
    otype = _sniff_external(folder) or owner_type
    return ModuleInfo(rel_posix, layout, kind, otype, owner_name)


def _context(kind: str, folder: Path) -> tuple[str, ...]:
    """Execution context of a common module from its Designer XML or EDT .mdo (empty if unknown)."""
    if kind != "common_module":
        return ()
    for meta in (folder.parent / f"{folder.name}.xml", folder / f"{folder.name}.mdo"):
        if meta.is_file():
            text = meta.read_text(encoding="utf-8-sig", errors="replace")
            flags: list[str] = []
            reuse = ""
            for tag, value in _FLAG_RE.findall(text):
                key = tag.lower()
                if key in _CONTEXT_FLAGS and value.lower() == "true":
                    flags.append(_CONTEXT_FLAGS[key])
                elif key == "returnvaluesreuse" and value.lower() not in ("dontuse", "false"):
                    reuse = f"reuse_{value}"
            ordered = [f for f in _CONTEXT_FLAGS.values() if f in flags]
            return (*ordered, reuse) if reuse else tuple(ordered)
    return ()


# -- licence headers and duplicates ------------------------------------------------------------------------


@dataclass(frozen=True)
class LeadingComment:
    """The ``//`` block at the top of a module. Lines are 0-based: ``start`` is its first, ``end`` the one after."""

    start: int
    end: int
    text: str  # its lines, trailing spaces removed (quoted in the card)
    key: str  # the text with years, spacing and separator lengths normalised: what repeats across modules


_SEPARATOR_RE = re.compile(r"/{4,}")  # a line of slashes frames a header
_METHOD_START_RE = re.compile(
    r"\s*(?:&|(?:асинх\s+|async\s+)?(?:процедура|функция|procedure|function)\b)", re.IGNORECASE
)
_YEAR_RE = re.compile(r"(?<!\d)(?:19|20)\d\d(?!\d)")


def leading_comment(text: str) -> LeadingComment | None:
    """The block of ``//`` lines at the top of a module, after any blank lines (None if there is none).

    A block directly above a method header or directive is that method's doc comment, not a header (None).
    A block that goes on past a separator line (``////...``) closing a licence notice is cut there: what
    follows, without a blank line, is the doc comment of the first method, not part of the header.
    """
    lines = text.split("\n")
    start = 0
    while start < len(lines) and not lines[start].strip():
        start += 1
    end, licence_seen = start, False
    while end < len(lines) and lines[end].strip().startswith("//"):
        stripped = lines[end].strip()
        end += 1
        if licence_seen and _SEPARATOR_RE.fullmatch(stripped):
            break
        licence_seen = licence_seen or bool(_LICENSE_WORDS.search(stripped))
    if end == start or (end < len(lines) and _METHOD_START_RE.match(lines[end])):
        return None  # nothing, or the doc comment of the module's first method
    block = [line.rstrip() for line in lines[start:end]]
    key_lines = []
    for line in block:
        line = " ".join(line.split())
        key_lines.append("//" if _SEPARATOR_RE.fullmatch(line) else _YEAR_RE.sub("YYYY", line))
    return LeadingComment(start, end, "\n".join(block), "\n".join(key_lines))


def repeated_headers(texts: Sequence[str]) -> list[str]:
    """Keys (``LeadingComment.key``) of the leading comments that look like a licence and repeat.

    A header counts as repeated when its key, which ignores the year, the spacing and the length of the
    separator lines, starts at least 1 % of the modules (and at least two).
    """
    counts = Counter(c.key for c in map(leading_comment, texts) if c is not None)
    need = max(2, len(texts) // 100)
    return sorted(k for k, n in counts.items() if n >= need and _LICENSE_WORDS.search(k))


def strip_header(text: str, headers: Collection[str]) -> tuple[str, int, str]:
    """The text without a leading header whose key is in ``headers`` and the blank lines around it.

    Returns (text, lines removed, the header as written); (text, 0, "") when there is none, so that line
    numbers of the rest can still point into the source file.
    """
    head = leading_comment(text)
    if head is None or head.key not in headers:
        return text, 0, ""
    lines = text.split("\n")
    end = head.end
    while end < len(lines) and not lines[end].strip():
        end += 1
    return "\n".join(lines[end:]), end, head.text


def _shingles(text: str, word_ids: dict[str, int], k: int = 5) -> Any:
    """Sorted unique 64-bit hashes of the word k-grams of a text (numpy array).

    ``word_ids`` caches the crc32 of each word (a stable hash, unlike ``hash()``).
    """
    import numpy as np

    ids_list = []
    for w in _WORD_RE.findall(text.lower()):
        word_id = word_ids.get(w)
        if word_id is None:
            word_id = word_ids[w] = zlib.crc32(w.encode())
        ids_list.append(word_id)
    ids = np.array(ids_list, dtype=np.uint64)
    if len(ids) < k:
        return np.unique(ids)
    n = len(ids) - k + 1
    grams = np.zeros(n, dtype=np.uint64)
    for j in range(k):
        grams = grams * np.uint64(1_000_003) + ids[j : j + n]  # wraps mod 2**64, deterministic
    return np.unique(grams)


class NearDuplicateIndex:
    """MinHash + LSH over word 5-grams; candidates are confirmed with the exact Jaccard similarity."""

    def __init__(self, threshold: float, n_perm: int = 64, bands: int = 16, seed: int = 0) -> None:
        import numpy as np

        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, 2**63, size=n_perm, dtype=np.uint64) | np.uint64(1)
        self.b = rng.integers(0, 2**63, size=n_perm, dtype=np.uint64)
        self.threshold = threshold
        self.bands = bands
        self.rows = n_perm // bands
        self.buckets: dict[bytes, list[int]] = {}
        self.sets: list[Any] = []
        self.labels: list[str] = []
        self.word_ids: dict[str, int] = {}

    def add(self, text: str, label: str) -> tuple[str, float] | None:
        """Index ``text`` under ``label``; return (label, similarity) of an earlier near-duplicate instead."""
        import numpy as np

        sh = _shingles(text, self.word_ids)
        if len(sh) < 8:  # too short to judge; exact duplicates are caught elsewhere
            return None
        sig = ((sh[:, None] * self.a[None, :] + self.b[None, :]) >> np.uint64(32)).min(axis=0)
        keys = [bytes([i]) + sig[i * self.rows : (i + 1) * self.rows].tobytes() for i in range(self.bands)]
        candidates = sorted({c for key in keys for c in self.buckets.get(key, ())})
        for c in candidates:
            other = self.sets[c]
            inter = len(np.intersect1d(sh, other, assume_unique=True))
            sim = inter / (len(sh) + len(other) - inter)
            if sim >= self.threshold:
                return self.labels[c], sim
        index = len(self.sets)
        self.sets.append(sh)
        self.labels.append(label)
        for key in keys:
            self.buckets.setdefault(key, []).append(index)
        return None


def in_validation(path: str, seed: int, fraction: float) -> bool:
    """Stable split by module: a hash of (seed, path) below ``fraction`` means validation."""
    return _unit_hash(f"{seed}:{path}") < fraction


def _unit_hash(key: str) -> float:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


# -- samples -----------------------------------------------------------------------------------------------


def _chat(user: str, answer: str) -> str:
    """The text ``User: ...\\n\\nAssistant: ...`` in the chat format (as `prepare` renders it)."""
    return "".join(text for text, _ in render_pair(user, answer))


def _method_code(parsed: bsl.ParsedModule, m: bsl.Method, with_doc: bool) -> str:
    first = m.start_line if with_doc else m.header_line - len(m.directives)
    return parsed.segment(first, m.end_line).strip("\n")


def _signature(m: bsl.Method) -> str:
    return f"{m.name}({m.params})"


_DOC_PROMPT_WORDS = {
    "en": (
        "exported ",
        "function",
        "procedure",
        "Write a 1C:Enterprise",
        "Compilation directive: ",
        "Parameters:",
        "Returns:",
    ),
    "ru": (
        "экспортную ",
        "функцию",
        "процедуру",
        "Напиши на 1С",
        "Директива компиляции: ",
        "Параметры:",
        "Возвращаемое значение:",
    ),
}


def doc_prompt(info: ModuleInfo, m: bsl.Method, doc: bsl.DocComment) -> str:
    """The request of a doc2code sample, built from the doc comment (Russian or English)."""
    lang = "en" if doc.language == "en" else "ru"
    exported, function, procedure, request, directive, params, returns = _DOC_PROMPT_WORDS[lang]
    kind = (exported if m.export else "") + (function if m.kind == "function" else procedure)
    lines = [f"{request} {kind} {_signature(m)} ({info.describe(lang)})."]
    if m.directives:
        lines.append(directive + " ".join(m.directives))
    lines.append(doc.description)
    if doc.params:
        lines += [params, doc.params]
    if doc.returns:
        lines += [returns, doc.returns]
    return "\n".join(line.rstrip() for line in lines if line.strip())


def _meta(info: ModuleInfo, task: str) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "task": task,
        "source": info.path,
        "module_kind": info.kind,
        "object_type": info.object_type,
        "object_name": info.object_name,
    }
    if info.form:
        meta["form"] = info.form
    if info.command:
        meta["command"] = info.command
    if info.context:
        meta["context"] = list(info.context)
    return meta


def chunk_ranges(parsed: bsl.ParsedModule, encode: Encoder, budget: int) -> list[tuple[int, int]]:
    """Line ranges (1-based, inclusive) of the text samples of a module, each under ``budget`` tokens.

    A module that fits is one range. Otherwise it is cut at region and method boundaries and the pieces
    are packed greedily; a single method over the budget is cut between lines.
    """
    n = len(parsed.lines)
    cuts = {1}
    for m in parsed.methods:
        cuts.update((m.start_line, m.end_line + 1))
    for r in parsed.regions:
        cuts.update((r.start_line, r.end_line + 1))
    edges = [*sorted(c for c in cuts if 1 <= c <= n), n + 1]
    segments = [(edges[i], edges[i + 1] - 1) for i in range(len(edges) - 1)]
    counts = [len(ids) + 1 for ids in encode([parsed.segment(a, b) for a, b in segments])]
    pieces: list[tuple[int, int, int]] = []
    for (a, b), count in zip(segments, counts, strict=True):
        if count <= budget:
            pieces.append((a, b, count))
            continue
        line_counts = [len(ids) + 1 for ids in encode(parsed.lines[a - 1 : b])]
        start, total = a, 0
        for i, c in enumerate(line_counts):
            if total and total + c > budget:
                pieces.append((start, a + i - 1, total))
                start, total = a + i, 0
            total += c
        pieces.append((start, b, total))
    ranges: list[tuple[int, int]] = []
    start, end, total = pieces[0][0], pieces[0][1], pieces[0][2]
    for a, b, count in pieces[1:]:
        if total + count > budget:
            ranges.append((start, end))
            start, total = a, 0
        end, total = b, total + count
    ranges.append((start, end))
    return ranges


_PP_BALANCE = {"если": 1, "if": 1, "конецесли": -1, "endif": -1, "область": 1, "region": 1, "конецобласти": -1,
               "endregion": -1, "вставка": 1, "insert": 1, "конецвставки": -1, "endinsert": -1, "удаление": 1,
               "delete": 1, "конецудаления": -1, "enddelete": -1}  # fmt: skip


def _self_contained(parsed: bsl.ParsedModule, m: bsl.Method, problem_lines: set[int]) -> bool:
    """A method that parses on its own: no problem inside it, preprocessor blocks opened and closed in it."""
    if any(m.start_line <= line <= m.end_line for line in problem_lines):
        return False
    depth = 0
    for line in parsed.lines[m.start_line - 1 : m.end_line]:
        stripped = line.lstrip()
        if stripped.startswith("#"):
            word = _WORD_RE.match(stripped[1:].lstrip())
            depth += _PP_BALANCE.get(word.group().lower(), 0) if word else 0
            if depth < 0:
                return False
    return depth == 0


def _region_at(parsed: bsl.ParsedModule, line: int) -> str:
    name = ""
    for r in parsed.regions:  # sorted by start; the innermost open region wins
        if r.start_line <= line <= r.end_line:
            name = r.name
    return name


def module_samples(
    info: ModuleInfo,
    text: str,
    parsed: bsl.ParsedModule,
    settings: HarvestSettings,
    encode: Encoder,
    line_offset: int = 0,
) -> tuple[list[dict[str, Any]], Counter[str]]:
    """All rows of one module, and counters for the summary.

    ``line_offset`` is how many lines of the source file precede ``text`` (a removed licence header), so
    that the ``lines`` of a row point into the file ``source`` names.
    """
    stats: Counter[str] = Counter()
    rows: list[dict[str, Any]] = []
    whole_tokens = len(encode([text])[0])
    if whole_tokens + 1 <= settings.max_tokens:
        ranges = [(1, len(parsed.lines))]
    else:
        ranges = chunk_ranges(parsed, encode, settings.max_tokens)
    for a, b in ranges:
        chunk = parsed.segment(a, b).strip("\n")
        if not chunk.strip():
            continue
        row = {"text": chunk, **_meta(info, "text")}
        if len(ranges) > 1:
            while not parsed.lines[a - 1]:  # the blank lines stripped off the chunk are not in it
                a += 1
            while not parsed.lines[b - 1]:
                b -= 1
            row["region"] = _region_at(parsed, a)
            row["lines"] = [a + line_offset, b + line_offset]
        rows.append(row)
    module_language, _ = bsl.keyword_language(parsed)
    problem_lines = {p.line for p in parsed.problems}
    code_lines = bsl.code_only(text).split("\n") if settings.completions else []
    for m in parsed.methods:
        stats["methods"] += 1
        code = _method_code(parsed, m, with_doc=False)
        self_contained = _self_contained(parsed, m, problem_lines)
        if not self_contained:
            stats["methods_not_self_contained"] += 1
        doc = bsl.parse_doc_comment(m.doc) if m.doc else None
        standard = doc is not None and bsl.is_standard_doc(doc, m)
        if standard:
            stats["methods_with_standard_doc"] += 1
        if settings.instructions and standard and self_contained:
            assert doc is not None
            user = doc_prompt(info, m, doc)
            full = _chat(user, code)
            rows.append(
                {
                    "text": full,
                    **_meta(info, "doc2code"),
                    "method": m.name,
                    "language": doc.language,
                    "prompt": user,
                    "response": code,
                }
            )
        if settings.completions and self_contained:
            completion = _completion_row(info, parsed, code_lines, m, module_language, settings)
            if completion is not None:
                rows.append(completion)
    kept = []
    for row, ids in zip(rows, encode([r["text"] for r in rows]), strict=True):
        row["tokens"] = len(ids)
        limit = settings.max_tokens if row["task"] != "complete" else settings.max_tokens // 4
        if row["tokens"] > limit:
            stats[f"{row['task']}_over_budget"] += 1
            continue
        stats[f"{row['task']}_samples"] += 1
        kept.append(row)
    return kept, stats


_OPENERS_END = re.compile(r"(;|\b(тогда|цикл|иначе|попытка|исключение|then|do|else|try|except))\s*$", re.IGNORECASE)


def statement_starts(code_lines: list[str], m: bsl.Method) -> list[int]:
    """Body lines of a method where a new statement begins (never inside a string or an expression).

    ``code_lines`` are the module's lines with literals and comments blanked (``bsl.code_only``).
    """
    first = m.body_line
    code = code_lines[first - 1 : m.end_line]
    starts = []
    ends_statement = True  # the header ends the declaration
    for i, line in enumerate(code[:-1]):  # the end keyword line is never a start
        stripped = line.strip()
        if not stripped:
            continue
        if ends_statement and not stripped.startswith("|"):
            starts.append(first + i)
        ends_statement = bool(_OPENERS_END.search(stripped)) or stripped.startswith(("#", "&"))
    return starts


def _completion_row(
    info: ModuleInfo,
    parsed: bsl.ParsedModule,
    code_lines: list[str],
    m: bsl.Method,
    language: str,
    settings: HarvestSettings,
) -> dict[str, Any] | None:
    starts = statement_starts(code_lines, m)
    if len(starts) < settings.min_completion_lines:
        return None
    share = 0.25 + 0.35 * _unit_hash(f"{settings.seed}:{info.key}:{m.name}:{m.header_line}")
    cut_line = starts[max(1, min(len(starts) - 1, round(len(starts) * share)))]  # first line of the answer
    first = m.header_line - len(m.directives)
    prefix = parsed.segment(first, cut_line - 1).strip("\n")
    answer = parsed.segment(cut_line, m.end_line).rstrip("\n")
    if language == "en":
        user = f"Complete this 1C:Enterprise method ({info.describe('en')}):\n{prefix}"
    else:
        user = f"Допиши метод на 1С ({info.describe('ru')}):\n{prefix}"
    full = _chat(user, answer)
    return {
        "text": full,
        **_meta(info, "complete"),
        "method": m.name,
        "language": "en" if language == "en" else "ru",
        "prompt": user,
        "response": answer,
    }


# -- the whole harvest -------------------------------------------------------------------------------------


@dataclass
class HarvestResult:
    """Rows per split, the summary and the dataset card (Markdown)."""

    train: list[dict[str, Any]] = field(default_factory=list)
    validation: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    card: str = ""


Kept = tuple[ModuleInfo, str, int]  # a module, its text after the licence header, lines removed above it


def _read_modules(
    src_dir: Path, paths: Sequence[Path], skipped: list[dict[str, str]], progress: bool
) -> tuple[list[tuple[ModuleInfo, str, int]], list[dict[str, Any]]]:
    """Every readable module as (info, text, bytes on disk), and the modules that had control characters
    removed; appends what cannot be read to ``skipped``."""
    modules: list[tuple[ModuleInfo, str, int]] = []
    cleaned: list[dict[str, Any]] = []
    for path in _progress(paths, progress, "read"):
        source = read_source(path)
        rel = path.relative_to(src_dir).as_posix()
        if source.text is None:
            skipped.append({"path": rel, "reason": source.reason})
            continue
        if source.removed:
            cleaned.append({"path": rel, "characters": source.removed})
        modules.append((classify(path, src_dir), source.text, path.stat().st_size))
    return modules, cleaned


def _select_modules(
    modules: Sequence[tuple[ModuleInfo, str, int]],
    headers: Collection[str],
    settings: HarvestSettings,
    skipped: list[dict[str, str]],
) -> tuple[list[Kept], list[dict[str, Any]], dict[str, Any]]:
    """Licence headers stripped, empty and (near-)duplicate modules skipped. Returns the kept modules,
    the manifest of every module and what was stripped (modules, header versions); appends to `skipped`."""
    exact: dict[str, str] = {}
    near = NearDuplicateIndex(settings.near_duplicate_threshold, seed=settings.seed) if settings.dedup else None
    kept: list[Kept] = []
    manifest: list[dict[str, Any]] = []
    versions: Counter[str] = Counter()
    for info, text, _size in modules:
        stripped, offset, header = strip_header(text, headers)
        if header:
            versions[header] += 1
        entry: dict[str, Any] = {"path": info.path, "kind": info.kind, "layout": info.layout}
        manifest.append(entry)
        reason = ""
        if not stripped.strip():
            reason = "empty after licence header removal"
        elif near is not None:
            digest = hashlib.sha256(stripped.strip().encode()).hexdigest()
            if digest in exact:
                reason = f"duplicate of {exact[digest]}"
            else:
                exact[digest] = info.path
                hit = near.add(stripped, info.path)
                if hit is not None:
                    reason = f"near-duplicate of {hit[0]} (jaccard {hit[1]:.2f})"
        entry["status"] = "skipped" if reason else "kept"
        if reason:
            skipped.append({"path": info.path, "reason": reason})
        else:
            kept.append((info, stripped, offset))
    stripped_headers = {"modules": sum(versions.values()), "headers": sorted(versions)}
    return kept, manifest, stripped_headers


def validation_paths(paths: Sequence[str], settings: HarvestSettings) -> set[str]:
    """The modules held out for validation: a seeded hash of each path, at least one and never all.

    ``harvest_tree`` passes ``ModuleInfo.key`` (the path from the configuration root), so the split is the
    same whichever folder above the configuration is harvested.
    """
    unique = sorted(set(paths))
    if settings.validation_fraction <= 0 or len(unique) < 2:
        return set()
    held = {p for p in unique if in_validation(p, settings.seed, settings.validation_fraction)}
    if not held:  # a tiny tree: still hold one module out
        held = {min(unique, key=lambda p: _unit_hash(f"{settings.seed}:{p}"))}
    if len(held) == len(unique):
        held.discard(max(held, key=lambda p: _unit_hash(f"{settings.seed}:{p}")))
    return held


def default_encoder() -> Encoder:
    """Batch token encoder of the RWKV World vocabulary."""
    from rwkv1c.model.tokenizer import get_tokenizer

    tok = get_tokenizer()
    return lambda texts: tok.encode_batch(list(texts))


def harvest_tree(
    src_dir: Path,
    settings: HarvestSettings,
    *,
    encode: Encoder | None = None,
    split: bool = True,
    progress: bool = False,
) -> HarvestResult:
    """Read every module under ``src_dir`` and build the rows, summary and card (nothing is written)."""
    settings.check()
    encode = encode or default_encoder()
    paths = discover(src_dir)
    skipped: list[dict[str, str]] = []
    modules, cleaned = _read_modules(src_dir, paths, skipped, progress)
    headers = repeated_headers([t for _, t, _ in modules]) if settings.strip_license_header else []
    kept, manifest, stripped_headers = _select_modules(modules, headers, settings, skipped)
    val_keys = validation_paths([i.key for i, _, _ in kept], settings) if split else set()

    result = HarvestResult()
    stats: Counter[str] = Counter()
    problem_modules: list[dict[str, Any]] = []
    by_path = {e["path"]: e for e in manifest}
    for info, text, offset in _progress(kept, progress, "samples"):
        parsed = bsl.parse_module(text)
        if parsed.problems:
            problem_modules.append(
                {"path": info.path, "problems": [str(_shift(p, offset)) for p in parsed.problems[:5]]}
            )
        rows, module_stats = module_samples(info, text, parsed, settings, encode, offset)
        stats.update(module_stats)
        held = info.key in val_keys
        (result.validation if held else result.train).extend(rows)
        by_path[info.path]["split"] = "validation" if held else "train"
        by_path[info.path]["methods"] = len(parsed.methods)

    removed = _drop_duplicate_rows(result)
    for rows in (result.train, result.validation):
        for row in rows:
            by_path[row["source"]]["samples"] = by_path[row["source"]].get("samples", 0) + 1
    reasons = Counter(s["reason"].split(" of ")[0].split(" (")[0] for s in skipped)
    result.summary = {
        "source": str(src_dir),
        "settings": asdict(settings),
        "files_found": len(paths),
        "modules_read": len(modules),
        "modules_kept": len(kept),
        "modules_with_structural_problems": len(problem_modules),
        "bytes_read": sum(size for _, _, size in modules),
        "layouts": dict(sorted(Counter(i.layout for i, _, _ in modules).items())),
        "module_kinds": dict(sorted(Counter(i.kind for i, _, _ in modules).items())),
        "methods": stats["methods"],
        "methods_with_standard_doc": stats["methods_with_standard_doc"],
        "methods_not_self_contained": stats["methods_not_self_contained"],
        "samples_built": {task: stats[f"{task}_samples"] for task in ("text", "doc2code", "complete")},
        "samples_over_token_budget": {task: stats[f"{task}_over_budget"] for task in ("doc2code", "complete")},
        "duplicate_rows_removed": dict(sorted(removed.items())),
        "train": _tally(result.train),
        "validation": _tally(result.validation),
        "license_headers_removed": stripped_headers,
        "control_characters_removed": {
            "modules": len(cleaned),
            "characters": sum(c["characters"] for c in cleaned),
            "files": cleaned,
        },
        "skipped_by_reason": dict(sorted(reasons.items())),
        "skipped": skipped,
        "structural_problems": problem_modules,
        "modules": manifest,
    }
    result.card = dataset_card(result.summary)
    return result


def _shift(problem: bsl.Problem, offset: int) -> bsl.Problem:
    """A problem found in a module's text after its licence header, with the line of the source file."""
    return bsl.Problem(problem.line + offset, problem.message)


def _drop_duplicate_rows(result: HarvestResult) -> Counter[str]:
    """Exact duplicate rows removed (the first one wins; validation never repeats a training row); per task."""
    seen: set[str] = set()
    removed: Counter[str] = Counter()
    for name in ("train", "validation"):
        unique = []
        for row in getattr(result, name):
            digest = hashlib.sha256(row["text"].encode()).hexdigest()
            if digest in seen:
                removed[row["task"]] += 1
                continue
            seen.add(digest)
            unique.append(row)
        setattr(result, name, unique)
    return removed


def _tally(rows: list[dict[str, Any]]) -> dict[str, Any]:
    tasks = Counter(r["task"] for r in rows)
    return {
        "rows": len(rows),
        "tokens": sum(r["tokens"] for r in rows),
        "by_task": dict(sorted(tasks.items())),
        "modules": len({r["source"] for r in rows}),
    }


def _progress(items: Sequence[Any], enabled: bool, desc: str) -> Any:
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="module", file=sys.stderr, leave=False)


def dataset_card(summary: dict[str, Any]) -> str:
    """A Markdown description of the harvested data set."""
    s = summary
    tr, va = s["train"], s["validation"]
    lines = [
        "# 1C:Enterprise (BSL) data set",
        "",
        f"Harvested by `rwkv1c harvest` from `{s['source']}`.",
        "",
        "## Contents",
        "",
        "| split | rows | tokens | modules | text | doc2code | complete |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, t in (("train", tr), ("validation", va)):
        by = t["by_task"]
        lines.append(
            f"| {name} | {t['rows']} | {t['tokens']} | {t['modules']} | {by.get('text', 0)} | "
            f"{by.get('doc2code', 0)} | {by.get('complete', 0)} |"
        )
    lines += [
        "",
        f"- Files found: {s['files_found']}; modules read: {s['modules_read']}; kept after de-duplication: "
        f"{s['modules_kept']}; methods: {s['methods']} ({s['methods_with_standard_doc']} with a standard doc "
        "comment).",
        f"- Skipped: {', '.join(f'{k}: {v}' for k, v in s['skipped_by_reason'].items()) or 'none'}.",
        f"- Module kinds: {', '.join(f'{k}: {v}' for k, v in s['module_kinds'].items())}.",
        f"- Modules with structural problems reported by the checker: {s['modules_with_structural_problems']}.",
        "",
        "## Format",
        "",
        "One JSON object per line. `text` is the training text; `task` says what it is:",
        "",
        "- `text`: a whole module, or a chunk of one cut at region/method boundaries (`lines`: its first and",
        "  last line in the source file; `region`);",
        "- `doc2code`: `User: <request built from the doc comment>\\n\\nAssistant: <the method>`;",
        "- `complete`: `User: <first lines of a method>\\n\\nAssistant: <the rest of it>`.",
        "",
        "Instruction rows also carry `prompt` (the request) and `response` (the code): `rwkv1c prepare` renders",
        "those itself and trains on the answers only.",
        "Every row names its `source` module, `module_kind`, `object_type`, `object_name` and, where known, `form`,",
        "`command`, `context` (execution context of a common module), `method`, and its length in `tokens`",
        "(RWKV World tokenizer).",
        "",
        "## Processing",
        "",
        f"- Split by module with seed {s['settings']['seed']} (validation fraction "
        f"{s['settings']['validation_fraction']}): no module has rows in both splits; a row identical to a",
        "  training row is removed from validation.",
        f"- Exact and near-duplicate modules removed: {s['settings']['dedup']} (word 5-gram Jaccard >= "
        f"{s['settings']['near_duplicate_threshold']}).",
        f"- Token budget per text row: {s['settings']['max_tokens']}.",
        f"- Licence header stripped from {s['license_headers_removed']['modules']} modules (a leading comment "
        "block that names a licence and repeats, up to its year, in at least 1 % of the modules).",
        f"- Modules with control characters (NUL and the like) removed: {s['control_characters_removed']['modules']}"
        f" ({s['control_characters_removed']['characters']} characters); a file where they are more than 1 % of"
        " the text is skipped as binary data.",
        "",
        "## Licence",
        "",
        "The rows are derived from the source code above and are covered by its licence. Check it before you",
        "share the data set or a model trained on it.",
    ]
    headers = s["license_headers_removed"]["headers"]
    if headers:
        lines += ["", "Headers removed from the modules (every version), kept here for attribution:", ""]
        for h in headers:
            lines += ["```", h, "```"]
    return "\n".join(lines) + "\n"


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Rows as JSON lines (UTF-8, LF), atomically."""
    with atomic_open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def side_paths(output: Path) -> tuple[Path, Path]:
    """Where the summary and the dataset card of ``output`` go."""
    stem = output.name[: -len(output.suffix)] if output.suffix else output.name
    return output.with_name(f"{stem}.summary.json"), output.with_name(f"{stem}.card.md")


def write_outputs(result: HarvestResult, output: Path, validation_output: Path | None) -> None:
    """Write the rows, the summary and the card."""
    write_jsonl(output, result.train)
    if validation_output is not None:
        write_jsonl(validation_output, result.validation)
    summary_path, card_path = side_paths(output)
    write_json(summary_path, result.summary)
    with atomic_open(card_path, "w", encoding="utf-8", newline="\n") as f:
        f.write(result.card)
