"""Token datasets in the binidx format of RWKV-LM / Megatron ("MMIDIDX"), plus an optional loss mask.

``PREFIX.bin``   every document's tokens, uint16 little-endian, back to back.
``PREFIX.idx``   little-endian:
                 magic b"MMIDIDX\\x00\\x00" (9 bytes) | version u64 = 1 | dtype code u8 = 8 (uint16)
                 | N u64 (documents) | D u64 (doc_idx entries, N + 1)
                 | sizes i32[N] (tokens per document) | pointers i64[N] (byte offset of each document in .bin)
                 | doc_idx i64[D] (0, 1, ..., N)
``PREFIX.mask``  only for data with a loss mask (instruction data); RWKV-LM's readers ignore it:
                 magic b"RWKVMASK" (8 bytes) | version u64 = 1 | T u64 (tokens, equals the .bin's)
                 | u8[T], one per token in .bin order: 1 = the loss includes predicting this token
                 from the tokens before it, 0 = it is context only (prompt text).

Writing is streaming (constant memory: sizes go to a scratch file) and atomic: everything is written
under temporary names in the target folder and renamed at the end, the .idx last.
"""

from __future__ import annotations

import os
import secrets
import struct
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import numpy as np

from rwkv1c.errors import UserError

IDX_MAGIC = b"MMIDIDX\x00\x00"
IDX_VERSION = 1
DTYPE_CODE_UINT16 = 8  # Megatron's code table: 1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 6/7 float64, 8 uint16
IDX_HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, N, D: 34 bytes
MASK_MAGIC = b"RWKVMASK"
MASK_VERSION = 1
MASK_HEADER = struct.Struct("<8sQQ")  # magic, version, T: 24 bytes
MAX_TOKEN = 65535
_CHUNK = 1 << 20  # elements per chunk when streaming sizes / pointers / filler


TEXT_DOCUMENT_SUFFIX = "_text_document"  # the name RWKV-LM's trainers expect after the data prefix


def split_prefix(prefix: str | os.PathLike[str]) -> Path:
    """``data/x``, ``data/x.bin`` and ``data/x.idx`` all name the dataset ``data/x``."""
    path = Path(prefix)
    return path.with_suffix("") if path.suffix in (".bin", ".idx", ".mask") else path


def dataset_paths(prefix: str | os.PathLike[str]) -> tuple[Path, Path, Path]:
    """(.bin, .idx, .mask) paths of a dataset prefix."""
    base = split_prefix(prefix)
    return tuple(base.with_name(base.name + ext) for ext in (".bin", ".idx", ".mask"))  # type: ignore[return-value]


