"""Training data: documents (binidx from `prepare`, or JSONL read directly) packed into ctx_len windows.

Every epoch visits every training document once, in an order shuffled with (seed, epoch). The shuffled
documents are laid end to end as one token stream and cut into windows of ctx_len + 1 tokens that
overlap by one token (inputs = window[:-1], targets = window[1:]), so no position is padded except at
the very end of the epoch. Each document ends with the end-of-document token 0, which is part of it:
its last real token learns to predict 0.

The model never sees across a document boundary: `reset` is True at the first token of every document
(the recurrent state is zeroed there) and a target that starts a new document is not trained on (it
would be predicted from the previous document). Instruction rows train on their response tokens only;
the per-token mask comes from the binidx `.mask` file or from the chat rendering of a JSONL row.

Arrays: T = ctx_len; a batch holds tokens (B, T) int64, reset (B, T) bool, targets (B, T) int64 and
weight (B, T) float32 (1 where the target is trained on, else 0).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from rwkv1c.errors import UserError, raise_all

EOD = 0  # end-of-document token


class Documents(Protocol):
    """A list of tokenised documents; `tokens(i)` ends with EOD, `mask(i)` is None when every token trains."""

    def __len__(self) -> int: ...

    def tokens(self, i: int) -> np.ndarray: ...

    def mask(self, i: int) -> np.ndarray | None: ...

    def lengths(self) -> np.ndarray:
        """len(tokens(i)) of every document (int64), without reading the tokens."""
        ...


@dataclass
class InMemoryDocuments:
    """Documents held as arrays (JSONL read directly, tests)."""

    docs: list[np.ndarray]
    masks: list[np.ndarray | None]

    def __len__(self) -> int:
        return len(self.docs)

    def tokens(self, i: int) -> np.ndarray:
        return self.docs[i]

    def mask(self, i: int) -> np.ndarray | None:
        return self.masks[i]

    def lengths(self) -> np.ndarray:
        return np.fromiter((len(d) for d in self.docs), dtype=np.int64, count=len(self.docs))

    @classmethod
    def from_lists(
        cls, docs: Sequence[Sequence[int]], masks: Sequence[Sequence[bool] | None] | None = None
    ) -> InMemoryDocuments:
        """Build from token lists; EOD is appended where a document does not end with it."""
        out_docs, out_masks = [], []
        for j, doc in enumerate(docs):
            m = None if masks is None else masks[j]
            arr, marr = _with_eod(np.asarray(doc, dtype=np.int64), None if m is None else np.asarray(m, dtype=bool))
            out_docs.append(arr)
            out_masks.append(marr)
        return cls(out_docs, out_masks)


def _with_eod(tokens: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Append EOD unless present; the appended EOD trains when the document's last token does."""
    if len(tokens) and tokens[-1] == EOD:
        return tokens, mask
    tokens = np.concatenate([tokens, np.array([EOD], dtype=tokens.dtype)])
    if mask is not None:
        mask = np.concatenate([mask, mask[-1:] if len(mask) else np.array([True])])
    return tokens, mask


