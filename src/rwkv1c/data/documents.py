"""Training documents: binidx from `prepare`, or JSONL read directly, each ending with token 0.

A `Documents` collection is a list of tokenised documents: `tokens(i)` ends with the end-of-document
token 0 (appended where the stored document lacks it), `mask(i)` says which tokens train (None: all),
and `lengths()` gives every length without reading the tokens. Instruction rows train on their
response tokens only; the per-token mask comes from the binidx `.mask` file or from the chat rendering
of a JSONL row. `split_validation` holds out a seeded share of the documents; packing them into
windows is `packing.py`.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from rwkv1c.errors import UserError, raise_all
from rwkv1c.model.tokenizer import END_OF_DOC


class Documents(Protocol):
    """A list of tokenised documents; `tokens(i)` ends with END_OF_DOC, `mask(i)` is None when every token trains."""

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
        """Build from token lists; END_OF_DOC is appended where a document does not end with it."""
        out_docs, out_masks = [], []
        for j, doc in enumerate(docs):
            m = None if masks is None else masks[j]
            arr, marr = _with_eod(np.asarray(doc, dtype=np.int64), None if m is None else np.asarray(m, dtype=bool))
            out_docs.append(arr)
            out_masks.append(marr)
        return cls(out_docs, out_masks)


def _with_eod(tokens: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Append END_OF_DOC unless present; the appended END_OF_DOC trains when the document's last token does."""
    if len(tokens) and tokens[-1] == END_OF_DOC:
        return tokens, mask
    tokens = np.concatenate([tokens, np.array([END_OF_DOC], dtype=tokens.dtype)])
    if mask is not None:
        mask = np.concatenate([mask, mask[-1:] if len(mask) else np.array([True])])
    return tokens, mask


class BinIdxDocuments:
    """A `prepare` output (PREFIX.bin/.idx, optional loss mask beside it), read through `BinIdxReader`."""

    def __init__(self, prefix: Path) -> None:
        from rwkv1c.data.binidx import BinIdxReader

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
        ends_with_eod[some] = r.data[r.pointers[some] // 2 + sizes[some] - 1] == END_OF_DOC
        return sizes + ~ends_with_eod  # END_OF_DOC is appended where missing

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
    """Tokenise a JSONL file exactly as `rwkv1c prepare` does (same rows, chat rendering, masks, END_OF_DOC)."""
    from rwkv1c.data.prepare import encode_lines

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
    from rwkv1c.data.binidx import TEXT_DOCUMENT_SUFFIX, dataset_paths, split_prefix

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


def prompt_format_of(docs: Documents) -> Literal["rwkv-chat", "text"]:
    """ "rwkv-chat" when any document carries a loss mask (instruction rows, rendered in the chat format),
    else "text": what an adapter trained on these documents expects its prompts to look like."""
    base = docs.base if isinstance(docs, Subset) else docs
    if isinstance(base, BinIdxDocuments):
        return "rwkv-chat" if base.reader.has_mask else "text"
    if isinstance(base, InMemoryDocuments):
        return "rwkv-chat" if any(m is not None for m in base.masks) else "text"
    return "rwkv-chat" if any(docs.mask(i) is not None for i in range(len(docs))) else "text"


def split_validation(n_docs: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) document indices: a seeded random `fraction` held out (at least one if > 0)."""
    order = np.random.default_rng([seed, 7919]).permutation(n_docs)
    n_val = min(max(1, round(n_docs * fraction)), n_docs - 1) if fraction > 0 and n_docs > 1 else 0
    return np.sort(order[n_val:]), np.sort(order[:n_val])