class BinIdxWriter:
    """Stream documents into ``PREFIX.bin/.idx`` (and ``.mask`` once any document carries a mask).

    Use as a context manager: the files appear only when the block ends without an exception;
    otherwise every temporary file is removed and nothing at ``prefix`` changes.
    """

    def __init__(self, prefix: str | os.PathLike[str]) -> None:
        self.prefix = split_prefix(prefix)
        self.bin_path, self.idx_path, self.mask_path = dataset_paths(self.prefix)
        self.prefix.parent.mkdir(parents=True, exist_ok=True)
        self.documents = 0
        self.tokens = 0
        self._tmp: dict[str, Path] = {}  # kind -> temporary path, removed by abort()
        self._bin = self._open_tmp("bin", self.bin_path)
        self._sizes = self._open_tmp("sizes", self.idx_path.with_name(self.idx_path.name + ".sizes"))
        self._mask: BinaryIO | None = None
        self._closed = False

    def _open_tmp(self, kind: str, target: Path) -> BinaryIO:
        # Not tempfile.mkstemp: its files are private (0600); datasets get the usual umask permissions.
        while True:
            path = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                continue
            self._tmp[kind] = path
            return os.fdopen(fd, "wb")

    def __enter__(self) -> BinIdxWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._closed:
            self.finish()

    def add(self, tokens: Sequence[int] | np.ndarray, mask: Sequence[int] | np.ndarray | None = None) -> None:
        """Append one document (``mask``: 1 = trained, 0 = context; None = all trained)."""
        arr = _as_tokens(tokens)
        sizes = np.array([arr.size], dtype=np.int64)
        self.add_batch(arr, sizes, None if mask is None else np.asarray(mask, dtype=np.uint8))

    def add_batch(self, tokens: np.ndarray, sizes: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Append several documents at once: ``tokens`` is their concatenation, ``sizes`` their lengths."""
        if self._closed:
            raise RuntimeError("writer is already finished")
        tokens = _as_tokens(tokens)
        sizes = np.asarray(sizes, dtype=np.int64)
        if sizes.ndim != 1 or int(sizes.sum()) != tokens.size:
            raise ValueError(f"sizes sum to {int(sizes.sum())} but there are {tokens.size} tokens")
        if sizes.size and (sizes.min() < 0 or sizes.max() > np.iinfo(np.int32).max):
            raise ValueError("document sizes must fit in int32")
        if mask is not None:
            mask = np.asarray(mask)
            if mask.shape != tokens.shape:
                raise ValueError(f"mask has shape {mask.shape}, tokens {tokens.shape}")
            if self._mask is None:
                self._start_mask()
        self._bin.write(tokens.astype("<u2", copy=False).tobytes())
        self._sizes.write(sizes.astype("<i4").tobytes())
        if self._mask is not None:
            if mask is None:
                _write_filler(self._mask, tokens.size, 1)
            else:
                self._mask.write((mask != 0).astype(np.uint8).tobytes())
        self.documents += int(sizes.size)
        self.tokens += tokens.size

    def _start_mask(self) -> None:
        # The first masked document: every token written before it was plain text, trained in full.
        self._mask = self._open_tmp("mask", self.mask_path)
        self._mask.write(MASK_HEADER.pack(MASK_MAGIC, MASK_VERSION, 0))
        _write_filler(self._mask, self.tokens, 1)

    def finish(self) -> None:
        """Write the index and move every file into place."""
        if self._closed:
            raise RuntimeError("writer is already finished")
        try:
            n = self.documents
            self._sizes.close()
            sizes_tmp = self._tmp["sizes"]
            idx = self._open_tmp("idx", self.idx_path)
            with idx:
                idx.write(IDX_HEADER.pack(IDX_MAGIC, IDX_VERSION, DTYPE_CODE_UINT16, n, n + 1))
                sizes = np.memmap(sizes_tmp, dtype="<i4", mode="r") if n else np.zeros(0, "<i4")
                for start in range(0, n, _CHUNK):
                    idx.write(np.asarray(sizes[start : start + _CHUNK]).tobytes())
                offset = 0
                for start in range(0, n, _CHUNK):
                    chunk = np.asarray(sizes[start : start + _CHUNK], dtype=np.int64) * 2  # bytes per uint16
                    ends = np.cumsum(chunk) + offset
                    idx.write((ends - chunk).astype("<i8").tobytes())
                    offset = int(ends[-1])
                del sizes
                for start in range(0, n + 1, _CHUNK):
                    idx.write(np.arange(start, min(start + _CHUNK, n + 1), dtype="<i8").tobytes())
                _sync(idx)
            assert offset == 2 * self.tokens
            _sync(self._bin)
            self._bin.close()
            if self._mask is not None:
                self._mask.seek(0)
                self._mask.write(MASK_HEADER.pack(MASK_MAGIC, MASK_VERSION, self.tokens))
                _sync(self._mask)
                self._mask.close()
            # A mask left over from an earlier dataset under this prefix would be read with the new one.
            self.mask_path.unlink(missing_ok=True)
            os.replace(self._tmp["bin"], self.bin_path)
            if self._mask is not None:
                os.replace(self._tmp["mask"], self.mask_path)
            os.replace(self._tmp["idx"], self.idx_path)
            sizes_tmp.unlink(missing_ok=True)
        except BaseException:
            self.abort()
            raise
        self._closed = True
        self._tmp = {}

    def abort(self) -> None:
        """Remove every temporary file; nothing at the prefix changes."""
        self._closed = True
        for handle in (self._bin, self._sizes, self._mask):
            if handle is not None:
                handle.close()
        for path in self._tmp.values():
            path.unlink(missing_ok=True)
        self._tmp = {}


def _as_tokens(tokens: Sequence[int] | np.ndarray) -> np.ndarray:
    if isinstance(tokens, np.ndarray) and tokens.dtype == np.uint16:
        return tokens.reshape(-1)
    arr = np.asarray(tokens)
    if arr.size == 0:
        return np.zeros(0, dtype=np.uint16)
    if arr.dtype.kind not in "iu" or arr.min() < 0 or arr.max() > MAX_TOKEN:
        raise ValueError(f"tokens must be integers in 0..{MAX_TOKEN}")
    return arr.astype(np.uint16).reshape(-1)


def _write_filler(f: BinaryIO, count: int, value: int) -> None:
    block = np.full(min(count, _CHUNK), value, dtype=np.uint8).tobytes()
    while count > 0:
        step = min(count, _CHUNK)
        f.write(block[:step])
        count -= step


def _sync(f: BinaryIO) -> None:
    f.flush()
    os.fsync(f.fileno())


class BinIdxReader:
    """Read a binidx dataset through numpy memmaps (nothing is loaded up front).

    ``len(reader)`` documents; ``tokens(i)`` the uint16 tokens of document i; ``mask(i)`` its bool loss
    mask, or None when the dataset has no ``.mask`` file; ``data`` / ``mask_data`` the whole streams.
    """

    def __init__(self, prefix: str | os.PathLike[str]) -> None:
        self.prefix = split_prefix(prefix)
        self.bin_path, self.idx_path, self.mask_path = dataset_paths(self.prefix)
        missing = [str(p) for p in (self.bin_path, self.idx_path) if not p.is_file()]
        if missing:
            raise UserError(
                f"binidx dataset {self.prefix} is incomplete: missing {', '.join(missing)}",
                hint="create it with `rwkv1c prepare INPUT.jsonl --output PREFIX`",
            )
        idx_bytes = self.idx_path.stat().st_size
        if idx_bytes < IDX_HEADER.size:
            raise self._corrupt(f"{self.idx_path} is {idx_bytes} bytes, shorter than its header")
        idx = np.memmap(self.idx_path, dtype=np.uint8, mode="r")
        magic, version, dtype_code, n, n_doc = IDX_HEADER.unpack(bytes(idx[: IDX_HEADER.size]))
        if magic != IDX_MAGIC or version != IDX_VERSION:
            raise self._corrupt(f"{self.idx_path} is not an MMIDIDX version 1 index")
        if dtype_code != DTYPE_CODE_UINT16:
            raise self._corrupt(f"{self.idx_path} stores dtype code {dtype_code}; only 8 (uint16) is supported")
        expected = IDX_HEADER.size + 4 * n + 8 * n + 8 * n_doc
        if idx.size != expected:
            raise self._corrupt(f"{self.idx_path} is {idx.size} bytes; its header implies {expected}")
        at = IDX_HEADER.size
        self.sizes: np.ndarray = np.frombuffer(idx, dtype="<i4", count=n, offset=at)
        self.pointers: np.ndarray = np.frombuffer(idx, dtype="<i8", count=n, offset=at + 4 * n)
        self.total_tokens = int(self.sizes.sum(dtype=np.int64))
        bin_bytes = self.bin_path.stat().st_size
        if bin_bytes != 2 * self.total_tokens:
            raise self._corrupt(f"{self.bin_path} is {bin_bytes} bytes; the index lists {self.total_tokens} tokens")
        if n and (self.pointers[-1] + 2 * int(self.sizes[-1]) != bin_bytes or self.pointers[0] != 0):
            raise self._corrupt(f"{self.idx_path} has pointers that do not match its sizes")
        self.data: np.ndarray = (
            np.memmap(self.bin_path, dtype="<u2", mode="r") if self.total_tokens else np.zeros(0, "<u2")
        )
        self.mask_data: np.ndarray | None = self._open_mask() if self.mask_path.is_file() else None

    def _open_mask(self) -> np.ndarray:
        if self.mask_path.stat().st_size < MASK_HEADER.size:
            raise self._corrupt(f"{self.mask_path} is shorter than its header")
        raw = np.memmap(self.mask_path, dtype=np.uint8, mode="r")
        magic, version, count = MASK_HEADER.unpack(bytes(raw[: MASK_HEADER.size]))
        if magic != MASK_MAGIC or version != MASK_VERSION:
            raise self._corrupt(f"{self.mask_path} is not a version 1 loss-mask file")
        if count != self.total_tokens:
            raise self._corrupt(f"{self.mask_path} holds {count} entries; the dataset has {self.total_tokens} tokens")
        if raw.size != MASK_HEADER.size + count:
            raise self._corrupt(f"{self.mask_path} is {raw.size} bytes; its header implies {MASK_HEADER.size + count}")
        return raw[MASK_HEADER.size :].view(np.bool_)

    def _corrupt(self, message: str) -> UserError:
        return UserError(message, hint=f"recreate the dataset {self.prefix} with `rwkv1c prepare`")

    def __len__(self) -> int:
        return int(self.sizes.size)

    def _span(self, i: int) -> slice:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"document {i} is out of range (the dataset has {n})")
        start = int(self.pointers[i]) // 2
        return slice(start, start + int(self.sizes[i]))

    def tokens(self, i: int) -> np.ndarray:
        """Tokens of document ``i`` (a read-only uint16 view)."""
        return self.data[self._span(i)]

    def mask(self, i: int) -> np.ndarray | None:
        """Loss mask of document ``i`` (bool, True = trained), or None when the dataset has no mask."""
        return None if self.mask_data is None else self.mask_data[self._span(i)]

    @property
    def has_mask(self) -> bool:
        return self.mask_data is not None