class BinIdxDocuments:
    """A `prepare` output (PREFIX.bin/.idx, optional loss mask beside it), read through `BinIdxReader`."""

    def __init__(self, prefix: Path) -> None:
        from rwkv1c.binidx import BinIdxReader

        self.reader = BinIdxReader(prefix)

    def __len__(self) -> int:
        return len(self.reader)

    def tokens(self, i: int) -> np.ndarray:
        tokens = np.asarray(self.reader.tokens(i), dtype=np.int64)
        return _with_eod(tokens, None)[0]

    def lengths(self) -> np.ndarray:
        r = self.reader
        sizes = r.sizes.astype(np.int64)
        ends_with_eod = np.zeros(len(sizes), dtype=bool)
        some = sizes > 0
        ends_with_eod[some] = r.data[r.pointers[some] // 2 + sizes[some] - 1] == EOD
        return sizes + ~ends_with_eod  # EOD is appended where missing

    def mask(self, i: int) -> np.ndarray | None:
        m = self.reader.mask(i)
        if m is None:
            return None
        return _with_eod(np.asarray(self.reader.tokens(i)), np.asarray(m, dtype=bool))[1]


@dataclass
class Subset:
    """Some documents of another collection (train / validation split)."""

    base: Documents
    indices: np.ndarray

    def __len__(self) -> int:
        return len(self.indices)

    def tokens(self, i: int) -> np.ndarray:
        return self.base.tokens(int(self.indices[i]))

    def mask(self, i: int) -> np.ndarray | None:
        return self.base.mask(int(self.indices[i]))

    def lengths(self) -> np.ndarray:
        return self.base.lengths()[self.indices]


# ---------------------------------------------------------------------------------------------- reading


def read_jsonl(path: Path) -> InMemoryDocuments:
    """Tokenise a JSONL file exactly as `rwkv1c prepare` does (same rows, chat rendering, masks, EOD)."""
    from rwkv1c.prepare import encode_lines

    result = encode_lines(1, Path(path).read_bytes().splitlines(keepends=True))
    if result.errors:
        shown = [f"{path}:{line}: {reason}" for line, reason in result.errors[:5]]
        if len(result.errors) > 5:
            shown.append(f"... and {len(result.errors) - 5} more")
        hint = "fix them, or run `rwkv1c prepare --skip-bad` and train on its output"
        raise_all(shown, "unreadable training rows", hint=hint)
    spans = list(itertools.pairwise([0, *np.cumsum(result.sizes).tolist()]))
    docs = [result.tokens[a:b].astype(np.int64) for a, b in spans]
    if result.mask is None:
        return InMemoryDocuments(docs, [None] * len(docs))
    masks: list[np.ndarray | None] = [result.mask[a:b].astype(bool) for a, b in spans]
    return InMemoryDocuments(docs, [None if m is not None and m.all() else m for m in masks])


def resolve_prefix(path: Path) -> Path | None:
    """The binidx prefix `path` names: PREFIX, PREFIX.bin / .idx, or `prepare`'s PREFIX_text_document."""
    from rwkv1c.binidx import TEXT_DOCUMENT_SUFFIX, dataset_paths, split_prefix

    prefix = split_prefix(path)
    for candidate in (prefix, prefix.with_name(prefix.name + TEXT_DOCUMENT_SUFFIX)):
        bin_file, idx_file, _ = dataset_paths(candidate)
        if bin_file.is_file() and idx_file.is_file():
            return candidate
    return None


def data_exists(path: Path) -> bool:
    path = Path(path)
    return path.is_file() if path.suffix == ".jsonl" else resolve_prefix(path) is not None


def open_documents(path: Path) -> Documents:
    """Open training data: a `.jsonl` file, or a binidx PREFIX (PREFIX.bin + PREFIX.idx) from `rwkv1c prepare`."""
    path = Path(path)
    if path.suffix == ".jsonl":
        if not path.is_file():
            raise UserError(f"data file not found: {path}")
        docs: Documents = read_jsonl(path)
    else:
        prefix = resolve_prefix(path)
        if prefix is None:
            raise UserError(
                f"training data not found: {path}.bin / {path}.idx",
                hint="run `rwkv1c prepare INPUT.jsonl --output PREFIX` first, or pass a .jsonl file",
            )
        docs = BinIdxDocuments(prefix)
    usable = np.flatnonzero(docs.lengths() > 1)
    if not len(usable):
        raise UserError(f"the training data {path} holds no documents")
    if len(usable) < len(docs):
        docs = Subset(docs, usable.astype(np.int64))
    return docs


def split_validation(n_docs: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) document indices: a seeded random `fraction` held out (at least one if > 0)."""
    order = np.random.default_rng([seed, 7919]).permutation(n_docs)
    n_val = min(max(1, round(n_docs * fraction)), n_docs - 1) if fraction > 0 and n_docs > 1 else 0
    return np.sort(order[n_val:]), np.sort(order[:n_val])


# ---------------------------------------------------------------------------------------------- packing


@dataclass
class Batch:
    """Model inputs and loss targets for B windows: every array (B, T)."""

    tokens: np.ndarray
    reset: np.ndarray
    targets: np.ndarray
    weight: np.ndarray

    @property
    def n_trained(self) -> int:
        return int(self.weight.sum())

    @staticmethod
    def stack(windows: Sequence[Batch]) -> Batch:
        return Batch(
            *(np.concatenate([getattr(w, f) for w in windows]) for f in ("tokens", "reset", "targets", "weight"))
        )


class PackedStream:
    """Documents laid end to end in a given order and cut into windows of ctx_len + 1 tokens."""

    def __init__(self, docs: Documents, order: np.ndarray, ctx_len: int) -> None:
        self.docs, self.order, self.ctx_len = docs, np.asarray(order, dtype=np.int64), ctx_len
        self.starts = np.concatenate([[0], np.cumsum(docs.lengths()[self.order])])  # stream offset of every document
        self.total = int(self.starts[-1])

    def __len__(self) -> int:
        return max(1, math.ceil((self.total - 1) / self.ctx_len)) if self.total else 0

    def window(self, w: int) -> Batch:
        """Window w (0-based) as a batch of one; beyond the end: an empty window (nothing trains)."""
        T = self.ctx_len
        lo, hi = w * T, w * T + T + 1  # stream positions [lo, hi): one token of overlap with the next window
        tokens = np.zeros(T + 1, dtype=np.int64)
        first = np.ones(T + 1, dtype=bool)  # position starts a document (padding counts as one: no leakage)
        trains = np.zeros(T + 1, dtype=bool)
        d = int(np.searchsorted(self.starts, lo, side="right")) - 1
        while 0 <= d < len(self.order) and self.starts[d] < hi:
            s = int(self.starts[d])
            a, b = max(lo, s), min(hi, int(self.starts[d + 1]))
            doc = self.order[d]
            toks = self.docs.tokens(int(doc))
            mask = self.docs.mask(int(doc))
            tokens[a - lo : b - lo] = toks[a - s : b - s]
            first[a - lo : b - lo] = False
            if a == s:
                first[a - lo] = True
            trains[a - lo : b - lo] = True if mask is None else mask[a - s : b - s]
            d += 1
        reset = first[:-1].copy()
        reset[0] = True  # every window starts from a zero state
        weight = (trains[1:] & ~first[1:]).astype(np.float32)  # a document's first token is never a target
        return Batch(tokens[None, :-1], reset[None], tokens[None, 1:], weight[None])


class StepPlan:
    """Which windows every rank trains on at every optimizer step; a pure function of (seed, step).

    One optimizer step takes grad_accum x world x micro_bsz consecutive windows of the epoch's stream:
    micro-step m, rank r, row b gets window m*world*micro_bsz + r*micro_bsz + b. With one GPU and
    micro_bsz 2 a step sees the same windows as two GPUs with micro_bsz 1. Windows past the end of an
    epoch are empty, so every document is seen exactly once per epoch and all ranks take the same
    number of steps.
    """

    def __init__(
        self, docs: Documents, ctx_len: int, micro_bsz: int, grad_accum: int, seed: int, world: int = 1
    ) -> None:
        self.docs, self.ctx_len, self.micro_bsz, self.grad_accum = docs, ctx_len, micro_bsz, grad_accum
        self.seed, self.world = seed, world
        self._epoch: int | None = None
        self._stream: PackedStream | None = None
        self.windows_per_epoch = len(self.stream(0))
        self.windows_per_step = micro_bsz * grad_accum * world
        self.steps_per_epoch = math.ceil(self.windows_per_epoch / self.windows_per_step)

    def order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.docs))

    def stream(self, epoch: int) -> PackedStream:
        if self._epoch != epoch or self._stream is None:
            self._stream = PackedStream(self.docs, self.order(epoch), self.ctx_len)
            self._epoch = epoch
        return self._stream

    def position(self, step: int) -> tuple[int, int]:
        """(epoch, first window) of optimizer step `step` (0-based)."""
        return step // self.steps_per_epoch, (step % self.steps_per_epoch) * self.windows_per_step

    def step(self, step: int, rank: int = 0) -> tuple[list[Batch], int]:
        """This rank's micro-batches for optimizer step `step`, and the trained tokens of the whole step."""
        epoch, first = self.position(step)
        stream = self.stream(epoch)
        windows = [stream.window(first + j) for j in range(self.windows_per_step)]
        total = sum(w.n_trained for w in windows)
        group = self.world * self.micro_bsz
        micro = []
        for m in range(self.grad_accum):
            lo = m * group + rank * self.micro_bsz
            micro.append(Batch.stack(windows[lo : lo + self.micro_bsz]))
        return micro, total


def validation_windows(docs: Documents, ctx_len: int, max_windows: int = 0) -> list[Batch]:
    """Validation documents in their stored order, packed the same way; at most `max_windows` (0: all)."""
    stream = PackedStream(docs, np.arange(len(docs)), ctx_len)
    n = len(stream) if max_windows <= 0 else min(len(stream), max_windows)
    return [stream.window(i) for i in range(n)]
