"""JSONL to a binidx token dataset for training (what `rwkv1c prepare` runs).

Each line is one document, in one of three shapes:

- ``{"text": "..."}``: plain text (code), trained in full;
- ``{"prompt": "...", "response": "...", "system": "..." (optional)}``: one instruction turn;
- ``{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}, ...]}``.

Instruction rows are rendered with the chat format of `rwkv1c.data.prompts` and carry a loss mask (the
prompt is context only, the answers are trained), written beside the dataset as ``PREFIX.mask``.
Token 0 (end of document) closes every document and is trained, so the model learns to stop.

The file is read in batches of lines, tokenised by worker processes in order, and streamed to disk:
memory stays constant whatever the file size. By default any bad line stops the run and nothing is
written; every bad line is listed with its line number.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import time
from collections import deque
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from rwkv1c.errors import UserError, raise_all
from rwkv1c.fsutil import output_folder_problem

if TYPE_CHECKING:
    import numpy as np

BAD_LINES_SHOWN = 20
UTF8_BOM = b"\xef\xbb\xbf"
# A JSON escape of \ud800..\udfff (also matches after an escaped backslash: only costs a closer look).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_JSON_TYPE = {
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    list: "an array",
    dict: "an object",
    type(None): "null",
}


@dataclass(frozen=True)
class PrepareSettings:
    """Validated settings of one `prepare` run."""

    input: Path
    prefix: Path  # the dataset prefix, ending in _text_document
    skip_bad: bool = False
    workers: int = 2
    batch_bytes: int = 1 << 20  # lines per task: about this many bytes


@dataclass
class PrepareStats:
    """What a run read and wrote."""

    prefix: Path
    has_mask: bool = False
    documents: int = 0
    text_rows: int = 0
    instruction_rows: int = 0
    tokens: int = 0
    input_bytes: int = 0
    input_lines: int = 0
    output_bytes: int = 0
    bad_lines: int = 0
    bad_examples: list[str] = field(default_factory=list)
    length_summary: dict[str, int] = field(default_factory=dict)  # tokens per document: min, median, p95, max
    seconds: float = 0.0


class BatchResult(NamedTuple):
    """One batch of lines, tokenised: documents back to back, their sizes and (maybe) a loss mask."""

    tokens: np.ndarray  # uint16, every document followed by token 0
    sizes: np.ndarray  # int64, tokens per document
    mask: np.ndarray | None  # uint8 per token (1 = trained); None when the batch holds only text rows
    errors: list[tuple[int, str]]  # (line number, reason)
    text_rows: int
    instruction_rows: int
    lines: int
    bytes: int


class RowError(ValueError):
    """A line that cannot become a document; the message is the reason."""


def output_prefix(output: str) -> Path:
    """``data/x`` -> ``data/x_text_document``; a name already ending in it (or in .bin/.idx) is kept."""
    from rwkv1c.data.binidx import TEXT_DOCUMENT_SUFFIX, split_prefix

    path = split_prefix(output)
    return path if path.name.endswith(TEXT_DOCUMENT_SUFFIX) else path.with_name(path.name + TEXT_DOCUMENT_SUFFIX)


def setup(input: Path, output: str, *, skip_bad: bool = False, workers: int = 2) -> PrepareSettings:
    """Check the arguments (every problem at once) and resolve the output prefix."""
    problems: list[str] = []
    input = Path(input)
    if not input.exists():
        problems.append(f"input file {input} does not exist")
    elif not input.is_file():
        problems.append(f"input {input} is not a file")
    elif input.stat().st_size == 0:
        problems.append(f"input file {input} is empty (0 bytes); it needs one JSON object per line")
    else:
        with open(input, "rb") as f:
            if b"\0" in f.read(1 << 16):  # JSON text never holds a NUL byte; a checkpoint or archive does
                problems.append(f"input {input} is a binary file, not JSONL text (one JSON object per line)")
    if not output or output.endswith(("/", os.sep)) or Path(output).is_dir():
        problems.append(f"--output {output!r} must be a file prefix such as data/bsl, not a folder")
    elif (why := output_folder_problem(output)) is not None:
        problems.append(f"--output {output}: {why}")
    if workers < 1:
        problems.append(f"--workers must be at least 1, got {workers}")
    raise_all(problems, "cannot prepare the dataset", hint="usage: rwkv1c prepare INPUT.jsonl --output data/NAME")
    return PrepareSettings(input=input, prefix=output_prefix(output), skip_bad=skip_bad, workers=workers)


def _json_type(value: Any) -> str:
    return _JSON_TYPE.get(type(value), type(value).__name__)


def parse_row(line: bytes) -> tuple[list[tuple[str, bool]], bool]:
    """One JSONL line -> (segments of (text, trainable), is_instruction). Raises RowError with the reason."""
    from rwkv1c.data.prompts import render_messages, render_pair

    try:
        decoded = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RowError(f"invalid UTF-8 (byte {exc.start + 1} of the line)") from None
    try:
        row = json.loads(decoded)
    except json.JSONDecodeError as exc:
        raise RowError(f"malformed JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(row, dict):
        raise RowError(f"expected a JSON object, got {_json_type(row)}")
    # A row may carry its rendered 'text' beside 'prompt' + 'response' (as `harvest` writes instruction
    # rows): the pair wins, so that the prompt is masked.
    has_pair = "prompt" in row or "response" in row
    shapes = [k for k in ("messages",) if k in row] + (["prompt/response"] if has_pair else [])
    if not shapes and "text" in row:
        shapes.append("text")
    if len(shapes) != 1:
        what = "has " + " and ".join(repr(s) for s in shapes) if shapes else "has none"
        raise RowError(f"needs exactly one of 'text', 'prompt' + 'response' or 'messages'; it {what}")
    try:
        if shapes == ["text"]:
            text = row["text"]
            if not isinstance(text, str):
                raise RowError(f"'text' must be a string, got {_json_type(text)}")
            if not text or text.isspace():  # (not .strip(): no copy of a large text)
                raise RowError("'text' is empty")
            segments, instruction = [(text, True)], False
        elif "messages" in row:
            segments, instruction = render_messages(row["messages"]), True
        else:
            missing = [k for k in ("prompt", "response") if k not in row]
            if missing:
                raise RowError(f"'prompt' and 'response' go together; '{missing[0]}' is missing")
            segments, instruction = render_pair(row["prompt"], row["response"], row.get("system")), True
    except RowError:
        raise
    except (TypeError, ValueError) as exc:
        raise RowError(str(exc)) from None
    # Strict UTF-8 decoding rules out encoded surrogates; only a JSON escape such as \ud800 can make one.
    if _SURROGATE_ESCAPE.search(line):
        for text, _ in segments:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise RowError("contains an unpaired surrogate escape (\\ud800..\\udfff), not valid text") from None
    return segments, instruction


def _init_worker() -> None:
    import signal

    from rwkv1c.model.tokenizer import get_tokenizer

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is handled once, by the main process
    get_tokenizer()  # build it now (a no-op when inherited through fork), while the first batch is read


def encode_lines(first_line: int, lines: list[bytes], tokenize: bool = True, encode_batch: bool = True) -> BatchResult:
    """Parse, render and tokenise a batch of JSONL lines (line numbers start at ``first_line``)."""
    import numpy as np

    from rwkv1c.model.tokenizer import END_OF_DOC, get_tokenizer

    docs: list[list[tuple[str, bool]]] = []
    errors: list[tuple[int, str]] = []
    text_rows = instruction_rows = 0
    for k, raw in enumerate(lines):
        if first_line + k == 1 and raw.startswith(UTF8_BOM):
            raw = raw[len(UTF8_BOM) :]  # a file saved by Windows Notepad
        if not raw or raw.isspace():
            continue  # blank lines separate nothing; they are allowed
        try:
            segments, instruction = parse_row(raw)
        except RowError as exc:
            errors.append((first_line + k, str(exc)))
            continue
        docs.append(segments)
        instruction_rows += instruction
        text_rows += not instruction
    n_bytes = sum(len(line) for line in lines)
    if not tokenize or not docs:
        empty = np.zeros(0, dtype=np.uint16)
        return BatchResult(empty, np.zeros(0, np.int64), None, errors, 0, 0, len(lines), n_bytes)

    texts = [text for segments in docs for text, _ in segments]
    tok = get_tokenizer()
    # np.fromiter with a count: ~25% faster than np.array on a list of ints.
    if encode_batch:
        arrays = [np.fromiter(ids, np.uint16, len(ids)) for ids in tok.encode_batch(texts)]
    else:
        arrays = []
        for text in texts:
            ids = tok.encode(text)  # dropped as soon as it is converted: far fewer page faults
            arrays.append(np.fromiter(ids, np.uint16, len(ids)))
    pieces: list[np.ndarray] = []
    flags: list[bool] = []
    sizes = np.zeros(len(docs), dtype=np.int64)
    eod = np.array([END_OF_DOC], dtype=np.uint16)
    it = iter(arrays)
    for d, segments in enumerate(docs):
        for _, trainable in segments:
            pieces.append(next(it))
            flags.append(trainable)
            sizes[d] += pieces[-1].size
        pieces.append(eod)
        flags.append(True)  # the end-of-document token is always trained: the model learns to stop
        sizes[d] += 1
    tokens = np.concatenate(pieces)
    mask = None
    if instruction_rows:
        lengths = np.array([p.size for p in pieces], dtype=np.int64)
        mask = np.repeat(np.array(flags, dtype=np.uint8), lengths)
    return BatchResult(tokens, sizes, mask, errors, text_rows, instruction_rows, len(lines), n_bytes)


class _Span(NamedTuple):
    """A batch of whole lines of the input: where it starts (line number, byte offset) and its size."""

    first_line: int
    offset: int
    size: int
    tokenize: bool


class _Reader:
    """Cut the input into spans of whole lines; after the first bad line it asks only for validation.

    Only positions travel to the workers, which read their spans themselves (from the page cache):
    this process does not copy the whole input through pipes.
    """

    def __init__(self, path: Path, batch_bytes: int) -> None:
        self.path, self.batch_bytes = path, batch_bytes
        self.tokenize = True

    def __iter__(self) -> Iterator[_Span]:
        line, offset = 1, 0
        with open(self.path, "rb") as f:
            while chunk := f.read(self.batch_bytes):
                if not chunk.endswith(b"\n"):
                    chunk += f.readline()  # finish the line that crosses the boundary
                yield _Span(line, offset, len(chunk), self.tokenize)
                line += chunk.count(b"\n") + (not chunk.endswith(b"\n"))
                offset += len(chunk)


def encode_span(path: str, span: _Span, encode_batch: bool = False) -> BatchResult:
    """Read one span of the input and run encode_lines on its lines."""
    import io

    with open(path, "rb") as f:
        f.seek(span.offset)
        data = f.read(span.size)
    return encode_lines(span.first_line, io.BytesIO(data).readlines(), span.tokenize, encode_batch)


def _ordered(tasks: _Reader, settings: PrepareSettings) -> Generator[BatchResult, None, None]:
    """Run encode_lines over every batch, in file order, with a bounded number of batches in flight."""
    path = str(settings.input)
    if settings.workers == 1:
        for span in tasks:
            yield encode_span(path, span, encode_batch=True)
        return
    import multiprocessing
    from concurrent.futures import Future, ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    # Fork is quick to start. Each worker builds its own tokenizer (all at once, one per core); this
    # process never holds one, which spares it ~0.15 s of freeing a 230 MB trie at exit, while workers
    # end with os._exit. Workers call only `encode`, never `encode_batch`: a Rust thread pool started
    # by a caller of this process before the fork would not survive it.
    context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    pending: deque[Future[BatchResult]] = deque()
    executor = ProcessPoolExecutor(settings.workers, mp_context=context, initializer=_init_worker)
    try:
        for span in tasks:
            # One text at a time in each worker: the workers already keep every core busy.
            pending.append(executor.submit(encode_span, path, span, False))
            if len(pending) > 2 * settings.workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    except BrokenProcessPool as exc:
        raise UserError(
            "a tokenising worker process stopped unexpectedly (out of memory?); nothing was written",
            hint="run again with --workers 1, or with more free memory",
        ) from exc
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def bad_lines_list(stats: PrepareStats) -> str:
    """The first bad lines, one per line, and how many more there are."""
    more = stats.bad_lines - len(stats.bad_examples)
    return "\n".join(f"  {e}" for e in stats.bad_examples) + (f"\n  ... and {more} more" if more > 0 else "")


def _bad_lines_error(settings: PrepareSettings, stats: PrepareStats) -> UserError:
    return UserError(
        f"{stats.bad_lines} bad line(s) in {settings.input}; nothing was written:\n{bad_lines_list(stats)}",
        hint="fix these lines, or pass --skip-bad to leave them out (they are counted in the summary)",
    )


class _NoProgress(contextlib.nullcontext):
    def update(self, n: int) -> None:
        pass


def _progress_bar(total_bytes: int, enabled: bool) -> Any:
    """A tqdm bar on stderr when it is a terminal; in logs and pipes, nothing (and tqdm is not imported)."""
    if not enabled or not sys.stderr.isatty():
        return _NoProgress()
    from tqdm import tqdm

    return tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024, desc="prepare", file=sys.stderr)


def run(settings: PrepareSettings, *, progress: bool = True) -> PrepareStats:
    """Tokenise ``settings.input`` into the dataset ``settings.prefix``; returns the statistics."""
    import numpy as np

    from rwkv1c.data.binidx import BinIdxReader, dataset_paths

    started = time.perf_counter()
    stats = PrepareStats(prefix=settings.prefix)
    tasks = _Reader(settings.input, settings.batch_bytes)
    total = settings.input.stat().st_size
    bar = _progress_bar(total, progress)
    results = _ordered(tasks, settings)
    try:
        _write(settings, stats, tasks, bar, results)
    except OSError as exc:  # the folder went read-only, the disk filled up: nothing was written
        raise UserError(
            f"cannot write the dataset {settings.prefix}: {exc.strerror or exc}; nothing was written",
            hint="free disk space or choose another --output folder",
        ) from None
    reader = BinIdxReader(settings.prefix)
    stats.documents, stats.tokens, stats.has_mask = len(reader), reader.total_tokens, reader.has_mask
    sizes = reader.sizes
    stats.length_summary = {
        "min": int(sizes.min()),
        "median": int(np.median(sizes)),
        "p95": int(np.percentile(sizes, 95)),
        "max": int(sizes.max()),
    }
    stats.output_bytes = sum(p.stat().st_size for p in dataset_paths(settings.prefix) if p.is_file())
    stats.seconds = time.perf_counter() - started
    return stats


def _write(settings: PrepareSettings, stats: PrepareStats, tasks: _Reader, bar: Any, results: Any) -> None:
    """Stream the tokenised batches into the dataset files (renamed into place only if all goes well)."""
    from rwkv1c.data.binidx import BinIdxWriter

    with BinIdxWriter(settings.prefix) as writer, bar, contextlib.closing(results):
        for result in results:
            bar.update(result.bytes)
            stats.input_bytes += result.bytes
            stats.input_lines += result.lines
            for line, reason in result.errors:
                stats.bad_lines += 1
                if len(stats.bad_examples) < BAD_LINES_SHOWN:
                    stats.bad_examples.append(f"{settings.input}:{line}: {reason}")
            if stats.bad_lines and not settings.skip_bad:
                tasks.tokenize = False  # keep reading only to list every bad line
                continue
            writer.add_batch(result.tokens, result.sizes, result.mask)
            stats.text_rows += result.text_rows
            stats.instruction_rows += result.instruction_rows
        if stats.bad_lines and not settings.skip_bad:
            raise _bad_lines_error(settings, stats)
        if writer.documents == 0:
            reason = "every line is bad" if stats.bad_lines else "it has only blank lines"
            raise UserError(
                f"no documents in {settings.input}: {reason}",
                hint='each line must be a JSON object such as {"text": "..."}',
            )


def format_summary(stats: PrepareStats) -> str:
    """The report printed to stdout after a run."""
    files = ".bin .idx .mask" if stats.has_mask else ".bin .idx"
    ls = stats.length_summary
    mb = stats.input_bytes / 1e6
    rate = mb / stats.seconds if stats.seconds else 0.0
    rows = f"{stats.text_rows:,} text, {stats.instruction_rows:,} instruction"
    lines = [
        f"dataset    {stats.prefix} ({files})",
        f"documents  {stats.documents:,} ({rows})",
        f"tokens     {stats.tokens:,} (with one end-of-document token per document)",
        f"input      {stats.input_bytes:,} bytes, {stats.input_lines:,} lines",
        f"output     {stats.output_bytes:,} bytes",
        f"length     tokens per document: min {ls['min']:,}, median {ls['median']:,}, "
        f"p95 {ls['p95']:,}, max {ls['max']:,}",
        f"skipped    {stats.bad_lines:,} bad line(s)",
        f"time       {stats.seconds:.2f} s ({rate:.1f} MB/s of input, {stats.tokens / max(stats.seconds, 1e-9):,.0f} "
        "tokens/s)",
    ]
    return "\n".join(lines)
